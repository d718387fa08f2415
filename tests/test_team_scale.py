"""Team-scale tracking for real: an `mlflow server` whose backend store is PostgreSQL (Debian's server binaries,
started on 127.0.0.1 by the test in a temporary data folder), driven by the project's own tracking and registry
code. Skipped, with the reason, only where the PostgreSQL server binaries or the psycopg2 driver are absent."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from project import free_port, mlflow_server

pytestmark = pytest.mark.slow


def _as_postgres_user(args: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; as root, run its binaries as the `postgres` system user.
    if os.geteuid() != 0:
        return args
    if shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL as an unprivileged user")
    return ["runuser", "-u", "postgres", "--", *args]


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL cluster on 127.0.0.1 with a database `mlflow`; yields its SQLAlchemy URI."""
    for tool in ("initdb", "pg_ctl", "createdb"):
        if shutil.which(tool) is None:
            pytest.skip(f"PostgreSQL server binaries not installed ({tool} not on PATH; apt-get install postgresql)")
    pytest.importorskip("psycopg2", reason="psycopg2 driver not installed (pip install psycopg2-binary)")
    # not under pytest's tmp folders: those are private to the test's user, and PostgreSQL runs as another one
    base = Path(tempfile.mkdtemp(prefix="rewardflow-pg-"))
    data, sockets = base / "data", base / "sock"
    data.mkdir()
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(data, "postgres")
        shutil.chown(sockets, "postgres")
    port = free_port()
    subprocess.run(
        _as_postgres_user(["initdb", "-D", str(data), "-U", "mlflow", "--auth=trust"]),
        check=True,
        capture_output=True,
    )
    options = f"-h 127.0.0.1 -p {port} -k {sockets}"
    subprocess.run(
        _as_postgres_user(["pg_ctl", "-D", str(data), "-o", options, "-l", str(base / "log"), "-w", "start"]),
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            ["createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "mlflow"], check=True, capture_output=True
        )
        yield f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(_as_postgres_user(["pg_ctl", "-D", str(data), "-m", "fast", "stop"]), capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    """`mlflow server` on 127.0.0.1 with the PostgreSQL backend store and a local artifact destination."""
    with mlflow_server(postgres, tmp_path_factory.mktemp("artifacts")) as uri:
        yield uri


def test_tracking_and_registry_on_a_postgres_backed_server(server, monkeypatch):
    """The pipeline's tracking calls (parent + nested run, per-step metrics) and the registry's gate, promote and
    rollback work unchanged against the team setup: only MLFLOW_TRACKING_URI differs."""
    from tasks import promotion, registry, tracking
    from tasks.config import load_params

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    p = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    client, experiment_id = tracking.connect(p)
    parent = tracking.start_parent_run(client, experiment_id, p, {"data_hash": "d1"})
    stage = tracking.start_stage_run(client, parent, experiment_id, "grpo", p)
    logged = tracking.log_step_metrics(
        client, stage, [{"step": s, "reward_stats/combined/mean": s / 10} for s in (1, 2)]
    )
    assert logged == 2
    assert [m.value for m in client.get_metric_history(stage, "reward_stats/combined/mean")] == [0.1, 0.2]
    assert client.get_run(stage).data.tags[tracking.PARENT_TAG] == parent
    assert client.get_run(parent).data.params["grpo.num_generations"] == "4"

    name = "team-scale-scorer"
    versions = []
    for within_1 in (0.70, 0.80):
        run = client.create_run(experiment_id).info.run_id
        tags = {"metric.within_1": repr(within_1)}
        version, created = promotion.register_challenger(client, name, f"runs:/{run}/model", run, tags)
        assert created
        champion_version, champion, _ = registry.champion_metrics(client, name)
        decision = promotion.decide_promotion({"within_1": within_1}, champion, p.register, champion_version)
        promotion.apply_decision(client, name, str(version.version), decision)
        versions.append(str(version.version))
    assert versions == ["1", "2"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == "2"
    assert promotion.rollback(client, name, "test") == ("2", "1")
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
