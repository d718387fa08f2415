"""Stopping `rewardflow run` for real: SIGTERM (as a Prefect worker, systemd or Kubernetes sends it, to the process)
during SFT, then SIGINT (as Ctrl-C sends it, to the whole process group) during GRPO of the next run, in a temporary
git + DVC copy of the project with tiny params and Prefect's temporary server. Tests in this module run in order."""

import os
import signal
import sqlite3
import subprocess
import time

import psutil
import pytest
import yaml
from project import PREFECT_DB, make_repo, seed_prefect_home, set_params

from tasks.checkpoints import COMPLETE_MARKER

pytestmark = [pytest.mark.slow, pytest.mark.ordered]

# Measured on the 2-core machine: ~1.5 s from the signal to the exit (the Prefect server gone after ~1 s).
STOP_WITHIN_S = 10


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("stopping")
    repo, env = make_repo(root / "repo")
    # enough steps that a signal lands mid-training, and a checkpoint every few of them
    set_params(
        repo,
        {
            "sft": {"max_steps": 60, "save_steps": 10, "logging_steps": 10},
            "grpo": {"max_steps": 30, "save_steps": 2},
        },
    )
    env = {k: v for k, v in env.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")}
    env["PREFECT_HOME"] = str(seed_prefect_home(root / "prefect"))  # the temporary server's database, read back below
    return repo, env


def _stop_during(repo, env, stage, signum, to_group):
    """Run `rewardflow run`, send signum once a new checkpoint of stage is complete; (exit code, seconds from the
    signal to the exit, output, the run's child processes before the signal)."""
    folder = repo / "models" / ".checkpoints" / stage
    log = repo.parent / f"run-{stage}.log"
    with open(log, "w") as out:
        run = subprocess.Popen(
            ["rewardflow", "run"], cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 300
    while not list(folder.glob(f"checkpoint-*/{COMPLETE_MARKER}")):
        assert run.poll() is None, f"the run ended before a {stage} checkpoint:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    children = psutil.Process(run.pid).children(recursive=True)
    started = time.monotonic()
    (os.killpg if to_group else os.kill)(run.pid, signum)
    try:
        code = run.wait(timeout=60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    return code, time.monotonic() - started, log.read_text(), children


def _flow_runs(env):
    """(state type, message) of every flow run in the temporary server's database, oldest first."""
    with sqlite3.connect(os.path.join(env["PREFECT_HOME"], PREFECT_DB)) as db:
        return db.execute("select state_type, state_name from flow_run order by created").fetchall()


def _mlflow_runs(repo):
    with sqlite3.connect(repo / "mlflow.db") as db:
        return db.execute("select name, status from runs order by start_time").fetchall()


def _lock_entry(repo, stage):
    return yaml.safe_load((repo / "dvc.lock").read_text())["stages"].get(stage)


def _check_stopped(repo, env, stage, lock_before, code, seconds, output, children, signum):
    name = signal.Signals(signum).name
    assert code == 128 + signum, output[-3000:]
    assert seconds < STOP_WITHIN_S, seconds
    assert f"pipeline stopped by {name}. Complete checkpoints are kept" in output
    # Prefect: the flow run is Cancelled, not left Running or Crashed; its temporary server is gone
    assert _flow_runs(env)[-1] == ("CANCELLED", "Cancelled")
    assert children and not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    # MLflow: the stage's run and the pipeline's run are KILLED, nothing is left RUNNING
    runs = _mlflow_runs(repo)
    assert "RUNNING" not in {status for _, status in runs}, runs
    latest = dict(runs)  # each name's latest run
    assert (latest["pipeline"], latest[stage]) == ("KILLED", "KILLED"), runs
    # the last complete checkpoint is left for the next run; the stage's model was neither written nor recorded
    folder = repo / "models" / ".checkpoints" / stage
    assert list(folder.glob(f"checkpoint-*/{COMPLETE_MARKER}"))
    assert not (repo / "models" / stage).exists()
    assert _lock_entry(repo, stage) == lock_before


def test_sigterm_during_sft_stops_the_run_within_seconds(project):
    repo, env = project
    lock_before = _lock_entry(repo, "sft")
    code, seconds, output, children = _stop_during(repo, env, "sft", signal.SIGTERM, to_group=False)
    _check_stopped(repo, env, "sft", lock_before, code, seconds, output, children, signal.SIGTERM)


def test_ctrl_c_during_grpo_of_the_next_run_stops_it_and_sft_was_resumed(project):
    repo, env = project
    lock_before = _lock_entry(repo, "grpo")
    code, seconds, output, children = _stop_during(repo, env, "grpo", signal.SIGINT, to_group=True)
    assert "sft: resuming from checkpoint-" in output  # the checkpoint the stopped run left
    assert (repo / "models" / "sft" / "model.safetensors").is_file()
    _check_stopped(repo, env, "grpo", lock_before, code, seconds, output, children, signal.SIGINT)
    assert [state for state, _ in _flow_runs(env)] == ["CANCELLED", "CANCELLED"]
