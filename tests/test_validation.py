"""The Great Expectations gate: one bad file per expectation, each failing with its name and line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.config import load_params
from tasks.validation import ValidationFailed, run_validate, validate_files

ROOT = Path(__file__).resolve().parents[1]
GOOD = [{"prompt": f"review : food : tasty {'. ' * i}rate :", "scores": [1 + i % 5, 2, 3, 4]} for i in range(10)]
HELD = [{"prompt": f"held {i} :", "scores": [1 + i % 5, 3, 3, 3]} for i in range(5)]
VALID = [{"prompt": f"val {i} :", "scores": [2 + i % 3, 3, 3, 3]} for i in range(4)]


def _write(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def params(tmp_path):
    return load_params(ROOT / "params.yaml", [f"paths.reports_dir={tmp_path}/reports", "validate.max_prompt_chars=60"])


def _run(tmp_path, params, train, held=HELD, out_dir=None):
    train_file, held_file = _write(tmp_path / "train.jsonl", train), _write(tmp_path / "heldout.jsonl", held)
    return validate_files(train_file, held_file, params, out_dir)


def test_good_files_pass_and_write_data_docs(tmp_path, params):
    gate = _run(tmp_path, params, GOOD, out_dir=tmp_path / "reports")
    assert gate.passed and gate.failures == []
    html = Path(gate.data_docs).read_text()
    assert Path(gate.data_docs).name == "index.html" and "rewardflow_train" in html
    assert json.loads(Path(gate.report).read_text())["passed"] is True
    assert not (Path.cwd() / "gx").exists()  # the in-memory context writes no gx/ project folder


def test_a_check_without_out_dir_writes_nothing(tmp_path, params):
    rows = [dict(r) for r in GOOD]
    rows[6]["scores"] = [1, 2, 3]
    train = _write(tmp_path / "t.jsonl", rows)
    before = sorted(tmp_path.rglob("*"))
    gate = validate_files(train, None, params)
    assert [f.check for f in gate.failures] == ["scores_count"]
    assert gate.data_docs is None and gate.report is None
    assert sorted(tmp_path.rglob("*")) == before


def test_report_is_the_same_bytes_wherever_the_checkout_is(tmp_path, monkeypatch):
    """reports/validation.json (a dependency of sft) holds no path of the checkout: the stage run on the same data
    in two folders writes the same bytes, failures and warnings included."""
    reports = []
    for checkout in ("one", "two/deeper"):
        root = tmp_path / checkout
        _write(root / "data" / "train.jsonl", [*GOOD[:-1], {**GOOD[-1], "scores": [2, 2, 3, 4]}])
        _write(root / "data" / "heldout.jsonl", [*HELD, {"prompt": "held x :", "scores": [1, 2, 3, 9]}])
        _write(root / "data" / "validation.jsonl", [*VALID, HELD[0]])
        monkeypatch.chdir(root)
        p = load_params(ROOT / "params.yaml")
        gate = validate_files("data/train.jsonl", "data/heldout.jsonl", p, "reports", "data/validation.jsonl")
        assert [f.check for f in gate.failures] == ["scores_max", "no_heldout_overlap"] and gate.data_docs
        reports.append((root / "reports" / "validation.json").read_bytes())
    assert reports[0] == reports[1]
    assert str(tmp_path).encode() not in reports[0]
    assert json.loads(reports[0])["failures"][0]["lines"] == [6]


@pytest.mark.parametrize(
    "mutate, check, line",
    [
        # prompt missing on one row
        (lambda rows: rows[3].pop("prompt"), "prompt_present", 4),
        # prompt not a string
        (lambda rows: rows[2].update(prompt=42), "prompt_is_string", 3),
        # empty prompt (also blank) / over the params length limit
        (lambda rows: rows[5].update(prompt=""), ["prompt_length", "prompt_not_blank"], 6),
        (lambda rows: rows[5].update(prompt="x" * 61), "prompt_length", 6),
        # whitespace-only prompt
        (lambda rows: rows[1].update(prompt="   "), "prompt_not_blank", 2),
        # duplicate prompt within the file: both rows are reported
        (lambda rows: rows[7].update(prompt=rows[0]["prompt"]), "prompt_unique", 1),
        # scores missing / not a list / wrong count / not integers / out of range
        (lambda rows: rows[4].pop("scores"), "scores_present", 5),
        (lambda rows: rows[4].update(scores="1 2 3 4"), "scores_is_list", 5),
        (lambda rows: rows[6].update(scores=[1, 2, 3]), "scores_count", 7),
        (lambda rows: rows[6].update(scores=[1, 2.5, 3, 4]), "scores_integers", 7),
        (lambda rows: rows[6].update(scores=[1, True, 3, 4]), "scores_integers", 7),
        (lambda rows: rows[8].update(scores=[0, 2, 3, 4]), "scores_min", 9),
        (lambda rows: rows[8].update(scores=[1, 2, 3, 6]), "scores_max", 9),
    ],
)
def test_each_expectation_fails_with_its_name_and_line(tmp_path, params, mutate, check, line):
    rows = [dict(r) for r in GOOD]
    mutate(rows)
    gate = _run(tmp_path, params, rows)
    assert not gate.passed
    expected = check if isinstance(check, list) else [check]
    assert sorted(f.check for f in gate.failures) == sorted(expected), gate.format()
    assert line in gate.failures[0].lines
    assert f"train.jsonl:{line}" in gate.format()


def test_missing_field_in_every_row_reports_the_column_once(tmp_path, params):
    gate = _run(tmp_path, params, [{"prompt": r["prompt"]} for r in GOOD])
    assert [f.check for f in gate.failures] == ["has_scores"]


def test_leakage_between_train_and_heldout(tmp_path, params):
    held = [*HELD, {"prompt": GOOD[2]["prompt"], "scores": [1, 2, 3, 4]}]
    gate = _run(tmp_path, params, GOOD, held)
    assert [f.check for f in gate.failures] == ["no_leakage"]
    assert gate.failures[0].lines == [6] and "heldout.jsonl:6" in gate.format()


def test_a_validation_prompt_in_train_or_heldout_fails_naming_file_and_line(tmp_path, params):
    """The validation split is checked like held-out against train, and against held-out too: tuning on a
    held-out prompt would leak into the reported metrics."""
    train, held = _write(tmp_path / "train.jsonl", GOOD), _write(tmp_path / "heldout.jsonl", HELD)
    rows = [*VALID, {**GOOD[3], "scores": [1, 2, 3, 4]}, HELD[1]]
    validation = _write(tmp_path / "validation.jsonl", rows)
    gate = validate_files(train, held, params, None, validation)
    assert not gate.passed
    found = {f.check: f for f in gate.failures}
    assert sorted(found) == ["no_heldout_overlap", "no_leakage"], gate.format()
    assert (found["no_leakage"].lines, found["no_heldout_overlap"].lines) == ([5], [6])
    assert {f.file for f in gate.failures} == {str(validation)}
    assert "validation.jsonl:5" in gate.format() and "validation.jsonl:6" in gate.format()


def test_a_clean_validation_split_passes_and_unseen_score_values_only_warn(tmp_path, params):
    train = _write(tmp_path / "train.jsonl", [{**r, "scores": [2, 2, 3, 4]} for r in GOOD])
    held = _write(tmp_path / "heldout.jsonl", [{**r, "scores": [2, 3, 3, 3]} for r in HELD])
    validation = _write(tmp_path / "validation.jsonl", [*VALID, {"prompt": "val 9 :", "scores": [5, 3, 3, 3]}])
    gate = validate_files(train, held, params, None, validation)
    assert gate.passed, gate.format()
    assert [(w.check, w.file, w.lines) for w in gate.warnings] == [("score_values_seen_in_train", str(validation), [5])]


def test_unseen_score_value_warns_but_passes(tmp_path, params):
    train = [{**r, "scores": [2, 2, 3, 4]} for r in GOOD]  # train never uses 1 or 5 ...
    gate = _run(tmp_path, params, train)  # ... held-out does
    assert gate.passed
    assert [w.check for w in gate.warnings] == ["score_values_seen_in_train"]


def test_run_validate_raises_with_the_report(tmp_path, params):
    from dataclasses import replace

    rows = [dict(r) for r in GOOD]
    rows[6]["scores"] = [1, 2, 3]
    train, held = _write(tmp_path / "train.jsonl", rows), _write(tmp_path / "heldout.jsonl", HELD)
    val = _write(tmp_path / "validation.jsonl", VALID)
    files = {"train_file": str(train), "heldout_file": str(held), "validation_file": str(val)}
    p = replace(params, paths=replace(params.paths, **files))
    with pytest.raises(ValidationFailed, match=r"scores_count .*train.jsonl:7"):
        run_validate(p)


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "file is empty"),
        (b'{"prompt": "a", "scores": [1, 2, 3, 4]}\n{"prompt": "b", "sc', "train.jsonl:2: not valid JSON (truncated"),
        (b'{"prompt": "a", "scores": [1, 2, 3, 4]}\nnope\n', "train.jsonl:2: not valid JSON"),
        (b'{"prompt": "\xff"}\n', "train.jsonl:1: not UTF-8"),
        (b'{"prompt": "a", "prompt": "b"}\n', "train.jsonl:1: not valid JSON: duplicate key 'prompt'"),
    ],
)
def test_cli_exit_codes_and_malformed_files(tmp_path, content, expected):
    train = tmp_path / "train.jsonl"
    train.write_bytes(content)
    cli = [Path(sys.executable).parent / "rewardflow", "validate", str(train), "--set", f"paths.reports_dir={tmp_path}"]
    result = subprocess.run(cli, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_valid_files_exit_zero(tmp_path):
    """Checking given files writes its report only where --out says, never into the pipeline's reports folder."""
    train, held = _write(tmp_path / "t.jsonl", GOOD), _write(tmp_path / "h.jsonl", HELD)
    validation = _write(tmp_path / "v.jsonl", VALID)
    cli = [Path(sys.executable).parent / "rewardflow", "validate", str(train), str(held), str(validation)]
    cli += ["--set", f"paths.reports_dir={tmp_path}/r", "--out", str(tmp_path / "check")]
    result = subprocess.run(cli, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "data validation passed" in result.stdout and f"{tmp_path}/check/data_docs/index.html" in result.stdout
    assert "great_expectations" not in result.stderr  # its INFO chatter (~200 lines per import) stays out
    assert json.loads((tmp_path / "check" / "validation.json").read_text())["passed"] is True
    assert "rewardflow_validation" in (tmp_path / "check" / "data_docs" / "index.html").read_text()
    assert not (tmp_path / "r").exists()
    refused = subprocess.run([*cli[:-1], str(tmp_path / "r")], capture_output=True, text=True, cwd=ROOT)
    assert refused.returncode == 2 and "tracked by DVC" in refused.stderr
    assert not (tmp_path / "r").exists()


def test_cli_takes_at_most_the_three_data_files():
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(app, ["validate", "a.jsonl", "b.jsonl", "c.jsonl", "d.jsonl"])
    assert result.exit_code == 2 and "give at most three files: train, then held-out, then validation" in result.output
