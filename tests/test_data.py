"""The embedded task generator and JSONL reading."""

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
from project import data_paths

from tasks.config import TaskConfig, load_params
from tasks.data import (
    DataFileError,
    embedded_splits,
    generate_dataset,
    generate_rows,
    label_for,
    phrase_sentiment,
    read_jsonl,
    write_jsonl,
)
from tasks.telemetry import TELEMETRY_OFF

TASK = TaskConfig(
    kind="synthetic",
    n_items=4,
    min_score=1,
    max_score=5,
    n_train=300,
    n_heldout=60,
    n_validation=40,
    train_seed=1,
    heldout_seed=2,
    validation_seed=3,
    rater_bias=(0.0, 1.0, 0.0),
    modifier_rate=0.4,
)


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = generate_dataset(data_paths(tmp_path / "a"), TASK)
    b = generate_dataset(data_paths(tmp_path / "b"), TASK)
    assert list(a) == ["train", "heldout", "validation"]
    assert [_digest(p) for p in a.values()] == [_digest(p) for p in b.values()]
    c = generate_dataset(data_paths(tmp_path / "c"), replace(TASK, train_seed=7))
    assert _digest(c["train"]) != _digest(a["train"])


def test_rows_follow_the_schema_and_the_labelling_rule(tmp_path):
    files = generate_dataset(data_paths(tmp_path), TASK)
    rows, held, val = (read_jsonl(files[split]) for split in ("train", "heldout", "validation"))
    assert len(rows) == 300 and len(held) == 60 and len(val) == 40
    for row in rows + val:
        assert set(row) == {"prompt", "scores"}
        assert len(row["scores"]) == 4 and all(1 <= s <= 5 for s in row["scores"])
    # distinct within a file, and the three splits share no prompt
    prompts = [{r["prompt"] for r in split} for split in (rows, held, val)]
    assert [len(p) for p in prompts] == [300, 60, 40]
    assert not prompts[0] & prompts[1] and not prompts[0] & prompts[2] and not prompts[1] & prompts[2]
    # every score value occurs
    assert {s for r in rows for s in r["scores"]} == {1, 2, 3, 4, 5}


def test_the_validation_split_leaves_train_and_heldout_as_data_dvc_pinned_them(tmp_path):
    """Adding the validation split changed no byte of the default train and held-out files: their md5s are the
    ones of the two-file data folder data.dvc pinned before it (dir md5 4c3d2073bc8a415db1dd233aa074a929), and a
    different validation seed or size changes the validation file only."""
    p = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    files = generate_dataset(data_paths(tmp_path / "default"), p.task)
    md5 = {split: hashlib.md5(path.read_bytes()).hexdigest() for split, path in files.items()}
    assert md5["train"] == "cf6b010448af7c43e42d57dad8aaa011"
    assert md5["heldout"] == "c53d8f4d81c9d86e6d8ed94f2f0c7310"
    other = embedded_splits(replace(p.task, n_validation=50, validation_seed=11))
    assert read_jsonl(files["train"]) == other["train"] and read_jsonl(files["heldout"]) == other["heldout"]
    assert len(other["validation"]) == 50 and other["validation"] != read_jsonl(files["validation"])[:50]


@pytest.mark.parametrize(
    "phrase, expected",
    [
        ("okay", 3),  # no sentiment: the neutral midpoint
        ("tasty and fresh", 5),  # +2
        ("tasty and fresh and cheap", 5),  # +3 is clipped at the top
        ("bland", 2),  # -1
        ("very bland", 1),  # "very" doubles: -2
        ("not bland", 4),  # "not" flips: +1
        ("not tasty but very fresh", 4),  # -1 + 2
        ("very okay tasty", 4),  # a modifier applies to the next word only, fillers reset it
        ("rude yet slow also dirty", 1),  # -3 is clipped at the bottom
    ],
)
def test_label_rule(phrase, expected):
    assert label_for(phrase_sentiment(phrase.split()), 1, 5) == expected


def _recount(row):
    """The labelling rule applied again to each aspect phrase of a row's prompt."""
    segments = row["prompt"].removeprefix("review : ").split(" . ")[: len(row["scores"])]
    return [label_for(phrase_sentiment(segment.split(" : ")[1].split()), 1, 5) for segment in segments]


def test_labels_match_a_recount_of_the_prompt():
    for row in generate_rows(200, 3, TASK):
        assert row["scores"] == _recount(row), row["prompt"]


def test_rater_bias_moves_labels_off_the_consensus_by_its_probabilities():
    """Labels are one rater's scores: below/at/above the consensus with rater_bias's probabilities, clipped to the
    range; the prompts are the same whatever the raters do."""
    consensus = generate_rows(3000, 5, TASK)
    biased = generate_rows(3000, 5, replace(TASK, rater_bias=(0.35, 0.3, 0.35)))
    assert [r["prompt"] for r in biased] == [r["prompt"] for r in consensus]
    offsets = {-1: 0, 0: 0, 1: 0}
    for c_row, b_row in zip(consensus, biased, strict=True):
        for c, b in zip(c_row["scores"], b_row["scores"], strict=True):
            assert 1 <= b <= 5 and abs(b - c) <= 1
            if 2 <= c <= 4:  # away from the clipped ends every offset shows
                offsets[b - c] += 1
    total = sum(offsets.values())
    assert total > 5000
    for offset, expected in ((-1, 0.35), (0, 0.3), (1, 0.35)):
        assert abs(offsets[offset] / total - expected) < 0.02, offsets
    # deterministic for a seed
    assert generate_rows(50, 5, replace(TASK, rater_bias=(0.35, 0.3, 0.35))) == biased[:50]


def test_modifier_rate_zero_leaves_plain_counts():
    rows = generate_rows(300, 4, replace(TASK, modifier_rate=0.0))
    words = {w for r in rows for w in r["prompt"].split()}
    assert not words & {"very", "not"}
    assert {"very", "not"} <= {w for r in generate_rows(300, 4, TASK) for w in r["prompt"].split()}
    for row in rows:  # the label is still the rule's count
        assert row["scores"] == _recount(row), row["prompt"]


def test_too_many_items_fails():
    with pytest.raises(ValueError, match="task.n_items"):
        generate_rows(10, 1, replace(TASK, n_items=20))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "file is empty"),  # empty file
        (
            b'{"prompt": "a", "scores": [1]}\n{"prompt": "b", "sco',
            r":2: not valid JSON \(truncated last line\?\)",
        ),
        (b'{"prompt": "a", "scores": [1]}\nnot json\n{"prompt": "c"}\n', r":2: not valid JSON"),
        (b'{"prompt": "a"}\n\xff\xfe bad bytes\n', r":2: not UTF-8"),
        (b"[1, 2, 3]\n", r":1: expected a JSON object, got list"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataFileError, match=message) as err:
        read_jsonl(path)
    assert str(path) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataFileError, match="file not found"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_write_is_atomic_on_failure(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "a", "scores": [1]}])

    def rows():
        yield {"prompt": "b", "scores": [2]}
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_jsonl(path, rows())
    # the old file is intact and no temporary file is left behind
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"prompt": "a", "scores": [1]}]
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]


def test_generate_recreates_what_data_dvc_pins(tmp_path):
    """On a fresh clone, `rewardflow data generate` writes exactly the files data.dvc pins (real DVC)."""
    import os
    import shutil
    import subprocess
    import sys

    from project import copy_params

    root = Path(__file__).resolve().parents[1]
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, **TELEMETRY_OFF}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    shutil.copytree(root / ".dvc", tmp_path / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp"))
    shutil.copy(root / "data.dvc", tmp_path / "data.dvc")
    copy_params(tmp_path)
    subprocess.run([bin_dir / "rewardflow", "data", "generate"], cwd=tmp_path, env=env, check=True)
    # Caching the regenerated files must leave the pin unchanged (same md5), and then DVC sees no change.
    subprocess.run([bin_dir / "dvc", "commit", "-q", "-f", "data.dvc"], cwd=tmp_path, env=env, check=True)
    assert (tmp_path / "data.dvc").read_text() == (root / "data.dvc").read_text()
    status = subprocess.run(
        [bin_dir / "dvc", "status", "--json", "data.dvc"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) == {}, status.stdout


def test_with_rater_bias_the_reward_pays_for_the_consensus_not_the_most_frequent_label():
    """The embedded default's reason to exist: the most frequent label of a review is off the consensus, yet the
    combined reward (and within-1, MAE) is highest for answering the consensus — the gap GRPO is for."""
    from tasks.evaluation import score_predictions
    from tasks.rewards import RewardConfig

    bias = (0.35, 0.3, 0.35)
    consensus = generate_rows(2000, 9, replace(TASK, modifier_rate=0.0))
    labelled = generate_rows(2000, 9, replace(TASK, modifier_rate=0.0, rater_bias=bias))
    truths = [r["scores"] for r in labelled]

    def metrics(shift):
        texts = [" ".join(str(min(5, max(1, s + shift))) for s in r["scores"]) for r in consensus]
        return score_predictions(texts, truths, RewardConfig(), 1, 5)[0]

    at, below, above = metrics(0), metrics(-1), metrics(1)
    assert at["within_1"] == 1.0
    for off in (below, above):
        assert at["mean_reward"] > off["mean_reward"] + 0.04
        assert at["mae"] < off["mae"] - 0.15 and off["within_1"] < 0.8
    # labels are off the consensus more often than on it, away from the clipped ends
    interior = [
        (c, s)
        for rc, rl in zip(consensus, labelled, strict=True)
        for c, s in zip(rc["scores"], rl["scores"], strict=True)
        if 2 <= c <= 4
    ]
    assert sum(c == s for c, s in interior) / len(interior) < 0.35


ENGLISH = replace(TASK, kind="english", rater_bias=(0.35, 0.3, 0.35))


def test_the_english_task_is_deterministic_plain_english_with_known_consensus(tmp_path):
    """task.kind english: same params, same bytes; each sentence says its aspect's level in everyday words; labels
    are one rater's, within 1 of a consensus that covers the whole range evenly."""
    import re
    from collections import Counter

    from tasks import english_task
    from tasks.data import consensus_labels

    a = generate_dataset(data_paths(tmp_path / "a"), ENGLISH)
    b = generate_dataset(data_paths(tmp_path / "b"), ENGLISH)
    assert [_digest(p) for p in a.values()] == [_digest(p) for p in b.values()]
    assert _digest(a["train"]) != _digest(generate_dataset(data_paths(tmp_path / "c"), TASK)["train"])

    rows = read_jsonl(a["train"])
    consensus = consensus_labels(ENGLISH, rows)
    phrase_level = {
        ph: lv for table in (english_task.PLAIN, english_task.MODIFIED) for lv, phs in table.items() for ph in phs
    }
    for row, truth in zip(rows, consensus, strict=True):
        review, ask = row["prompt"].split("\n")
        assert (
            ask == "Rate food, service, price, ambience from 1 to 5, in that order, one score each separated by spaces."
        )
        sentences = re.findall(r"[^.]+\.", review.removeprefix("Review: "))
        assert len(sentences) == 4
        for sentence, noun, score in zip(sentences, ("food", "service", "price", "atmosphere"), truth, strict=True):
            assert f"the {noun}" in sentence.lower()
            said = [ph for ph in phrase_level if re.search(rf"\b{re.escape(ph)}\.$", sentence)]
            assert phrase_level[max(said, key=len)] + 3 == score, sentence  # the whole phrase, not its tail
        assert all(abs(label - c) <= 1 for label, c in zip(row["scores"], truth, strict=True))
    counts = Counter(score for truth in consensus for score in truth)
    assert set(counts) == {1, 2, 3, 4, 5} and min(counts.values()) > 0.15 * len(rows) * 4
    # about the english task's share of sentences carry a negation or an intensifier (task.modifier_rate is not its)
    assert generate_rows(50, 1, ENGLISH) == generate_rows(50, 1, replace(ENGLISH, modifier_rate=0.0))
    modified = {ph for phs in english_task.MODIFIED.values() for ph in phs}
    said = [s for r in rows for s in re.findall(r"[^.]+\.", r["prompt"].split("\n")[0])]
    share = sum(any(s.endswith(f" {ph}.") for ph in modified) for s in said) / len(said)
    assert 0.25 < share < 0.35


def test_a_levels_score_spreads_over_the_range():
    from tasks.english_task import level_score

    assert [level_score(lv, 1, 5) for lv in range(-2, 3)] == [1, 2, 3, 4, 5]
    assert [level_score(lv, 0, 10) for lv in range(-2, 3)] == [0, 2, 5, 8, 10]


def test_the_english_data_is_pinned_by_dvc_like_the_synthetic_one(tmp_path):
    """`rewardflow data generate` with task.kind english in a DVC project: `dvc add data` pins it, and generating
    again (same params) leaves DVC nothing to do (real DVC)."""
    import os
    import shutil
    import subprocess
    import sys

    import yaml
    from project import copy_params

    root = Path(__file__).resolve().parents[1]
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, **TELEMETRY_OFF}

    def run(*cmd):
        return subprocess.run(cmd, cwd=tmp_path, env=env, check=True, capture_output=True, text=True).stdout

    run("git", "init", "-q")
    shutil.copytree(root / ".dvc", tmp_path / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp"))
    params = copy_params(tmp_path)
    raw = yaml.safe_load(params.read_text())
    raw["task"] |= {"kind": "english", "n_train": 200, "n_heldout": 40, "n_validation": 40}
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    run(str(bin_dir / "rewardflow"), "data", "generate")
    run(str(bin_dir / "dvc"), "add", "-q", "data")
    pinned = (tmp_path / "data.dvc").read_text()
    assert read_jsonl(tmp_path / "data" / "train.jsonl")[0]["prompt"].startswith("Review: ")
    run(str(bin_dir / "rewardflow"), "data", "generate")
    assert json.loads(run(str(bin_dir / "dvc"), "status", "--json", "data.dvc")) == {}
    run(str(bin_dir / "dvc"), "commit", "-q", "-f", "data.dvc")
    assert (tmp_path / "data.dvc").read_text() == pinned
