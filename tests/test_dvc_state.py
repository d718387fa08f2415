"""The project's DVC state at its edges, with real DVC and no pipeline run: a `dvc repro` stage running holds the
checkout against `rewardflow run`, and a push to a remote that cannot be written is reported, not raised."""

import os
import subprocess
import time

import pytest
import yaml
from project import VENV_BIN, copy_params, sh, stop_group, tool_env, wait_until

pytestmark = pytest.mark.slow


def _pin(repo) -> str:
    return yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"]


def test_rewardflow_run_beside_a_running_dvc_repro_refuses_naming_it(tmp_path):
    """`dvc repro` lets go of DVC's lock while a stage's command runs and guards the stage's outputs with its rwlock
    instead: `rewardflow run` in that checkout meanwhile refuses in seconds, naming the command and its pid."""
    env = tool_env()
    sh(["git", "init", "-q"], tmp_path, env)
    sh(["dvc", "init", "-q"], tmp_path, env)
    copy_params(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages:\n  slow:\n    cmd: sleep 120 && touch out.txt\n    outs: [out.txt]\n")
    with (tmp_path / "repro.log").open("w") as log:
        repro = subprocess.Popen(
            ["dvc", "repro"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_until(lambda: "Running stage 'slow'" in (tmp_path / "repro.log").read_text(), 60, "dvc repro to start")
        started = time.monotonic()
        refused = sh(["rewardflow", "run"], tmp_path, env, check=False)
        refused_in = time.monotonic() - started
    finally:
        stop_group(repro)
    assert refused.returncode == 75, refused.stderr
    assert f"is busy: `dvc repro` (pid {repro.pid}), running a DVC stage on " in refused.stderr, refused.stderr
    assert refused_in < 30 and not (tmp_path / "data").exists() and not (tmp_path / "models").exists()


def test_a_failed_push_is_reported_and_content_is_located(tmp_path):
    """The default remote cannot be written (its path runs through a file): push says so and what to do; the
    content is found in the local cache and not on the remote."""
    from tasks import pinning, rebuild

    env = tool_env()
    sh(["git", "init", "-q"], tmp_path, env)
    sh(["dvc", "init", "-q"], tmp_path, env)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"prompt": "p", "scores": [1]}\n')
    (tmp_path / "blocker").write_text("a file, not a folder")
    sh(["dvc", "remote", "add", "-d", "broken", str(tmp_path / "blocker" / "store")], tmp_path, env)
    sh(["dvc", "add", "-q", "data"], tmp_path, env)
    message = pinning.push(tmp_path, stages_recorded=False, dvc_file="data.dvc")
    assert message.startswith("push to DVC remote 'broken' failed: ") and "run `dvc push`" in message
    remote, found = rebuild.where(tmp_path, {"data": _pin(tmp_path)})
    assert remote == "broken" and found["data"][0] is True and found["data"][1] is not True


def test_a_checkout_with_dvc_hardlink_lock_is_refused_before_anything_runs(tmp_path):
    """DVC's hardlink lock (core.hardlink_lock, for filesystems without flock) is taken for a year: a pipeline
    killed while holding it would leave the checkout locked. `rewardflow run` refuses to start under that setting,
    naming it and what to do, and creates nothing."""
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PREFECT_API_URL", None)
    sh(["git", "init", "-q"], tmp_path, env)
    sh(["dvc", "init", "-q"], tmp_path, env)
    sh(["dvc", "config", "core.hardlink_lock", "true"], tmp_path, env)
    copy_params(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if ".git" not in p.parts)
    refused = sh(["rewardflow", "run"], tmp_path, env, check=False)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "sets core.hardlink_lock" in refused.stderr and "dvc config --unset core.hardlink_lock" in refused.stderr
    assert "Traceback" not in refused.stderr
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if ".git" not in p.parts)
    assert [p for p in after if p not in before and p.parts[:2] != (".dvc", "tmp")] == []
