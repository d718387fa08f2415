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
from project import VENV_BIN, free_port

from tasks import promotion, registry_lock, tracking
from tasks.config import RegisterConfig
from tasks.promotion import register_and_gate
from tasks.registry_lock import LOCK_SUFFIX, RegistryBusy, RegistryLockLost, gate_lock
from tasks.tracking import TrackingUnavailable

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CFG = RegisterConfig(model_name="unused", primary_metric="within_1", min_improvement=0.005, require_reading=True)
# Client calls in this module give up fast: one retry, 3 s per request.
FAST_CLIENT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}
# The crash matrices send all their cases' requests at once to one single-worker server on a loaded machine, where a
# request can queue past 3 s; they test crashes, not timeouts, so their clients wait longer.
MATRIX_CLIENT = {**FAST_CLIENT, "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


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
    cfg = RegisterConfig(
        model_name=name, primary_metric="within_1", min_improvement=CFG.min_improvement, require_reading=True
    )
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


def _do(client, name, op, arg):
    """One registry operation by name, as the crash scripts run it: register (arg run_id:within_1), promote (arg
    the version) or rollback (arg the reason)."""
    if op == "register":
        run_id, within_1 = arg.split(":")
        return _register(client, name, run_id, float(within_1))
    if op == "promote":
        return promotion.promote(client, name, arg, "crash test")
    return promotion.rollback(client, name, arg)


# Registry operations that each die with SIGKILL just before the named registry call (the first whose arguments end
# with the marker); only the MLflow client method is wrapped, the server and its store are real. One process imports
# MLflow and the registry code once, then forks a child per operation (what dies is a whole process, as a killed
# pipeline would, without each one paying the imports). Their locks declare a 2 s TTL, so a re-run counts a dead
# holder out 2 s after its last heartbeat. Prints how each child ended: {name: its exit status, or minus the signal}.
CRASH = """
import json, os, signal, sys, traceback
from mlflow import MlflowClient
sys.path.insert(0, sys.argv[1])
from tasks import registry_lock
from test_reliability_registry import _do
registry_lock.LOCK_TTL_S = 2.0
uri, cases = sys.argv[2], json.loads(sys.argv[3])
children = {}
for name, op, arg, method, marker in cases:
    pid = os.fork()
    if pid == 0:
        real = getattr(MlflowClient, method)
        def dying(self, *args, **kwargs):
            if any(str(a).endswith(marker) for a in (*args, *kwargs.values())):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(self, *args, **kwargs)
        setattr(MlflowClient, method, dying)
        try:
            _do(MlflowClient(uri, uri), name, op, arg)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)  # not killed: the marker never came
    children[pid] = name
ended = {}
for _ in children:
    pid, status = os.wait()
    ended[children[pid]] = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
print(json.dumps(ended))
"""


def _each(work, items) -> list:
    """work(item) for every item, all at once (one thread each), results in order. The crash cases each use their
    own registered model, so their set-ups and re-runs are independent; at once, each re-run's wait for its dead
    holder's lock TTL (2 s) overlaps the others' instead of adding up."""
    from concurrent.futures import ThreadPoolExecutor

    items = list(items)
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        return list(pool.map(work, items))


def _crash_all(server, cases: list[tuple[str, str, str, str, str]]) -> None:
    """Run every (name, op, arg, method, marker) case as a CRASH child (see above); fail unless each one died by
    SIGKILL at its marker."""
    result = subprocess.run(
        [sys.executable, "-c", CRASH, str(Path(__file__).parent), server.uri, json.dumps(cases)],
        cwd=ROOT,
        env={**os.environ, **MATRIX_CLIENT},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ended = json.loads(result.stdout.strip().splitlines()[-1])
    assert ended == {case[0]: -signal.SIGKILL for case in cases}, f"{ended}\n{result.stderr[-3000:]}"


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


def test_a_crash_at_any_registration_step_is_finished_by_the_rerun(server, client, experiment_id, monkeypatch):
    """kill -9 between any two registry writes, then re-run the registration of the same training run: exactly one
    new version, the right aliases and history, a recorded decision, no lock left behind.

    Slow: nine crash points, each a process killed mid-registration whose re-run waits out the dead holder's lock.
    """

    def prepare(point):
        i, (method, marker, within_1) = point
        name = f"crash-{i}"  # (a name ending like a marker would trip the wrong call)
        _register(client, name, _run(client, experiment_id), 0.5)  # v1, the champion
        return name, "register", f"{_run(client, experiment_id)}:{within_1}", method, marker

    for key, value in MATRIX_CLIENT.items():
        monkeypatch.setenv(key, value)
    cases = _each(prepare, enumerate(CRASH_POINTS))
    _crash_all(server, cases)

    def rerun(case):
        name, _, arg, _, _ = case
        run_id, within_1 = arg.split(":")[0], float(arg.split(":")[1])
        before = _state(client, name)
        started = time.perf_counter()
        result = _register(client, name, run_id, within_1)
        return before, time.perf_counter() - started, result, _state(client, name)

    for (name, _, arg, _, marker), (before, seconds, (version, decision, _), after) in zip(
        cases, _each(rerun, cases), strict=True
    ):
        within_1 = float(arg.split(":")[1])
        promoted = within_1 > 0.5
        if marker == LOCK_SUFFIX:
            assert before["locked"] and decision is None, name  # the dead holder's lock; the work was done
        assert seconds < 30, name  # the dead process's lock is broken after its 2 s TTL
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


# Every write of promote (v2 over champion v1) and of rollback (champion v2 back to v1), and the lock's release.
PROMOTE_AND_ROLLBACK_CRASH_POINTS = [
    # promote: the alias has not moved
    ("promote", "set_registered_model_alias", "champion"),
    # promote: the alias moved to v2, the history still ends at v1
    ("promote", "set_registered_model_tag", "champion_history"),
    # promote: alias and history done, the reason not yet on v2
    ("promote", "set_model_version_tag", "promoted_reason"),
    # promote: all written, the lock not released
    ("promote", "delete_registered_model", LOCK_SUFFIX),
    # rollback: before the change is recorded on the lock (nothing written yet)
    ("rollback", "set_registered_model_tag", registry_lock.PENDING_TAG),
    # rollback: recorded, nothing moved
    ("rollback", "set_model_version_tag", "rolled_back"),
    # rollback: v2 marked rolled back, its reason not yet
    ("rollback", "set_model_version_tag", "rollback_reason"),
    # rollback: tags written, the history still ends at v2
    ("rollback", "set_registered_model_tag", "champion_history"),
    # rollback: the history ends at v1, the alias still on v2
    ("rollback", "set_registered_model_alias", "champion"),
    # rollback: the alias is back on v1, v1 not yet told why
    ("rollback", "set_model_version_tag", "restored_reason"),
    # rollback: all written, the lock (which records the rollback) not released: the re-run must not roll back again
    ("rollback", "delete_registered_model", LOCK_SUFFIX),
]


def test_a_crash_at_any_write_of_promote_or_rollback_is_finished_by_the_rerun(
    server, client, experiment_id, monkeypatch
):
    """kill -9 before each write of `promote` and `rollback`, then the same command again: one consistent state,
    one champion, the history and the tags on both versions, no lock left, and never a second rollback.

    Slow: eleven crash points, each a process killed mid-write whose re-run waits out the dead holder's lock.
    """

    def prepare(point):
        i, (op, method, marker) = point
        name = f"{op}-crash-{i}"
        _register(client, name, _run(client, experiment_id), 0.5)  # v1, the champion
        # v2: rejected (0.4) for promote to promote by hand; promoted (0.9) for rollback to undo
        _register(client, name, _run(client, experiment_id), 0.4 if op == "promote" else 0.9)
        arg = "2" if op == "promote" else "crash test"  # promote v2; rollback's reason
        return name, op, arg, method, marker

    for key, value in MATRIX_CLIENT.items():
        monkeypatch.setenv(key, value)
    cases = _each(prepare, enumerate(PROMOTE_AND_ROLLBACK_CRASH_POINTS))
    _crash_all(server, cases)

    def rerun(case):
        name, op, arg, _, _ = case
        return _do(client, name, op, arg), _state(client, name)

    for (name, op, _, _, _), (result, state) in zip(cases, _each(rerun, cases), strict=True):
        assert not state["locked"], name
        assert state["versions"] == [("1", "promoted"), ("2", "rejected" if op == "promote" else "promoted")], name
        if op == "promote":
            assert result in ("1", "2"), name  # the champion before the call (v2 when the crash came after the alias)
            assert state["aliases"] == {"champion": "2", "challenger": "2"}, name
            assert state["history"] == ["1", "2"], name
            assert state["tags"]["2"]["promoted_reason"] == "crash test", name
        else:
            assert result == ("2", "1"), name
            assert state["aliases"] == {"champion": "1", "challenger": "2"}, name
            assert state["history"] == ["1"], name
            assert (state["tags"]["2"]["rolled_back"], state["tags"]["2"]["rollback_reason"]) == ("true", "crash test")
            assert state["tags"]["1"]["restored_reason"] == "rollback from v2: crash test", name


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


def test_two_holders_with_one_host_and_pid_have_different_tokens(client):
    """host:pid in the token is for people to read (containers share hostnames and pid numbers): two holders of
    one process get different tokens, and the earlier one, checking its lock while the later one holds it, finds
    it is not its own."""
    name = "same-host-and-pid"
    with gate_lock(client, name) as first:
        pass
    with gate_lock(client, name) as second:
        assert (
            second.token.rsplit(":", 1)[0] == first.token.rsplit(":", 1)[0] == f"{socket.gethostname()}:{os.getpid()}"
        )
        assert second.token != first.token
        with pytest.raises(RegistryLockLost, match=f"now held by {second.token}"):
            first.check()
        second.check()  # still the holder


def test_a_live_holder_keeps_its_lock_past_the_ttl(client, monkeypatch):
    """The heartbeat: a holder that works under the lock for 3 TTLs (as waiting for a model version or
    re-evaluating a champion can) keeps it; a waiter sees the beat move and never breaks it."""
    monkeypatch.setattr(registry_lock, "LOCK_TTL_S", 2.0)
    name, outcome = "heartbeat", []

    def contender():
        try:
            with gate_lock(MlflowClient(client.tracking_uri, client.tracking_uri), name, wait_s=5):
                outcome.append("took the lock")
        except RegistryBusy as err:
            outcome.append(err)

    with gate_lock(client, name) as lock:
        thread = threading.Thread(target=contender)
        thread.start()
        time.sleep(6)  # 3 TTLs: without the heartbeat the contender would break the lock after 2 s
        thread.join(timeout=30)
        lock.check()  # still ours: a guarded write may go ahead
        beats = int(registry_lock.lock_tags(client, f"{name}{LOCK_SUFFIX}")["beat"])
    assert len(outcome) == 1 and isinstance(outcome[0], RegistryBusy), outcome
    assert beats >= 3  # at least once per TTL (every TTL/6 when the machine keeps up)
    assert not client.search_registered_models(f"name = '{name}{LOCK_SUFFIX}'")


# A holder that takes the lock, says so, then waits for the go file and promotes v2 under that same lock.
STALLED_HOLDER = """
import sys, time
from pathlib import Path
from mlflow import MlflowClient
from tasks import promotion, registry_lock
registry_lock.LOCK_TTL_S = 1.0
uri, name, held, go = sys.argv[1:5]
client = MlflowClient(uri, uri)
with registry_lock.gate_lock(client, name):
    Path(held).touch()
    while not Path(go).exists():
        time.sleep(0.05)
    promotion.promote(client, name, "2", "from the stalled holder")
"""


def test_a_holder_that_lost_its_lock_writes_no_alias(server, client, experiment_id, tmp_path):
    """A holder paused (SIGSTOP) for longer than its TTL loses the lock to a waiter; resumed while the waiter holds
    it, it stops with RegistryLockLost before moving any alias, and leaves the waiter's lock alone."""
    name = "stalled"
    _register(client, name, _run(client, experiment_id), 0.5)  # v1, the champion
    _register(client, name, _run(client, experiment_id), 0.4)  # v2, rejected
    held, go = tmp_path / "held", tmp_path / "go"
    holder = subprocess.Popen(
        [sys.executable, "-c", STALLED_HOLDER, server.uri, name, str(held), str(go)],
        cwd=ROOT,
        env={**os.environ, **FAST_CLIENT},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not held.exists():
            assert holder.poll() is None and time.monotonic() < deadline, holder.communicate()[1][-3000:]
            time.sleep(0.05)
        os.kill(holder.pid, signal.SIGSTOP)
        started = time.perf_counter()
        with gate_lock(client, name) as ours:  # breaks the stalled holder's lock after its 1 s TTL
            waited = time.perf_counter() - started
            go.touch()
            os.kill(holder.pid, signal.SIGCONT)
            out, err = holder.communicate(timeout=60)
            ours.check()  # the resumed holder left our lock alone
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, signal.SIGCONT)
            holder.kill()
    assert 1 <= waited < 20
    assert holder.returncode == 1 and "RegistryLockLost: registry lock stalled.gate-lock was taken over" in err, err
    state = _state(client, name)
    assert state["aliases"] == {"champion": "1", "challenger": "2"} and state["history"] == ["1"]
    assert "promoted_reason" not in state["tags"]["2"] and not state["locked"]


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


# A process that registers and gates a better model (0.9 over champion 0.5), and just before the named write tells
# the test (ready file) and waits for it (go file): the test kills the server in between.
HELD_BEFORE_WRITE = """
import sys, time
from pathlib import Path
from mlflow import MlflowClient
sys.path.insert(0, sys.argv[1])
from tasks import registry_lock
from test_reliability_registry import _register
registry_lock.LOCK_TTL_S = 2.0
uri, name, run_id, method, marker, ready, go = sys.argv[2:9]
real = getattr(MlflowClient, method)
def held(self, *args, **kwargs):
    if any(str(a).endswith(marker) for a in (*args, *kwargs.values())):
        Path(ready).touch()
        while not Path(go).exists():
            time.sleep(0.05)
    return real(self, *args, **kwargs)
setattr(MlflowClient, method, held)
_register(MlflowClient(uri, uri), name, run_id, 0.9)
"""


@pytest.mark.parametrize(
    "method, marker",
    [
        # version 2 exists, its challenger alias is not set yet
        ("set_registered_model_alias", "challenger"),
        # the champion alias moved to v2, the history still ends at v1
        ("set_registered_model_tag", "champion_history"),
    ],
)
def test_server_killed_between_two_registry_writes_then_the_rerun_finishes(
    server, client, experiment_id, tmp_path, method, marker
):
    """The tracking server dies between two writes of a registration (the process then fails on its next call and
    leaves its lock behind); once the server is back, re-running the registration of the same training run
    finishes it: one new version, not two, the aliases, history and decision right, no lock left.

    Slow: the MLflow server is killed and started again (its start is most of the time).
    """
    name = f"server-killed-{marker}"
    _register(client, name, _run(client, experiment_id), 0.5)
    run_id = _run(client, experiment_id)
    ready, go = tmp_path / "ready", tmp_path / "go"
    args = [str(Path(__file__).parent), server.uri, name, run_id, method, marker, str(ready), str(go)]
    process = subprocess.Popen(
        [sys.executable, "-c", HELD_BEFORE_WRITE, *args],
        cwd=ROOT,
        env={**os.environ, **FAST_CLIENT},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.05)
    server.stop()
    try:
        go.touch()
        _, err = process.communicate(timeout=120)
        assert process.returncode == 1 and "Connection refused" in err, err[-3000:]
    finally:
        server.start()
    version, decision, _ = _register(client, name, run_id, 0.9)  # the re-run, after the dead lock's TTL
    state = _state(client, name)
    assert version == "2" and decision.promote
    assert state["versions"] == [("1", "promoted"), ("2", "promoted")]  # nothing duplicated
    assert state["aliases"] == {"champion": "2", "challenger": "2"} and state["history"] == ["1", "2"]
    assert not state["locked"]


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
