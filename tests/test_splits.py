"""The validation split on disk: the embedded files completed where missing, and `rewardflow data split` carving a
deterministic share of a user's train file by prompt hash."""

import hashlib
import json
import random
from pathlib import Path

import pytest
from project import data_paths

from tasks.config import TaskConfig
from tasks.data import DataFileError, embedded_splits, read_jsonl, write_jsonl
from tasks.splits import SplitRefused, carve_validation, complete_embedded

TASK = TaskConfig(
    kind="synthetic",
    n_items=2,
    min_score=1,
    max_score=5,
    n_train=60,
    n_heldout=12,
    n_validation=10,
    train_seed=1,
    heldout_seed=2,
    validation_seed=3,
    rater_bias=(0.35, 0.3, 0.35),
    modifier_rate=0.0,
)


def _rows(first: int, n: int) -> list[dict]:
    return [{"prompt": f"ticket {i} : grade it :", "scores": [i % 5 + 1, 3]} for i in range(first, first + n)]


def _below(prompt: str, fraction: float) -> bool:
    """The documented rule, restated: sha256's first 8 bytes as a big-endian number, over 2**64."""
    return int(hashlib.sha256(prompt.encode()).hexdigest()[:16], 16) / 2**64 < fraction


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir())}


# --- the embedded files -----------------------------------------------------------------------------------------


def test_missing_embedded_files_are_generated_and_a_missing_validation_split_is_added(tmp_path):
    paths = data_paths(tmp_path)
    assert complete_embedded(paths, TASK) == ["train", "heldout", "validation"]
    first = _snapshot(tmp_path)
    assert complete_embedded(paths, TASK) == []  # all there: nothing to do
    # a checkout holding only the embedded train and held-out files: only the validation file is written
    (tmp_path / "validation.jsonl").unlink()
    assert complete_embedded(paths, TASK) == ["validation"]
    assert _snapshot(tmp_path) == first
    assert read_jsonl(paths.validation_file) == embedded_splits(TASK)["validation"]


def test_the_files_of_the_other_embedded_task_are_replaced_by_this_tasks(tmp_path):
    """A profile that switches task.kind finds the other kind's embedded files: it gets its own task's files, all
    three; anyone else's data is never touched."""
    from dataclasses import replace

    from tasks.splits import other_kind

    paths = data_paths(tmp_path)
    english = replace(TASK, kind="english")
    complete_embedded(paths, TASK)
    assert other_kind(Path(paths.train_file), english) == "synthetic"
    assert complete_embedded(paths, english) == ["train", "heldout", "validation"]
    assert {s: read_jsonl(f) for s, f in paths.data_files().items()} == embedded_splits(english)
    assert other_kind(Path(paths.train_file), english) is None and complete_embedded(paths, english) == []
    # back again
    assert complete_embedded(paths, TASK) == ["train", "heldout", "validation"]
    assert read_jsonl(paths.train_file) == embedded_splits(TASK)["train"]
    # a user's files: not any kind's embedded task, left as they are
    write_jsonl(paths.train_file, _rows(0, 40))
    before = _snapshot(tmp_path)
    assert other_kind(Path(paths.train_file), english) is None and complete_embedded(paths, english) == []
    assert _snapshot(tmp_path) == before


def test_a_missing_validation_file_beside_other_data_fails_naming_both_ways_out(tmp_path):
    paths = data_paths(tmp_path)
    write_jsonl(paths.train_file, _rows(0, 40))
    write_jsonl(paths.heldout_file, _rows(100, 10))
    before = _snapshot(tmp_path)
    with pytest.raises(DataFileError) as err:
        complete_embedded(paths, TASK)
    message = str(err.value)
    assert f"{paths.validation_file} (paths.validation_file) is missing" in message
    assert "point paths.validation_file" in message and "rewardflow data split --fraction" in message
    assert _snapshot(tmp_path) == before  # nothing written
    # the embedded train beside another held-out file is not the embedded task either
    write_jsonl(paths.train_file, embedded_splits(TASK)["train"])
    with pytest.raises(DataFileError, match=r"heldout.jsonl are not the embedded task's files"):
        complete_embedded(paths, TASK)
    assert not Path(paths.validation_file).exists()


# --- carving a validation split from train ----------------------------------------------------------------------


def test_split_moves_exactly_the_rows_whose_prompt_hashes_below_the_fraction(tmp_path):
    paths = data_paths(tmp_path)
    rows = _rows(0, 400)
    write_jsonl(paths.train_file, rows)
    carved = carve_validation(paths, 0.1)
    expected = [r for r in rows if _below(r["prompt"], 0.1)]
    assert 20 <= len(expected) <= 60  # about a tenth
    assert read_jsonl(paths.validation_file) == expected
    assert read_jsonl(paths.train_file) == [r for r in rows if r not in expected]  # order kept
    assert (carved.moved, carved.kept, carved.replaced) == (len(expected), 400 - len(expected), False)


def test_a_rows_split_depends_on_its_prompt_only(tmp_path):
    """Shuffled and with rows appended, the original rows fall on the same side as before."""
    rows = _rows(0, 300)
    write_jsonl(tmp_path / "a" / "train.jsonl", rows)
    carve_validation(data_paths(tmp_path / "a"), 0.05)
    first = {r["prompt"] for r in read_jsonl(tmp_path / "a" / "validation.jsonl")}
    more = [*rows, *_rows(1000, 300)]
    random.Random(0).shuffle(more)
    write_jsonl(tmp_path / "b" / "train.jsonl", more)
    carve_validation(data_paths(tmp_path / "b"), 0.05)
    second = {r["prompt"] for r in read_jsonl(tmp_path / "b" / "validation.jsonl")}
    assert first and second - first
    assert second & {r["prompt"] for r in rows} == first


@pytest.mark.parametrize("fraction", [0.0, -0.1, 0.51, 1.0])
def test_split_refuses_a_fraction_outside_the_range(tmp_path, fraction):
    paths = data_paths(tmp_path)
    write_jsonl(paths.train_file, _rows(0, 50))
    before = _snapshot(tmp_path)
    with pytest.raises(SplitRefused, match=r"--fraction must be in \(0, 0.5\]"):
        carve_validation(paths, fraction)
    assert _snapshot(tmp_path) == before


def test_split_refuses_an_existing_validation_file_unless_forced(tmp_path):
    paths = data_paths(tmp_path)
    write_jsonl(paths.train_file, _rows(0, 200))
    write_jsonl(paths.validation_file, _rows(500, 3))
    before = _snapshot(tmp_path)
    with pytest.raises(SplitRefused, match=r"validation.jsonl \(paths.validation_file\) already exists"):
        carve_validation(paths, 0.2)
    assert _snapshot(tmp_path) == before
    carved = carve_validation(paths, 0.2, force=True)
    assert carved.replaced
    assert read_jsonl(paths.validation_file) == [r for r in _rows(0, 200) if _below(r["prompt"], 0.2)]


def test_split_refuses_to_leave_a_file_empty(tmp_path):
    paths = data_paths(tmp_path)
    rows = _rows(0, 3)
    assert not any(_below(r["prompt"], 0.01) for r in rows)
    write_jsonl(paths.train_file, rows)
    before = _snapshot(tmp_path)
    with pytest.raises(SplitRefused, match=r"moves 0 of the 3 rows .* none would be left to validate on"):
        carve_validation(paths, 0.01)
    assert _snapshot(tmp_path) == before


def test_a_failed_train_write_takes_the_new_validation_file_back(tmp_path, monkeypatch):
    from tasks import splits

    paths = data_paths(tmp_path)
    write_jsonl(paths.train_file, _rows(0, 100))
    before = _snapshot(tmp_path)
    calls = []

    def failing_second_write(path, rows):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return write_jsonl(path, rows)

    monkeypatch.setattr(splits, "write_jsonl", failing_second_write)
    with pytest.raises(OSError, match="No space left"):
        carve_validation(paths, 0.2)
    assert calls == [Path(paths.validation_file), Path(paths.train_file)]
    assert _snapshot(tmp_path) == before


def test_the_cli_says_what_moved_and_refuses_with_exit_2(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    paths = data_paths(tmp_path)
    rows = _rows(0, 200)
    write_jsonl(paths.train_file, rows)
    where = ["--set", f"paths.train_file={paths.train_file}", "--set", f"paths.validation_file={paths.validation_file}"]
    runner = CliRunner()
    bad = runner.invoke(app, ["data", "split", "--fraction", "0.7", *where])
    assert bad.exit_code == 2 and "--fraction must be in (0, 0.5]" in bad.output
    done = runner.invoke(app, ["data", "split", "--fraction", "0.1", *where])
    moved = sum(_below(r["prompt"], 0.1) for r in rows)
    assert done.exit_code == 0, done.output
    assert f"moved {moved} of 200 rows from {paths.train_file} to {paths.validation_file}" in done.output
    assert "data.dvc" in done.output
    again = runner.invoke(app, ["data", "split", "--fraction", "0.1", *where])
    assert again.exit_code == 2 and "already exists" in again.output
    assert len(read_jsonl(paths.validation_file)) == moved and len(read_jsonl(paths.train_file)) == 200 - moved
    assert json.loads(Path(paths.validation_file).read_text().splitlines()[0])["prompt"].startswith("ticket ")
