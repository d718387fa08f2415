"""The validate stage: a Great Expectations suite, defined here in code, gates the data before any training.

It checks the three data files (params.yaml paths.train_file, heldout_file, validation_file): every row of each,
and that no held-out or validation prompt occurs in train and no validation prompt in held-out (leakage).
Critical expectations fail the gate; warning expectations (distribution sanity) are reported and logged but let
the pipeline go on. GE's `severity` does not change a result's `success`, so the gate decides itself.

The stage writes a JSON summary to reports/validation.json (a dependency of sft: it holds only the verdict and the
findings, so identical data gives identical bytes wherever the checkout is) and GE's Data Docs HTML to
reports/data_docs (time-stamped by GE on every run, so no stage depends on it). Checking other files writes
nothing unless asked to (`validate_files(..., out_dir=None)`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from tasks import telemetry
from tasks.config import Params
from tasks.data import read_jsonl_lines

log = logging.getLogger(__name__)
LINE = "line"
# what the validate stage writes under paths.reports_dir (dvc.yaml declares the same two outputs)
REPORT_FILE = "validation.json"
DOCS_DIR = "data_docs"
# each split in the gate's messages
SPLIT_NAMES = {"train": "train", "heldout": "held-out", "validation": "validation"}
# helper column -> the source column it is derived from (a missing source reports once, not per helper)
HELPER_SOURCE = {
    "prompt_type": "prompt",
    "in_train": "prompt",
    "in_heldout": "prompt",
    "scores_type": "scores",
    "n_scores": "scores",
    "scores_all_int": "scores",
    "scores_min": "scores",
    "scores_max": "scores",
    "n_unseen_score_values": "scores",
}


class ValidationFailed(RuntimeError):
    """The data gate failed; the message lists each failed expectation with its rows."""

    def __init__(self, result: GateResult) -> None:
        self.result = result
        super().__init__(result.format())


@dataclass
class Finding:
    file: str
    check: str
    expectation: str
    column: str | None
    severity: str
    unexpected_count: int | None
    lines: list[int]
    values: list[Any]
    error: str | None = None

    def format(self) -> str:
        what = self.error or f"{self.unexpected_count} unexpected"
        where = ", ".join(f"{self.file}:{n}" for n in self.lines)
        values = f"; values {self.values}" if self.values else ""
        return f"{self.check} ({self.expectation}, column {self.column}): {what}" + (
            f"; rows {where}{values}" if where else ""
        )


@dataclass
class GateResult:
    passed: bool
    failures: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    data_docs: str | None = None
    report: str | None = None

    def to_json(self) -> str:
        """The report file: the verdict and the findings only (where it was written would make it differ by
        checkout), so the same data and params give the same bytes."""
        findings = {key: [asdict(f) for f in getattr(self, key)] for key in ("failures", "warnings")}
        return json.dumps({"passed": self.passed, **findings}, indent=1, default=str) + "\n"

    def format(self) -> str:
        head = "data validation " + ("passed" if self.passed else f"FAILED ({len(self.failures)} expectations)")
        lines = [head, *(f"  FAIL {f.format()}" for f in self.failures)]
        lines += [f"  warn {w.format()}" for w in self.warnings]
        if self.report:
            lines.append(f"  report: {self.report}, Data Docs: {self.data_docs}")
        return "\n".join(lines)


def load_frame(path: str | Path) -> Any:
    """A JSONL file as a DataFrame of raw Python values plus its line numbers."""
    import pandas as pd

    records = [{**row, LINE: lineno} for lineno, row in read_jsonl_lines(path)]
    # object dtype: the checks must see exactly what was in the JSON (no int->float, no str inference)
    frame = pd.DataFrame.from_records(records).astype(object)
    frame[LINE] = frame[LINE].astype("int64")
    return frame


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def add_helper_columns(
    frame: Any,
    train_prompts: set[str] | None = None,
    train_values: set[int] | None = None,
    heldout_prompts: set[str] | None = None,
) -> Any:
    """Derived columns that standard expectations check. A helper is None where a more basic check already
    failed for the row (GE ignores nulls in value checks), so one bad row gives one root cause."""
    import pandas as pd

    out = frame.copy()
    empty = pd.Series([None] * len(out), index=out.index, dtype=object)
    prompt = out.get("prompt", empty)
    scores = out.get("scores", empty)

    def type_name(v: Any) -> str | None:
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else type(v).__name__

    def column(values: list[Any], dtype: str = "object") -> Any:
        return pd.Series(values, index=out.index, dtype=dtype)

    out["prompt_type"] = prompt.map(type_name).astype(object)
    out["scores_type"] = scores.map(type_name).astype(object)
    lists = [v if isinstance(v, list) else None for v in scores]
    out["n_scores"] = column([len(v) if v is not None else None for v in lists])
    all_int = [all(_is_int(x) for x in v) if v is not None else None for v in lists]
    out["scores_all_int"] = column(all_int)
    usable = [v if v and ok else None for v, ok in zip(lists, all_int, strict=True)]
    out["scores_min"] = column([min(v) if v else None for v in usable], "Float64")
    out["scores_max"] = column([max(v) if v else None for v in usable], "Float64")
    if train_prompts is not None:
        out["in_train"] = prompt.map(lambda s: isinstance(s, str) and s in train_prompts).astype(object)
    if heldout_prompts is not None:
        out["in_heldout"] = prompt.map(lambda s: isinstance(s, str) and s in heldout_prompts).astype(object)
    if train_values is not None:
        unseen = [sum(x not in train_values for x in v) if v else None for v in usable]
        out["n_unseen_score_values"] = column(unseen, "Float64")
    return out


def build_suite(name: str, p: Params, split: str) -> Any:
    """The expectation suite of one split (tasks.config.DATA_SPLITS), versioned with this code. Every file gets the
    row checks; held-out and validation also the checks against train, and validation the one against held-out.
    Each expectation carries its check id in `meta`."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    def exp(cls: type, check: str, text: str, severity: str = "critical", **kwargs: Any) -> Any:
        return cls(
            meta={"check": check}, severity=severity, description=f"[{severity.upper()}] {check}: {text}", **kwargs
        )

    t, v = p.task, p.validate
    expectations = [
        exp(gxe.ExpectColumnToExist, "has_prompt", "field prompt is present", column="prompt"),
        exp(gxe.ExpectColumnToExist, "has_scores", "field scores is present", column="scores"),
        exp(gxe.ExpectColumnValuesToNotBeNull, "prompt_present", "every row has a prompt", column="prompt"),
        exp(
            gxe.ExpectColumnValuesToBeInSet,
            "prompt_is_string",
            "prompt is a string",
            column="prompt_type",
            value_set=["str"],
        ),
        exp(
            gxe.ExpectColumnValueLengthsToBeBetween,
            "prompt_length",
            f"prompt has 1..{v.max_prompt_chars} characters",
            column="prompt",
            min_value=1,
            max_value=v.max_prompt_chars,
        ),
        exp(
            gxe.ExpectColumnValuesToMatchRegex,
            "prompt_not_blank",
            "prompt is not only whitespace",
            column="prompt",
            regex=r"\S",
        ),
        exp(gxe.ExpectColumnValuesToBeUnique, "prompt_unique", "no duplicate prompt within the file", column="prompt"),
        exp(gxe.ExpectColumnValuesToNotBeNull, "scores_present", "every row has scores", column="scores"),
        exp(
            gxe.ExpectColumnValuesToBeInSet,
            "scores_is_list",
            "scores is a list",
            column="scores_type",
            value_set=["list"],
        ),
        exp(
            gxe.ExpectColumnValuesToBeInSet,
            "scores_count",
            f"exactly {t.n_items} scores (task.n_items)",
            column="n_scores",
            value_set=[t.n_items],
        ),
        exp(
            gxe.ExpectColumnValuesToBeInSet,
            "scores_integers",
            "every score is an integer",
            column="scores_all_int",
            value_set=[True],
        ),
        exp(
            gxe.ExpectColumnValuesToBeBetween,
            "scores_min",
            f"every score >= {t.min_score} (task.min_score)",
            column="scores_min",
            min_value=t.min_score,
        ),
        exp(
            gxe.ExpectColumnValuesToBeBetween,
            "scores_max",
            f"every score <= {t.max_score} (task.max_score)",
            column="scores_max",
            max_value=t.max_score,
        ),
    ]
    if split != "train":
        expectations += [
            exp(
                gxe.ExpectColumnValuesToBeInSet,
                "no_leakage",
                f"no {SPLIT_NAMES[split]} prompt occurs in train",
                column="in_train",
                value_set=[False],
            ),
            exp(
                gxe.ExpectColumnValuesToBeBetween,
                "score_values_seen_in_train",
                f"every {SPLIT_NAMES[split]} score value occurs in train",
                severity="warning",
                column="n_unseen_score_values",
                max_value=0,
                mostly=1.0 - v.max_unseen_score_fraction,
            ),
        ]
    if split == "validation":
        expectations.append(
            exp(
                gxe.ExpectColumnValuesToBeInSet,
                "no_heldout_overlap",
                "no validation prompt occurs in the held-out file (tuning on it would leak into the reported metrics)",
                column="in_heldout",
                value_set=[False],
            )
        )
    return gx.ExpectationSuite(name=name, expectations=expectations)


def _context(docs_dir: Path | None) -> Any:
    """An in-memory GE context whose only file output is the Data Docs site in docs_dir (no gx/ folder); with no
    docs_dir, one that writes nothing."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites = {}
    if docs_dir is not None:
        store = {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.resolve())}
        sites["rewardflow"] = {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": store,
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites=sites,
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _findings(file: str, result: Any, max_rows: int) -> list[Finding]:
    missing = {
        r.expectation_config.kwargs.get("column")
        for r in result.results
        if not r.success and r.expectation_config.type == "expect_column_to_exist"
    }
    out = []
    for r in result.results:
        conf = r.expectation_config
        column = conf.kwargs.get("column")
        if r.success or (
            conf.type != "expect_column_to_exist" and (column in missing or HELPER_SOURCE.get(column) in missing)
        ):
            continue
        res = r.result or {}
        error = None
        if not res and r.exception_info:
            infos = r.exception_info
            messages = (
                [infos.get("exception_message")]
                if "exception_message" in infos
                else [i.get("exception_message", "") for i in infos.values() if isinstance(i, dict)]
            )
            error = "; ".join(dict.fromkeys(m for m in messages if m))
        index = res.get("unexpected_index_list") or res.get("partial_unexpected_index_list") or []
        lines = [int(i[LINE] if isinstance(i, dict) else i) for i in index[:max_rows]]
        values = (res.get("unexpected_list") or res.get("partial_unexpected_list") or [])[:max_rows]
        severity = getattr(conf.severity, "value", str(conf.severity))
        out.append(
            Finding(
                file=file,
                check=(conf.meta or {}).get("check", conf.type),
                expectation=conf.type,
                column=column,
                severity=severity,
                unexpected_count=res.get("unexpected_count"),
                lines=lines,
                values=[_plain(x) for x in values],
                error=error,
            )
        )
    return out


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and not isinstance(value, list | dict | str):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and len(value) > 80:
        value = value[:80] + "..."
    return value


def _write_atomic(path: Path, text: str) -> None:
    """path holds the old text or the new, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def validate_files(
    train_file: str | Path,
    heldout_file: str | Path | None,
    p: Params,
    out_dir: str | Path | None = None,
    validation_file: str | Path | None = None,
) -> GateResult:
    """Run the suite on the train file, and on the held-out and validation files when given (validation needs
    held-out: it is checked against both). With out_dir, write the report (REPORT_FILE) and the Data Docs
    (DOCS_DIR) there; without, write nothing (the result is returned)."""
    if validation_file is not None and heldout_file is None:
        raise ValueError("a validation file is checked against the held-out file: give both")
    # the files first: one that cannot be read (missing, empty, a line that is not JSON) fails in a fraction of a
    # second, before Great Expectations is imported (~3 s)
    train = load_frame(train_file)
    frames = {"train": (str(train_file), add_helper_columns(train))}
    prompts = {x for x in train.get("prompt", []) if isinstance(x, str)}
    values = {x for v in train.get("scores", []) if isinstance(v, list) for x in v if _is_int(x)}
    if heldout_file is not None:
        heldout = load_frame(heldout_file)
        frames["heldout"] = (str(heldout_file), add_helper_columns(heldout, prompts, values))
    if validation_file is not None:
        held = {x for x in heldout.get("prompt", []) if isinstance(x, str)}
        frame = add_helper_columns(load_frame(validation_file), prompts, values, held)
        frames["validation"] = (str(validation_file), frame)
    telemetry.turn_off()
    import great_expectations as gx

    out = Path(out_dir) if out_dir is not None else None
    context = _context(out / DOCS_DIR if out is not None else None)
    source = context.data_sources.add_pandas("rewardflow")
    result_format = {
        "result_format": "COMPLETE",
        "unexpected_index_column_names": [LINE],
        "partial_unexpected_count": p.validate.max_reported_rows,
    }
    gate = GateResult(passed=True)
    for split, (file, frame) in frames.items():
        batch = source.add_dataframe_asset(split).add_batch_definition_whole_dataframe("whole")
        suite = context.suites.add(build_suite(f"rewardflow_{split}", p, split))
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"validate_{split}", data=batch, suite=suite)
        )
        result = definition.run(batch_parameters={"dataframe": frame}, result_format=result_format)
        for finding in _findings(file, result, p.validate.max_reported_rows):
            is_warning = finding.severity in ("warning", "info") and finding.error is None
            (gate.warnings if is_warning else gate.failures).append(finding)
    gate.passed = not gate.failures
    if out is not None:
        urls = context.build_data_docs(site_names=["rewardflow"])
        gate.data_docs = str(Path(unquote(urlparse(urls["rewardflow"]).path)))
        gate.report = str(out / REPORT_FILE)
        _write_atomic(Path(gate.report), gate.to_json())
    for warning in gate.warnings:
        log.warning("data warning: %s", warning.format())
    return gate


def require_valid(p: Params) -> None:
    """The data gate on the configured files, writing nothing: raise ValidationFailed when it fails. What the
    pipeline checks before it pins changed data (tasks/pinning.py), so refused data is never pinned."""
    files = p.paths.data_files()
    gate = validate_files(files["train"], files["heldout"], p, None, files["validation"])
    if not gate.passed:
        raise ValidationFailed(gate)


def run_validate(p: Params) -> GateResult:
    """The validate stage: raise ValidationFailed (no retry, nothing trained) when the data gate fails."""
    files = p.paths.data_files()
    gate = validate_files(files["train"], files["heldout"], p, p.paths.reports_dir, files["validation"])
    if not gate.passed:
        raise ValidationFailed(gate)
    log.info("data validation passed (%d warnings); report %s", len(gate.warnings), gate.data_docs)
    return gate
