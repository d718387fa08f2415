"""The DVC pipeline for real, in a temporary git repository holding a copy of the project with tiny params."""

import csv
import io
import json
import shutil

import pytest
import yaml
from project import make_repo as _make_repo
from project import set_params as _set_params
from project import sh as _sh

from tasks.stages import STAGES

pytestmark = [pytest.mark.slow, pytest.mark.ordered]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return _make_repo(tmp_path_factory.mktemp("dvcrepo"))


def test_rewardflow_run_leaves_dvc_clean_and_reruns_nothing(tmp_path):
    """The in-process pipeline agrees with DVC: from a fresh clone it generates the pinned data, runs every stage,
    leaves `dvc status` clean with dvc.lock written; run again, it skips every stage. A module only the evaluation
    stages import (tasks/metrics.py, edited by a comment) re-runs those two and nothing upstream.

    Slow: a whole pipeline from a fresh clone (data generated, the MLflow store created), then the unchanged re-run,
    `dvc repro`, and a re-run of the evaluation stages.
    """
    repo, env = _make_repo(tmp_path / "repo", generate=False)
    first = _sh(["rewardflow", "run"], repo, env)
    assert [line.split()[0] for line in first.stdout.splitlines() if " ran " in f" {line} "] == list(STAGES)
    assert json.loads(_sh(["dvc", "status", "--json"], repo, env).stdout) == {}
    assert _sh(["git", "status", "--porcelain", "data.dvc"], repo, env).stdout == ""  # the pin is unchanged
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)
    second = _sh(["rewardflow", "run"], repo, env)
    stage_rows = [line.split()[:2] for line in second.stdout.splitlines() if line.split()[1:2] == ["skipped"]]
    assert stage_rows == [[name, "skipped"] for name in STAGES]
    assert "already registered as version 1" in second.stdout
    assert _ran(_sh(["dvc", "repro"], repo, env).stdout) == []  # and DVC agrees

    with (repo / "tasks" / "metrics.py").open("a") as module:
        module.write("# a comment changes the file's hash\n")
    third = _sh(["rewardflow", "run"], repo, env)
    statuses = {
        row[0]: row[1]
        for row in (line.split()[:2] for line in third.stdout.splitlines())
        if row[1:] and row[0] in STAGES and row[1] in ("ran", "skipped")  # not the metrics table's rows
    }
    assert statuses == {
        "validate": "skipped",
        "sft": "skipped",
        "grpo": "skipped",
        "evaluate": "ran",
        "validation_eval": "ran",
    }
    assert json.loads(_sh(["dvc", "status", "--json"], repo, env).stdout) == {}


def _ran(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def test_repro_then_noop_then_only_downstream_of_a_change(repo):
    """Slow: `dvc repro` runs every stage as a command of its own (each starts Python and imports torch, TRL and, for
    validate, Great Expectations), then three of them again."""
    repo, env = repo
    first = _sh(["dvc", "repro"], repo, env)
    assert _ran(first.stdout) == list(STAGES)
    report = json.loads((repo / "reports/eval.json").read_text())
    # the trained checkpoints and the answers that need no reading (tasks/reading.py)
    assert set(report) == {"sft", "grpo", "constant", "consensus"} and report["grpo"]["n"] == 16
    assert (repo / "dvc.lock").exists()

    # nothing changed: nothing runs, and DVC reports the workspace clean
    second = _sh(["dvc", "repro"], repo, env)
    assert _ran(second.stdout) == []
    assert json.loads(_sh(["dvc", "status", "--json"], repo, env).stdout) == {}

    # a GRPO-only param change re-runs grpo and what follows, not validate or sft
    _set_params(repo, {"grpo": {"temperature": 0.9}})
    third = _sh(["dvc", "repro"], repo, env)
    assert _ran(third.stdout) == ["grpo", "evaluate", "validation_eval"]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert lock["stages"]["grpo"]["params"]["params.yaml"]["grpo"]["temperature"] == 0.9


def test_bad_data_stops_before_training(repo):
    repo, env = repo
    bad = repo / "data" / "train.jsonl"
    lines = bad.read_text().splitlines()
    row = json.loads(lines[3])
    row["scores"] = [9, 9, 9, 9]
    lines[3] = json.dumps(row)
    bad.write_text("\n".join(lines) + "\n")
    lock_before = (repo / "dvc.lock").read_text() if (repo / "dvc.lock").exists() else None
    result = _sh(["dvc", "repro"], repo, env, check=False)
    assert result.returncode != 0
    assert "scores_max" in result.stderr + result.stdout and "train.jsonl:4" in result.stderr + result.stdout
    assert "Running stage 'sft'" not in result.stdout
    assert ((repo / "dvc.lock").read_text() if (repo / "dvc.lock").exists() else None) == lock_before


def test_push_and_pull_through_the_default_local_remote(repo):
    """The committed default remote is a folder beside the repository; push then pull restores the data into a
    checkout without data or cache. (The cache is set aside meanwhile and put back: the trained stages' outputs stay
    cached for the test after this one.)"""
    repo, env = repo
    _sh(["git", "checkout", "-q", "--", "data.dvc"], repo, env)
    _sh(["dvc", "checkout", "-q", "data.dvc"], repo, env, check=False)
    _sh(["dvc", "push", "-q", "data.dvc"], repo, env)
    assert (repo.parent / "rewardflow-dvc-storage").is_dir()
    cache, aside = repo / ".dvc" / "cache", repo.parent / "cache-aside"
    shutil.rmtree(repo / "data")
    shutil.move(cache, aside)
    try:
        _sh(["dvc", "pull", "-q", "data.dvc"], repo, env)
        assert json.loads(_sh(["dvc", "status", "--json", "data.dvc"], repo, env).stdout) == {}
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        shutil.move(aside, cache)


def test_reward_weight_experiment(repo):
    """The article's "don't trust the default weights", the DVC way, tuned on the validation split: `rewardflow
    sweep` queues experiments with the target validation_eval, which run only the stages the reward feeds up to the
    validation metrics, never evaluate; `dvc exp show` lists each experiment's metrics under their file, the
    held-out ones still the baseline's; the sweep ranks by the validation metric.

    Slow: a real sweep: two DVC experiments through the queue, each running grpo and validation_eval as commands in
    its own workspace. The baseline is the project as the tests before left it, made current (`dvc repro` runs
    nothing after them; on its own, this test trains it first).
    """
    repo, env = repo
    _sh(["git", "checkout", "-q", "--", "data.dvc"], repo, env)
    _sh(["dvc", "checkout", "-q"], repo, env, check=False)
    _sh(["dvc", "repro"], repo, env)
    _sh(["git", "add", "-A"], repo, env)
    _sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline"], repo, env)
    ranked = _sh(["rewardflow", "sweep", "-S", "reward.weights.item_accuracy=0.1,0.7", "--seeds", "42"], repo, env)
    assert "best: -S reward.weights.item_accuracy=" in ranked.stdout
    report = json.loads((repo / "reports" / "sweep.json").read_text())

    header, *rows = csv.reader(io.StringIO(_sh(["dvc", "exp", "show", "--csv"], repo, env).stdout))
    weight, rev = header.index("reward.weights.item_accuracy"), header.index("rev")
    val_mae = header.index("reports/validation_eval.json:grpo.mae")
    val_n = header.index("reports/validation_eval.json:grpo.n")
    heldout = [i for i, name in enumerate(header) if name.startswith("reports/eval.json:")]
    assert "reports/eval.json:grpo.within_1" in [header[i] for i in heldout]
    baseline = next(r for r in rows if r[header.index("typ")] == "baseline" and r[rev] != "workspace")
    swept = {float(r[weight]): r for r in rows if r[header.index("State")] == "Success"}
    assert {0.1, 0.7} <= set(swept)
    for value in (0.1, 0.7):
        assert float(swept[value][val_mae]) >= 0.0 and float(swept[value][val_n]) == 16
        assert [swept[value][i] for i in heldout] == [baseline[i] for i in heldout]
        # the experiment's dvc.lock: grpo and validation_eval ran with the swept weight; evaluate is the baseline's
        lock = yaml.safe_load(_sh(["git", "show", f"{swept[value][rev]}:dvc.lock"], repo, env).stdout)["stages"]
        stages = ("grpo", "validation_eval", "evaluate")
        weights = [lock[s]["params"]["params.yaml"]["reward"]["weights"]["item_accuracy"] for s in stages]
        assert weights == [value, value, float(baseline[weight])]
    # the sweep's ranking is each experiment's GRPO within_1 on the validation file, best first
    val_within_1 = header.index("reports/validation_eval.json:grpo.within_1")
    ranked_means = [s["mean"] for s in report["settings"]]
    assert ranked_means == sorted(ranked_means, reverse=True)
    by_setting = {tuple(s["overrides"]): s["mean"] for s in report["settings"]}
    assert by_setting == {(f"reward.weights.item_accuracy={v}",): float(swept[v][val_within_1]) for v in (0.1, 0.7)}
    assert report["failed"] == [] and report["metric"] == "grpo within_1 on data/validation.jsonl"
