"""Every stage declares in dvc.yaml exactly the params it reads: the read set is recorded while each stage runs for
real on a tiny project, and compared with the stage's `params:` (and, for `paths`, the `${paths.*}` its deps and
outs interpolate, which DVC tracks as the paths themselves)."""

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from project import tiny_params

from tasks.dvcfile import DVC_FILE
from tasks.stages import STAGES


class _Reads:
    """A section read key by key (paths only: what DVC tracks through interpolation)."""

    def __init__(self, section, section_name: str, read: set[str]) -> None:
        self._section, self._name, self._read = section, section_name, read

    def __getattr__(self, key):
        self._read.add(f"{self._name}.{key}")
        return getattr(self._section, key)


class RecordingParams:
    """Params whose reads are recorded: top-level sections by name, `paths` by key; to_dict() reads everything."""

    def __init__(self, p) -> None:
        self._p, self.read = p, set()

    def __getattr__(self, name):
        if name == "to_dict":
            self.read |= set(type(self._p).__dataclass_fields__)
        value = getattr(self._p, name)
        if name == "paths":
            return _Reads(value, name, self.read)
        if name in type(self._p).__dataclass_fields__:
            self.read.add(name)
        return value


def _interpolated(stage: dict) -> set[str]:
    """The `paths.<key>` a stage's definition interpolates: DVC re-runs the stage when one of them changes."""
    return set(re.findall(r"\$\{(paths\.\w+)\}", yaml.safe_dump(stage)))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Params of a tiny project (train, held-out and validation files generated)."""
    return tiny_params(
        tmp_path_factory.mktemp("reads"),
        "sft.max_steps=1",
        "grpo.max_steps=1",
        "grpo.prompts_per_step=2",
        "grpo.save_steps=1",
    )


@pytest.fixture(scope="module")
def reads(project):
    """Each stage of dvc.yaml run for real on the tiny project, in pipeline order, and the params it read."""
    p = project
    found = {}
    for name, stage in STAGES.items():
        recorder = RecordingParams(p)
        stage.run(recorder)
        found[name] = recorder.read
    return found


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_stage_declares_exactly_the_params_it_reads(reads, stage):
    definition = yaml.safe_load(DVC_FILE.read_text())["stages"][stage]
    entries = definition.get("params", [])
    # the selected profile, tracked as a whole file, is merged into the sections before any stage reads them
    assert [e for e in entries if isinstance(e, dict)] == [{"${profile}": None}], f"{stage} does not track the profile"
    declared = {e for e in entries if isinstance(e, str)}
    read = reads[stage]
    sections = {key for key in read if "." not in key}
    # every section read is declared, and every declared section is read
    assert sections == declared - {"paths"}, f"{stage}: reads {sorted(sections)}, dvc.yaml declares {sorted(declared)}"
    # a path read is declared (validate) or interpolated into the stage's deps and outs
    paths = {key for key in read if key.startswith("paths.")}
    if "paths" in declared:
        assert paths
    else:
        assert paths <= _interpolated(definition), f"{stage}: reads {sorted(paths - _interpolated(definition))}"


def test_validation_eval_scores_the_validation_file_and_never_the_heldout_one(project, reads, tmp_path):
    """validation_eval (run by `reads` on the checkpoints the stages before it trained) holds the metrics of both
    checkpoints on the validation rows, in eval.json's shape; with the held-out file gone it writes the same bytes,
    and with fewer validation rows it scores those."""
    from tasks.data import read_jsonl, write_jsonl
    from tasks.evaluation import evaluate_checkpoint

    p = project
    report = Path(p.paths.reports_dir) / "validation_eval.json"
    first = report.read_bytes()
    results = json.loads(first)
    entries = {"sft", "grpo", "constant", "consensus"}
    assert set(results) == entries == set(json.loads((report.parent / "eval.json").read_text()))
    rows = read_jsonl(p.paths.validation_file)
    assert results["grpo"]["n"] == results["sft"]["n"] == p.task.n_validation == len(rows)
    expected, _ = evaluate_checkpoint(Path(p.paths.models_dir) / "grpo", p, rows)
    assert results["grpo"] == pytest.approx(expected)

    no_heldout = replace(p, paths=replace(p.paths, heldout_file=str(tmp_path / "absent.jsonl")))
    STAGES["validation_eval"].run(no_heldout)
    assert report.read_bytes() == first

    fewer = write_jsonl(tmp_path / "validation.jsonl", rows[:5])
    other = replace(p, paths=replace(p.paths, validation_file=str(fewer), reports_dir=str(tmp_path / "reports")))
    STAGES["validation_eval"].run(other)
    on_five = json.loads((tmp_path / "reports" / "validation_eval.json").read_text())
    assert on_five["grpo"]["n"] == on_five["sft"]["n"] == 5
    assert on_five["grpo"] == pytest.approx(evaluate_checkpoint(Path(p.paths.models_dir) / "grpo", p, rows[:5])[0])
    assert report.read_bytes() == first
