"""The registry under faults, for real: a `mlflow server` (SQLite backend) on 127.0.0.1, processes killed with
SIGKILL in the middle of registering, four processes gating at once, the server slow, down and back, a password
in the tracking URI. Every row of docs/RELIABILITY.md's registry section points at a test here."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import mlflow
import psutil
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.tracking._model_registry import utils as registry_uri_state
from mlflow.tracking._tracking_service import utils as tracking_uri_state
from project import free_port

from tasks import tracking
from tasks.config import RegisterConfig
from tasks.registry import LOCK_SUFFIX, RegistryBusy, gate_lock, register_and_gate
from tasks.tracking import TrackingUnavailable

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
CFG = RegisterConfig(model_name="unused", primary_metric="within_1", min_improvement=0.005)
# Client calls in this module give up fast: one retry, 3 s per request.
FAST_CLIENT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}


class Server:
    """`mlflow server` on 127.0.0.1 with a SQLite backend; can be stopped and started again on the same port."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--backend-store-uri", f"sqlite:///{self.folder}/server.db"]
        command += ["--artifacts-destination", str(self.folder / "artifacts"), "--workers", "1"]
        with open(self.folder / "server.log", "a") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2)
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = (self.folder / "server.log").read_text()
                    raise AssertionError(f"mlflow server did not start:\n{log}") from None
                time.sleep(0.3)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(server, monkeypatch):
    for key, value in FAST_CLIENT.items():
        monkeypatch.setenv(key, value)
    return MlflowClient(server.uri, server.uri)


@pytest.fixture(scope="module")
def experiment_id(server):
    return MlflowClient(server.uri, server.uri).create_experiment("reliability")


def test_the_mlflow_server_listens_on_localhost_only(server):
    """`mlflow server --host 127.0.0.1` (as `make ui` runs it): every socket of it and its workers is local."""
    processes = [psutil.Process(server.process.pid), *psutil.Process(server.process.pid).children(recursive=True)]
    listening = set()
    for proc in processes:
        try:
            connections = proc.net_connections("tcp")
        except psutil.NoSuchProcess:
            continue  # a short-lived helper process the server started and already reaped
        listening |= {c.laddr.ip for c in connections if c.status == psutil.CONN_LISTEN}
    assert listening == {"127.0.0.1"}


def _run(client, experiment_id) -> str:
    return client.create_run(experiment_id).info.run_id


def _register(client, name, run_id, within_1):
    """What the pipeline's register step does after logging the model: register the run's model once and gate it."""
    source = f"{client.get_run(run_id).info.artifact_uri}/model"
    cfg = RegisterConfig(model_name=name, primary_metric="within_1", min_improvement=CFG.min_improvement)
    tags = {"metric.within_1": repr(within_1)}
    return register_and_gate(client, name, run_id, source, tags, {"within_1": within_1}, cfg)


def _state(client, name):
    """Everything a crash could have left wrong: versions with their decisions, aliases, history, the lock."""
    versions = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    model = client.get_registered_model(name)
    locks = client.search_registered_models(f"name = '{name}{LOCK_SUFFIX}'")
    return {
        "versions": [(str(v.version), v.tags.get("promotion_decision")) for v in versions],
        "aliases": {alias: str(version) for alias, version in model.aliases.items()},
        "history": json.loads(model.tags.get("champion_history", "[]")),
        "locked": bool(locks),
        "tags": {str(v.version): dict(v.tags) for v in versions},
    }


# A process that registers a better (0.9) or worse (0.4) model than champion v1 (0.5) and dies with SIGKILL just
# before the named registry call; only the MLflow client method is wrapped, the server and its store are real.
CRASH = """
import os, signal, sys
from mlflow import MlflowClient
sys.path.insert(0, sys.argv[1])
from test_reliability_registry import _register
uri, name, run_id, within_1, method, marker = sys.argv[2:8]
real = getattr(MlflowClient, method)
def dying(self, *args, **kwargs):
    if any(str(a).endswith(marker) for a in (*args, *kwargs.values())):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, *args, **kwargs)
setattr(MlflowClient, method, dying)
_register(MlflowClient(uri, uri), name, run_id, float(within_1))
print("not killed")
"""

CRASH_POINTS = [
    # before the version exists (the model is logged, nothing registered)
    ("create_model_version", "", 0.9),
    # version 2 exists, but without the challenger alias
    ("set_registered_model_alias", "challenger", 0.9),
    # challenger set, the gate has recorded nothing yet
    ("set_model_version_tag", "promotion_reason", 0.9),
    # the reason is recorded, the champion alias has not moved
    ("set_registered_model_alias", "champion", 0.9),
    # the alias moved to v2, the champion history still ends at v1
    ("set_registered_model_tag", "champion_history", 0.9),
    # alias and history done, the promotion's reason not yet on the version
    ("set_model_version_tag", "promoted_reason", 0.9),
    # everything but the final verdict (the commit point)
    ("set_model_version_tag", "promotion_decision", 0.9),
    # a worse model, killed before its rejection is recorded
    ("set_model_version_tag", "promotion_decision", 0.4),
    # all done, but the registry lock was never released: the next run must not wait for a dead process
    ("delete_registered_model", LOCK_SUFFIX, 0.9),
]


def test_a_crash_at_any_registration_step_is_finished_by_the_rerun(server, client, experiment_id):
    """kill -9 between any two registry writes, then re-run the registration of the same training run: exactly one
    new version, the right aliases and history, a recorded decision, no lock left behind."""
    cases = []
    for i, (method, marker, within_1) in enumerate(CRASH_POINTS):
        name = f"crash-{i}"  # (a name ending like a marker would trip the wrong call)
        _register(client, name, _run(client, experiment_id), 0.5)  # v1, the champion
        run_id = _run(client, experiment_id)
        args = [str(Path(__file__).parent), server.uri, name, run_id, str(within_1), method, marker]
        process = subprocess.Popen(
            [sys.executable, "-c", CRASH, *args],
            cwd=ROOT,
            env={**os.environ, **FAST_CLIENT},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        cases.append((name, run_id, within_1, marker, process))
    for name, run_id, within_1, marker, process in cases:
        out, err = process.communicate(timeout=240)
        assert process.returncode == -signal.SIGKILL, f"{name}: {out}\n{err[-3000:]}"

        before = _state(client, name)
        started = time.perf_counter()
        version, decision, _ = _register(client, name, run_id, within_1)  # the re-run
        after = _state(client, name)
        promoted = within_1 > 0.5
        if marker == LOCK_SUFFIX:
            assert before["locked"] and decision is None, name  # the dead holder's lock; the work was done
        assert time.perf_counter() - started < 30, name  # the dead process's lock is broken, not waited out
        assert version == "2", name
        assert after["versions"] == [("1", "promoted"), ("2", "promoted" if promoted else "rejected")], name
        assert after["aliases"] == {"champion": "2" if promoted else "1", "challenger": "2"}, name
        assert after["history"] == (["1", "2"] if promoted else ["1"]), name
        assert not after["locked"], name
        reason = after["tags"]["2"]["promotion_reason"]
        assert reason.startswith(f"within_1 {within_1:.4f} vs champion v1 0.5000"), (name, reason)
        assert after["tags"]["2"]["champion_version_at_gate"] == "1", name
        if promoted:
            assert after["tags"]["2"]["promoted_reason"] == reason, name


# One process of four registering and gating at once: waits for the start file, then goes.
WORKER = """
import json, sys, time
from pathlib import Path
from mlflow import MlflowClient
sys.path.insert(0, sys.argv[1])
from test_reliability_registry import _register
uri, name, run_id, within_1, go = sys.argv[2:7]
client = MlflowClient(uri, uri)
while not Path(go).exists():
    time.sleep(0.01)
version, decision, _ = _register(client, name, run_id, float(within_1))
print(json.dumps({"version": version, "promote": decision.promote}))
"""


def test_four_processes_gating_at_once_leave_the_best_champion(server, client, experiment_id, tmp_path):
    """Champion v1 (0.50); four processes register 0.60, 0.90, 0.70, 0.80 at the same moment. Whatever order the
    registry lock lets them through, the result is a sequential history: unique versions, none lost, every
    decision recorded, each promotion compared with the champion just before it, and 0.90 ends as champion."""
    name = "concurrent"
    _register(client, name, _run(client, experiment_id), 0.50)
    metrics = [0.60, 0.90, 0.70, 0.80]
    runs = {_run(client, experiment_id): m for m in metrics}
    go = tmp_path / "go"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(Path(__file__).parent), server.uri, name, run_id, str(m), str(go)],
            cwd=ROOT,
            env={**os.environ, "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for run_id, m in runs.items()
    ]
    time.sleep(3)  # let them import mlflow first, so that they really start together
    go.touch()
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=240)
        assert worker.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))

    state = _state(client, name)
    # unique versions, none lost: one per training run
    assert sorted(r["version"] for r in results) == ["2", "3", "4", "5"]
    assert [v for v, _ in state["versions"]] == ["1", "2", "3", "4", "5"]
    by_version = {v: float(t["metric.within_1"]) for v, t in state["tags"].items()}
    assert sorted(by_version.values()) == [0.5, *sorted(metrics)]
    assert {t["source_run_id"] for v, t in state["tags"].items() if v != "1"} == set(runs)
    # every decision recorded, and the best one is champion
    assert all(decision in ("promoted", "rejected") for _, decision in state["versions"])
    best = max(by_version, key=by_version.get)
    assert by_version[best] == 0.90 and state["aliases"]["champion"] == best
    assert state["aliases"]["challenger"] == "5" and not state["locked"]
    # serialisable: the history is exactly the promoted versions, each better than the champion it replaced
    promoted = [v for v, decision in state["versions"] if decision == "promoted"]
    assert state["history"][0] == "1" and sorted(state["history"], key=int) == promoted
    for previous, current in zip(state["history"], state["history"][1:], strict=False):
        assert state["tags"][current]["champion_version_at_gate"] == previous
        assert by_version[current] >= by_version[previous] + CFG.min_improvement
    for version, decision in state["versions"]:
        if decision == "rejected":
            against = state["tags"][version]["champion_version_at_gate"]
            assert by_version[version] < by_version[against] + CFG.min_improvement


def test_a_live_holder_makes_others_wait_then_fail_clearly(client):
    """The lock really excludes: while this process holds it, a second holder (another thread) waits and then
    gives up with a message naming the holder."""
    name = "held"
    errors = []

    def contender():
        try:
            with gate_lock(MlflowClient(client.tracking_uri, client.tracking_uri), name, wait_s=1):
                errors.append(None)
        except RegistryBusy as err:
            errors.append(err)

    with gate_lock(client, name):
        thread = threading.Thread(target=contender)
        started = time.perf_counter()
        thread.start()
        thread.join(timeout=30)
        waited = time.perf_counter() - started
    assert len(errors) == 1 and isinstance(errors[0], RegistryBusy)
    assert f"registry lock {name}{LOCK_SUFFIX} is held by {socket.gethostname()}:{os.getpid()}:" in str(errors[0])
    assert 1 <= waited < 10
    assert not client.search_registered_models(f"name = '{name}{LOCK_SUFFIX}'")  # released


class BlackHole:
    """A TCP server on 127.0.0.1 that accepts connections and never answers: a hung tracking server."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.uri = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self) -> None:
        self.sock.close()


def test_a_hung_tracking_server_fails_in_bounded_time(monkeypatch):
    hole = BlackHole()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", hole.uri)
        started = time.perf_counter()
        # what every rewardflow command does first: a health check with a 5 s timeout
        with pytest.raises(TrackingUnavailable, match=rf"{hole.uri} is unreachable \(timed out\)"):
            tracking.open_client()
        assert time.perf_counter() - started < 10
        # a call that hangs later, mid-run: bounded by MLflow's request timeout times its attempts
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
        started = time.perf_counter()
        with pytest.raises(MlflowException, match="timed out"):
            MlflowClient(hole.uri, hole.uri).search_model_versions("name = 'x'")
        assert time.perf_counter() - started < 1 * 2 + 4  # 2 attempts x 1 s, plus backoff
    finally:
        hole.close()


def test_tracking_server_down_mid_run_then_back(server, client, experiment_id):
    """The server dies after the pipeline connected: registering fails in bounded time and leaves nothing
    half-registered; once the server is back (same store), the retry registers and gates exactly once."""
    name = "outage"
    _register(client, name, _run(client, experiment_id), 0.5)
    run_id = _run(client, experiment_id)
    server.stop()
    try:
        started = time.perf_counter()
        with pytest.raises(MlflowException, match="Connection refused|Max retries"):
            _register(client, name, run_id, 0.9)
        assert time.perf_counter() - started < 20
    finally:
        server.start()
    assert _state(client, name)["versions"] == [("1", "promoted")]  # nothing half-registered
    version, decision, _ = _register(client, name, run_id, 0.9)  # the retry
    state = _state(client, name)
    assert (version, decision.promote) == ("2", True)
    assert state["versions"] == [("1", "promoted"), ("2", "promoted")] and state["aliases"]["champion"] == "2"


@contextlib.contextmanager
def _restore_mlflow_uris():
    saved = (tracking_uri_state._tracking_uri, registry_uri_state._registry_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved[0])
        mlflow.set_registry_uri(saved[1])


def test_a_password_in_the_tracking_uri_never_reaches_logs_tags_or_messages(
    server, experiment_id, monkeypatch, caplog, capfd
):
    """MLFLOW_TRACKING_URI=http://user:secret@host: open_client hands the password to MLflow through its own
    variables, so neither MLflow's messages nor ours, the run summary's URI, logs or tags ever carry it."""
    import logging

    caplog.set_level(logging.INFO)
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(key, "")  # so that monkeypatch restores them, then unset for the test
        monkeypatch.delenv(key)
    secret_uri = server.uri.replace("http://", "http://rewardflow:s3cr3t-pw@")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", secret_uri)
    with _restore_mlflow_uris():
        client = tracking.open_client()
        assert tracking.tracking_uri() == server.uri  # what the run summary prints
        assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "s3cr3t-pw"
        run_id = _run(client, experiment_id)
        with mlflow.start_run(run_id=run_id):  # MLflow prints a "View run" link when such a run ends
            mlflow.log_param("x", 1)
        _register(client, "credentials", run_id, 0.5)
        tags = {**client.get_run(run_id).data.tags, **client.get_model_version("credentials", "1").tags}
    # a server that is down: the error names the address, redacted
    dead = f"http://rewardflow:s3cr3t-pw@127.0.0.1:{free_port()}"
    with pytest.raises(TrackingUnavailable) as err:
        tracking.check_server(dead)
    assert "http://rewardflow:***@127.0.0.1" in str(err.value)
    out, errout = capfd.readouterr()
    for where, text in {
        "logs": caplog.text,
        "stdout": out,
        "stderr": errout,
        "tags": json.dumps(tags),
        "error": str(err.value),
    }.items():
        assert "s3cr3t-pw" not in text, where
