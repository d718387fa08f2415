"""Scheduled retraining on a real Prefect server, data pinning and the project lock, end to end.

One `prefect server start` on 127.0.0.1 (its own PREFECT_HOME), one project in a temporary git + DVC repository with
tiny params (tests/project.py), and an HTTP receiver on 127.0.0.1 standing in for Slack. The tests run in order on
that one project: the schedule fires (trains; skips unchanged data; retrains after a row changed without `dvc add`,
pinning it), a failing firing is notified, the work-pool deployment runs on demand, two pipelines start at once, and
the version trained on the pinned data is rebuilt from its tags in a fresh clone at another path, byte for byte.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from datetime import UTC, datetime

import pytest
import yaml
from project import (
    http_receiver,
    make_repo,
    prefect_api,
    prefect_server,
    set_params,
    sh,
    stop_group,
    wait_until,
)

from tasks.stages import STAGES
from tasks.tracking import dvc_lock_hashes

pytestmark = [pytest.mark.slow, pytest.mark.ordered]

INTERVAL_S = 20  # the test schedule; shorter than a training run, so firings overlap one
MODEL = "rewardflow-scorer"
BLOCK = "custom-webhook/rewardflow-test"
BUSY = "another pipeline holds this checkout"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect")
    with prefect_server(home) as api:
        yield api, home


@pytest.fixture(scope="module")
def receiver():
    with http_receiver() as hook:
        yield hook


@pytest.fixture(scope="module")
def project(tmp_path_factory, server, receiver):
    """The project, committed with notifications to the receiver through a saved custom-webhook block; the
    environment its commands run in (the server's API, short runner and worker polls, the shell's PWD)."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    api, home = server
    repo, env = make_repo(tmp_path_factory.mktemp("retraining") / "repo")
    set_params(repo, {"notify": {"block": BLOCK}})
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "notify"], repo, env)
    with prefect_api(api):
        block = CustomWebhookNotificationBlock(
            name="rewardflow-test", url=receiver[0], json_data={"subject": "{{subject}}", "body": "{{body}}"}
        )
        block.save(BLOCK.split("/")[1], overwrite=True)
    env = {k: v for k, v in env.items() if k != "MLFLOW_TRACKING_URI"}
    env |= {
        "PREFECT_API_URL": api,
        "PREFECT_HOME": str(home),
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PWD": str(repo),  # what a shell in the project root has; prefect.yaml's pull step reads it
    }
    return repo, env


@pytest.fixture(scope="module")
def served(project):
    """`rewardflow serve --interval 15` in the project, as README shows it; stopped by the test that is done with
    it (or at the end)."""
    repo, env = project
    with (repo.parent / "serve.log").open("w") as log:
        proc = subprocess.Popen(
            ["rewardflow", "serve", "--interval", str(INTERVAL_S)],
            cwd=repo,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    yield proc
    stop_group(proc)


@pytest.fixture(scope="module")
def background():
    """Processes one test starts and a later one checks (the rebuild runs in its own clone meanwhile)."""
    started: dict[str, subprocess.Popen] = {}
    yield started
    for proc in started.values():
        stop_group(proc)


def _runs(api, flow_name="rewardflow-retrain"):
    """The flow's runs that started, oldest first."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with prefect_api(api) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])))
    return sorted((r for r in runs if r.start_time), key=lambda r: r.start_time)


def _trained(api):
    return [r for r in _runs(api) if r.state_type.value == "COMPLETED" and r.state_name == "Completed"]


def _message(run) -> str:
    return run.state.message or ""


def _registry(repo):
    import mlflow

    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri, uri)
    return client, sorted(client.search_model_versions(f"name = '{MODEL}'"), key=lambda v: int(v.version))


def _notification(received, text):
    return wait_until(lambda: next((b["body"] for b in received if text in b["body"]), None), 60, f"a '{text}' hook")


def _pin(repo) -> str:
    return yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"]


def _change_row(path, index):
    """Another valid score in one row, written in one step (as an upstream job dropping a new file would)."""
    lines = path.read_text().splitlines()
    row = json.loads(lines[index])
    row["scores"][0] = row["scores"][0] % 5 + 1
    lines[index] = json.dumps(row)
    path.with_suffix(".tmp").write_text("\n".join(lines) + "\n")
    os.replace(path.with_suffix(".tmp"), path)


def test_the_first_firing_trains_and_registers_a_champion(server, project, served, receiver):
    """Slow: it waits for the schedule's first firing, which runs a whole pipeline through the served deployment."""
    (api, _), (repo, _) = server, project
    done = wait_until(
        lambda: [r for r in _runs(api) if r.state.is_final() and BUSY not in _message(r)], 300, "a finished firing"
    )
    first = done[0]
    assert first.state_name == "Completed", _message(first)
    _, versions = _registry(repo)
    assert [str(v.version) for v in versions] == ["1"] and versions[0].tags["promotion_decision"] == "promoted"
    body = _notification(receiver[1], f"{MODEL} version 1")
    assert f"started by flow run: rewardflow-retrain/{first.name} ({first.id})" in body
    assert "decision: promoted" in body and "reason: first model: no champion yet (within_1 " in body


def test_a_firing_on_unchanged_data_skips_without_training_nor_the_lock(server, project):
    """With nothing new, a firing skips without taking the checkout's lock: while this test holds it (as a user's
    `dvc repro` would), the firing says "data unchanged", not "busy"."""
    from tasks import projectlock

    (api, _), (repo, _) = server, project
    (first,) = _trained(api)
    with projectlock.hold(repo, "the test, as a user's dvc command"):
        held_at = datetime.now(UTC)
        skip = wait_until(
            lambda: next((r for r in _runs(api) if r.start_time > held_at and r.state.is_final()), None),
            INTERVAL_S * 2 + 60,
            "a firing after the first training",
        )
    assert skip.state_name == "Skipped"
    assert "skipped: data unchanged: data hash " in _message(skip) and "is what version 1 was trained on" in _message(
        skip
    )
    assert len(_registry(repo)[1]) == 1 and len(_trained(api)) == 1


def test_a_changed_row_is_pinned_and_retrained_while_other_pipelines_are_refused(server, project, receiver, background):
    """A row changed without `dvc add`: the next firing pins it (data.dvc, cache, remote), trains, registers and
    gates version 2. While it runs, `rewardflow run` and `dvc repro` refuse at once; overlapping firings skip.

    Slow: it waits for scheduled firings (every 20 s) and a whole retraining run, and starts two refused pipelines
    meanwhile.
    """
    (api, _), (repo, env) = server, project
    pinned_before = _pin(repo)
    _change_row(repo / "data" / "train.jsonl", 0)
    changed_at = datetime.now(UTC)

    # once the firing is inside the pipeline (it holds the checkout until registered), try two more pipelines
    wait_until(
        lambda: next((r for r in _runs(api, "rewardflow-pipeline") if r.start_time > changed_at), None),
        INTERVAL_S * 2 + 90,
        "the pipeline of the firing after the change",
        every=0.2,
    )
    started = time.monotonic()
    with _paused_holder(repo, "scheduled retraining"):
        paused_at = datetime.now(UTC)
        cli = subprocess.Popen(["rewardflow", "run"], cwd=repo, env=env, stderr=subprocess.PIPE, text=True)
        repro = sh(["dvc", "repro"], repo, env, check=False)
        cli_err = cli.communicate(timeout=120)[1]
        refused_in = time.monotonic() - started
        # the training held on until the next scheduled firing landed on it
        busy = wait_until(
            lambda: next((r for r in _runs(api) if r.start_time > paused_at and r.state.is_final()), None),
            INTERVAL_S * 2 + 60,
            "a firing while the retraining holds the checkout",
        )
    assert cli.returncode == 75 and "is busy: scheduled retraining (Prefect flow run " in cli_err, cli_err
    holder = re.search(r"scheduled retraining \(Prefect flow run ([\w-]+)\)", cli_err).group(1)
    assert repro.returncode != 0 and "Unable to acquire lock" in repro.stderr, repro.stdout + repro.stderr
    assert refused_in < 45, refused_in

    wait_until(lambda: len(_trained(api)) >= 2, 400, "the retraining firing to finish")
    first, second = _trained(api)
    assert second.end_time > changed_at and holder == second.name  # the refusals named the firing that ran
    client, versions = _registry(repo)
    assert [str(v.version) for v in versions] == ["1", "2"]  # nothing from the refused pipelines
    v2 = versions[1].tags
    assert v2["promotion_decision"] in ("promoted", "rejected") and "vs champion v1" in v2["promotion_reason"]

    # the data is pinned: data.dvc names the new content, which is in the cache and on the remote
    pinned = _pin(repo)
    assert pinned != pinned_before and v2["dvc.data"] == pinned
    assert v2["data_pin"].startswith(f"data changed since data.dvc (data/train.jsonl): pinned as md5 {pinned}")
    assert v2["dvc_push"].startswith("pushed to DVC remote 'localstore'")
    assert json.loads(sh(["dvc", "status", "--json"], repo, env).stdout) == {}
    changed = {line[3:] for line in sh(["git", "status", "--porcelain"], repo, env).stdout.splitlines()}
    assert changed == {"data.dvc", "dvc.lock"}, changed  # the pin the summary says to commit, and the stages run

    # the decision reached the receiver: run, version, decision, reason with both values
    body = _notification(receiver[1], f"{MODEL} version 2")
    decision = "promoted" if v2["promotion_decision"] == "promoted" else "kept"
    assert f"started by flow run: rewardflow-retrain/{second.name} ({second.id})" in body
    assert f"decision: {decision}" in body and f"reason: {v2['promotion_reason']}" in body
    assert re.search(r"within_1: challenger \d\.\d{4}, champion \d\.\d{4}", body), body

    # the firing that landed during the retraining skipped, naming it; trainings never overlapped
    assert second.start_time < busy.start_time < second.end_time
    assert busy.state_name == "Skipped" and BUSY in _message(busy), _message(busy)
    assert f"scheduled retraining (Prefect flow run {second.name})" in _message(busy), _message(busy)
    assert first.end_time <= second.start_time
    assert len(_trained(api)) == 2
    background["rebuild"] = _start_rebuild(repo, env, "2")


@contextlib.contextmanager
def _paused_holder(repo, what):
    """The process holding the checkout (read from the holder note), stopped (SIGSTOP) for the body and continued
    after: whatever a pipeline started meanwhile sees, it sees while the holder is mid-run, however fast or slow
    this machine is. Stopping it keeps its lock, as a slow run would."""
    from tasks import projectlock

    note = repo / ".dvc" / "tmp" / projectlock.HOLDER_FILE
    holder = json.loads(note.read_text())
    assert what in holder["what"], holder
    os.kill(holder["pid"], signal.SIGSTOP)
    try:
        yield holder
    finally:
        os.kill(holder["pid"], signal.SIGCONT)


def _start_rebuild(repo, env, version):
    """`rewardflow lineage VERSION`'s rebuild commands, run as printed, in the background (their own clone). What
    the version's run left (dvc.lock, reports/eval.json) is kept in vVERSION/ beside the project for the test that
    compares."""
    lineage = sh(["rewardflow", "lineage", version], repo, env).stdout
    commands = [line.strip() for line in lineage.split("\nrebuild (")[1].splitlines()[1:]]
    (repo.parent / "lineage.txt").write_text(lineage)
    for name in ("dvc.lock", "reports/eval.json"):
        (repo.parent / f"v{version}" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(repo / name, repo.parent / f"v{version}" / name)
    with (repo.parent / "rebuild.log").open("w") as log:
        return subprocess.Popen(
            ["bash", "-c", "set -e\n" + "\n".join(commands)],
            cwd=repo.parent,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_a_failed_firing_is_notified_with_its_stage_and_error(server, project, served, receiver):
    """With data.pin: refuse, a changed row stops the firing before any training: the run fails naming the file
    and what to do, nothing is trained or registered, and the receiver gets the run, the stage and the error."""
    (api, _), (repo, env) = server, project
    set_params(repo, {"data": {"pin": "refuse"}})
    before = {name: (repo / name).read_bytes() for name in ("data.dvc", "dvc.lock")}
    original = (repo / "data" / "train.jsonl").read_bytes()
    _change_row(repo / "data" / "train.jsonl", 1)
    changed_at = datetime.now(UTC)
    try:
        failed = wait_until(
            lambda: next((r for r in _runs(api) if r.start_time > changed_at and r.state_type.value == "FAILED"), None),
            INTERVAL_S * 2 + 60,
            "a failed firing",
        )
        # the hook runs in the firing's process after its state is set: stop serving only once it has been sent
        body = _notification(receiver[1], f"({failed.id})")
        stop_group(served)
        assert "data/train.jsonl changed since data.dvc" in _message(failed) and "`dvc add data`" in _message(failed)
        assert "stage: data pin" in body and "error: DataNotPinned: data/train.jsonl changed since data.dvc" in body
        assert "data.pin is refuse: nothing was trained or registered" in body
        assert len(_registry(repo)[1]) == 2
        assert {name: (repo / name).read_bytes() for name in before} == before
    finally:  # the tests after this one train on the pinned data
        stop_group(served)
        (repo / "data" / "train.jsonl").write_bytes(original)
        set_params(repo, {"data": {"pin": "pin"}})
    assert json.loads(sh(["dvc", "status", "--json"], repo, env).stdout) == {}


def test_the_work_pool_deployment_runs_on_demand(server, project):
    """prefect.yaml deployed to a `process` work pool, a worker started, `prefect deployment run`: it completes
    (nothing new since version 2, so the run is the quick skip), in the checkout its pull step names."""
    (api, _), (repo, env) = server, project
    sh(["prefect", "work-pool", "create", "rewardflow", "--type", "process"], repo, env)
    sh(["prefect", "--no-prompt", "deploy", "--all"], repo, env)
    with (repo.parent / "worker.log").open("w") as log:
        worker = subprocess.Popen(
            ["prefect", "worker", "start", "--pool", "rewardflow"],
            cwd=repo,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        out = sh(["prefect", "deployment", "run", "rewardflow-retrain/scheduled-retraining"], repo, env).stdout
        run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
        run = wait_until(
            lambda: next((r for r in _runs(api) if str(r.id) == run_id and r.state.is_final()), None),
            180,
            "the deployment run",
        )
    finally:
        stop_group(worker)
    assert run.state_type.value == "COMPLETED" and "is what version 2 was trained on" in _message(run), _message(run)
    with prefect_api(api) as client:
        deployment = client.read_deployment(run.deployment_id)
    assert deployment.work_pool_name == "rewardflow"
    assert deployment.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(repo)}}]


def test_two_pipelines_at_once_one_proceeds_the_other_refuses(project):
    """Two `rewardflow run` started together after a GRPO param change and a held-out row changed without `dvc
    add`: one pins the data, retrains and registers version 3, the other refuses within seconds naming it; `dvc
    repro` beside the running one refuses too. Afterwards dvc.lock and the checkpoints agree (`dvc status` clean)
    and exactly one version was added.

    Slow: two pipelines start at once and one of them runs to the end.
    """
    repo, env = project
    set_params(repo, {"grpo": {"temperature": 0.9}})
    pinned_before = _pin(repo)
    _change_row(repo / "data" / "heldout.jsonl", 0)
    logs = [(repo.parent / f"run{i}.err").open("w+") for i in range(2)]
    runs = [
        subprocess.Popen(["rewardflow", "run"], cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=log)
        for log in logs
    ]
    started = time.monotonic()
    loser = wait_until(lambda: next((p for p in runs if p.poll() is not None), None), 120, "one run to refuse", 0.2)
    refused_in = time.monotonic() - started
    winner = runs[1 - runs.index(loser)]
    assert winner.poll() is None  # it held the checkout throughout
    with _paused_holder(repo, "rewardflow run") as holder:
        assert holder["pid"] == winner.pid
        repro = sh(["dvc", "repro"], repo, env, check=False)
    assert winner.wait(timeout=400) == 0, logs[runs.index(winner)].read()
    loser_err = logs[runs.index(loser)]
    loser_err.seek(0)
    message = loser_err.read()
    assert loser.returncode == 75 and f"is busy: rewardflow run (pid {winner.pid}, since " in message, message
    assert refused_in < 45, refused_in
    assert repro.returncode != 0 and "Unable to acquire lock" in repro.stderr

    assert json.loads(sh(["dvc", "status", "--json"], repo, env).stdout) == {}
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert lock["stages"]["grpo"]["params"]["params.yaml"]["grpo"]["temperature"] == 0.9
    _, versions = _registry(repo)
    assert [str(v.version) for v in versions] == ["1", "2", "3"]
    grpo_md5 = next(o["md5"] for o in lock["stages"]["grpo"]["outs"] if o["path"] == "models/grpo")
    assert versions[2].tags["dvc.models/grpo"] == grpo_md5
    assert _pin(repo) != pinned_before and versions[2].tags["dvc.data"] == _pin(repo)
    assert versions[2].tags["data_pin"].startswith("data changed since data.dvc (data/heldout.jsonl): pinned as md5")


def test_a_version_trained_on_pinned_data_is_rebuilt_from_its_tags(project, background):
    """`rewardflow lineage 2` (the version the schedule trained on the pinned row), printed right after it was
    registered: every DVC path it names is in the local cache and on the remote; its rebuild commands, run as
    printed (in the background since then), re-run every stage in a fresh clone at another path and give the same
    bytes: every output a later stage depends on (the validation report, both checkpoints) and the held-out
    metrics; only the outputs nothing depends on differ (GE's time-stamped Data Docs, the training logs' wall
    times)."""
    repo, env = project
    _, versions = _registry(repo)
    tags = versions[1].tags
    lineage = (repo.parent / "lineage.txt").read_text()
    rows = [line.split() for line in lineage.splitlines() if line.startswith("    ")]
    assert len(rows) >= 6 and all(row[2:] == ["yes", "yes"] for row in rows), lineage
    assert {row[0]: row[1] for row in rows}["data"] == tags["dvc.data"]
    commands = [line.strip() for line in lineage.split("\nrebuild (")[1].splitlines()[1:]]
    assert commands[0].startswith("git clone") and commands[-1].startswith("dvc repro")
    assert background["rebuild"].wait(timeout=600) == 0, (repo.parent / "rebuild.log").read_text()[-3000:]

    clone = repo.parent / commands[0].split(" && cd ")[1]
    assert os.path.commonpath([clone, repo]) != str(repo)  # truly another place, not inside the first checkout
    ran = (repo.parent / "rebuild.log").read_text().splitlines()
    assert [line.split("'")[1] for line in ran if line.startswith("Running stage")] == list(STAGES)
    lock = yaml.safe_load((clone / "dvc.lock").read_text())
    kept = repo.parent / "v2"  # what version 2's own run left (_start_rebuild)
    outs, first = dvc_lock_hashes(clone), dvc_lock_hashes(kept)
    assert outs["models/grpo"] == tags["dvc.models/grpo"] and outs["models/sft"] == tags["dvc.models/sft"]
    assert _pin(clone) == tags["dvc.data"]
    depended_on = {dep["path"] for stage in lock["stages"].values() for dep in stage["deps"]}
    feeding = sorted(path for path in first if path in depended_on)
    assert feeding == ["models/grpo", "models/sft", "reports/validation.json"]
    assert {path: outs[path] for path in feeding} == {path: first[path] for path in feeding}
    assert {path for path in first if first[path] != outs[path]} <= {
        "reports/data_docs",
        "reports/sft_logs.json",
        "reports/grpo_logs.json",
    }
    assert (clone / "reports" / "eval.json").read_bytes() == (kept / "reports" / "eval.json").read_bytes()
    rebuilt = json.loads((clone / "reports" / "eval.json").read_text())["grpo"]
    recorded = {k.removeprefix("metric."): float(v) for k, v in tags.items() if k.startswith("metric.")}
    assert {k: float(v) for k, v in rebuilt.items()} == recorded
