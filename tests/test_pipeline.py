"""The Prefect pipeline for real: Prefect's test harness, MLflow on a SQLite file, DVC in a temporary git repository
holding a copy of the project with tiny params. Tests in this module run in order on one project."""

import json
import os
import time
from pathlib import Path

import pytest
import yaml
from project import free_port, make_repo, mlflow_server, seed_prefect_home, set_params, sh

from tasks.telemetry import TELEMETRY_OFF

pytestmark = [pytest.mark.slow, pytest.mark.ordered]


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="module")
def project(tmp_path_factory, harness):
    """The project in a temporary repository, as the working directory, with the default local MLflow store."""
    repo, env = make_repo(tmp_path_factory.mktemp("pipeline") / "repo")
    # mlflow.set_tracking_uri/set_registry_uri write these into os.environ during a run: restored afterwards
    uri_vars = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    cwd, saved = Path.cwd(), {var: os.environ.pop(var, None) for var in uri_vars}
    os.chdir(repo)
    try:
        yield repo, env
    finally:
        os.chdir(cwd)
        for var, value in saved.items():
            os.environ.pop(var, None)
            if value is not None:
                os.environ[var] = value


def _client(repo):
    import mlflow

    uri = f"sqlite:///{repo / 'mlflow.db'}"
    return mlflow.MlflowClient(uri, uri)


def _runs(client, parent_id):
    runs = client.search_runs(
        [client.get_run(parent_id).info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    return {r.info.run_name: r for r in runs}


def test_first_run_trains_tracks_and_registers_a_champion(project):
    """Slow: the first pipeline run of the module (every stage, the MLflow store created, a model logged and
    registered)."""
    from flows.pipeline import training_pipeline

    repo, env = project
    summary = training_pipeline()

    # every stage ran, DVC recorded each one: the repository is as `dvc repro` would leave it
    assert [(name, status) for name, status, _ in summary["stages"]] == [
        ("validate", "ran"),
        ("sft", "ran"),
        ("grpo", "ran"),
        ("evaluate", "ran"),
        ("validation_eval", "ran"),
    ]
    assert json.loads(sh(["dvc", "status", "--json"], repo, env).stdout) == {}
    assert summary["model_version"] == "1" and summary["promoted"]
    # the summary's metrics are the held-out ones of eval.json, never the validation split's
    report = json.loads((repo / "reports/eval.json").read_text())
    assert summary["metrics"] == report and report["grpo"]["n"] == 16

    # MLflow: one parent run with the resolved params and lineage tags, a nested run per stage
    client = _client(repo)
    parent = client.get_run(summary["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["grpo.num_generations"] == "4" and parent.data.params["sft.max_steps"] == "3"
    assert parent.data.tags["data_hash"] and parent.data.tags["params_hash"] and parent.data.tags["git_commit"]
    assert "dvc.lock" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    stages = _runs(client, parent.info.run_id)
    assert set(stages) == {"validate", "sft", "grpo", "evaluate", "validation_eval", "register"}
    assert all(r.info.status == "FINISHED" for r in stages.values())

    # per-step training metrics, including every reward component's mean and std (2 GRPO steps, logged each)
    grpo = stages["grpo"].info.run_id
    for key in ("rewards/item_accuracy/mean", "rewards/format/std", "reward_stats/combined/mean", "loss"):
        history = client.get_metric_history(grpo, key)
        assert [m.step for m in history] == [1, 2], key
    assert len(client.get_metric_history(stages["sft"].info.run_id, "loss")) == 3
    assert stages["grpo"].data.params["grpo.temperature"] == "0.7"

    # eval metrics, reports and plots as artifacts; the validation split's metrics under their own prefix, apart
    # from the held-out ones the gate reads
    assert stages["evaluate"].data.metrics["grpo.within_1"] == pytest.approx(report["grpo"]["within_1"])
    validation = json.loads((repo / "reports/validation_eval.json").read_text())
    logged = stages["validation_eval"].data.metrics
    assert set(logged) == {f"validation.{c}.{k}" for c, metrics in validation.items() for k in metrics}
    assert logged["validation.grpo.within_1"] == pytest.approx(validation["grpo"]["within_1"])
    assert not any(k.startswith("validation.") for k in stages["evaluate"].data.metrics)
    artifacts = {a.path for a in client.list_artifacts(stages["evaluate"].info.run_id, "plots")}
    assert artifacts == {"plots/heldout_score_heatmap.png"}
    assert {a.path for a in client.list_artifacts(grpo, "plots")} == {"plots/reward_components.png"}
    docs = {a.path for a in client.list_artifacts(stages["validate"].info.run_id, "data_docs")}
    assert "data_docs/index.html" in docs

    # the registered version: champion, with metrics, lineage and the dvc.lock hashes it was built from
    version = client.get_model_version_by_alias("rewardflow-scorer", "champion")
    assert str(version.version) == "1"
    tags = version.tags
    assert tags["source_run_id"] == grpo
    assert float(tags["metric.within_1"]) == pytest.approx(report["grpo"]["within_1"])
    assert tags["promotion_decision"] == "promoted" and tags["promotion_reason"].startswith("first model")
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    grpo_out = next(o for o in lock["stages"]["grpo"]["outs"] if o["path"] == "models/grpo")
    assert tags["dvc.models/grpo"] == grpo_out["md5"]
    assert tags["dvc.data"] == yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"]
    assert tags["data_hash"] == parent.data.tags["data_hash"]


def test_prefect_artifacts_show_the_evaluation_and_the_decision(project):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as prefect:
        found = {
            key: prefect.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
            for key in ("evaluation", "promotion")
        }
    table = found["evaluation"][0].data
    assert "| within_1 |" in table and "grpo" in table and "sft" in table
    assert "first model" in found["promotion"][0].data


def test_unchanged_rerun_runs_no_stage_and_registers_nothing(project):
    from flows.pipeline import training_pipeline

    repo, env = project
    started = time.perf_counter()
    summary = training_pipeline()
    assert [status for _, status, _ in summary["stages"]] == ["skipped"] * 5
    assert summary["registration"].startswith("already registered as version 1")
    assert len(_client(repo).search_model_versions("name = 'rewardflow-scorer'")) == 1
    assert time.perf_counter() - started < 60
    stages = _runs(_client(repo), summary["mlflow_run_id"])
    assert stages["grpo"].data.tags["skipped"] == "true"
    assert stages["register"].data.tags["skipped"] == "true"


def test_nothing_changed_is_answered_without_starting_prefect(project):
    """`rewardflow run`'s fast path: every stage current and the checkpoint registered -> the summary, and not even
    an import of Prefect (its temporary server is most of an unchanged re-run's time)."""
    import subprocess
    import sys

    repo, env = project
    code = (
        "import sys; from flows.unchanged import unchanged_summary; s = unchanged_summary(); "
        "print(s['model_version'], [x[1] for x in s['stages']], 'prefect' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.split("\n")[-2] == f"1 {['skipped'] * 5} False", out.stderr


def test_the_summary_shows_the_answers_that_need_no_reading_and_warns(project):
    """`rewardflow run`'s table has the constant answer and the consensus beside SFT and GRPO (eval.json's values),
    and a warning for each checkpoint not past the constant answer (a model trained for 3 steps is not)."""
    repo, env = project
    out = sh(["rewardflow", "run"], repo, env).stdout
    report = json.loads((repo / "reports/eval.json").read_text())
    table = {line.split()[0]: line.split()[1:] for line in out.split("\nheld-out")[1].splitlines()[1:5]}
    assert list(table) == ["sft", "grpo", "constant", "consensus"]
    assert float(table["constant"][2]) == pytest.approx(report["constant"]["within_1"], abs=5e-4)
    from tasks.reading import not_past_constant

    for name in ("sft", "grpo"):
        why = not_past_constant(report[name], report["constant"])
        assert why and f"warning: {name} is {why}" in out


def test_retraining_skips_when_the_data_is_what_the_champion_was_trained_on(project):
    from flows.retrain import retraining_flow

    result = retraining_flow()
    assert "is what version 1 was trained on (promoted)" in result["skipped"]


def test_grpo_param_change_reruns_grpo_and_gates_the_new_version(project):
    """Only grpo and the two evaluations run again; the new version is registered as challenger and compared with
    v1."""
    from flows.pipeline import training_pipeline

    repo, env = project
    set_params(repo, {"grpo": {"temperature": 0.9}})
    from flows.unchanged import unchanged_summary

    assert unchanged_summary() is None  # something changed: the flow must run
    summary = training_pipeline()
    assert [s for _, s, _ in summary["stages"]] == ["skipped", "skipped", "ran", "ran", "ran"]
    client = _client(repo)
    v2 = client.get_model_version("rewardflow-scorer", "2")
    assert str(client.get_model_version_by_alias("rewardflow-scorer", "challenger").version) == "2"
    assert v2.tags["promotion_decision"] in ("promoted", "rejected")
    assert "vs champion v1" in v2.tags["promotion_reason"]
    champion = str(client.get_model_version_by_alias("rewardflow-scorer", "champion").version)
    assert champion == ("2" if v2.tags["promotion_decision"] == "promoted" else "1")
    assert json.loads(sh(["dvc", "status", "--json"], repo, env).stdout) == {}


def test_cli_status_promote_and_rollback(project):
    from prefect.settings import PREFECT_API_URL

    repo, env = project
    env = {**env, "PREFECT_API_URL": PREFECT_API_URL.value()}  # the harness's server, not a new temporary one
    status = sh(["rewardflow", "status"], repo, env).stdout
    assert "champion: version" in status and "challenger: version 2" in status and "metrics: " in status
    sh(["rewardflow", "promote", "--version", "2", "--reason", "test"], repo, env)
    client = _client(repo)
    assert str(client.get_model_version_by_alias("rewardflow-scorer", "champion").version) == "2"
    back = sh(["rewardflow", "rollback"], repo, env)
    assert "v2 -> v1" in back.stdout
    assert str(client.get_model_version_by_alias("rewardflow-scorer", "champion").version) == "1"
    assert client.get_model_version("rewardflow-scorer", "2").tags["rolled_back"] == "true"
    # v1 is now the only champion in the history: nothing left to roll back to, said plainly
    again = sh(["rewardflow", "rollback"], repo, env, check=False)
    assert again.returncode == 1 and "nothing to roll back to" in again.stderr
    missing = sh(["rewardflow", "promote", "--version", "99"], repo, env, check=False)
    assert missing.returncode == 1 and "no version 99" in missing.stderr


def test_bad_data_fails_at_once_and_registers_nothing(project):
    """A row out of range: the data gate refuses it before the data is pinned or anything is tracked: no retries,
    no version, data.dvc as it was, no MLflow run."""
    from flows.pipeline import training_pipeline
    from tasks.validation import ValidationFailed

    repo, env = project
    train = repo / "data" / "train.jsonl"
    lines = train.read_text().splitlines()
    row = json.loads(lines[0])
    row["scores"] = [0, 0, 0, 0]
    lines[0] = json.dumps(row)
    train.write_text("\n".join(lines) + "\n")
    before = len(_client(repo).search_model_versions("name = 'rewardflow-scorer'"))
    pin, runs = (repo / "data.dvc").read_bytes(), _run_count(repo)
    try:
        started = time.perf_counter()
        with pytest.raises(ValidationFailed, match="train.jsonl:1"):
            training_pipeline()
        assert time.perf_counter() - started < 60  # no retries of the failed gate
        assert len(_client(repo).search_model_versions("name = 'rewardflow-scorer'")) == before
        assert (repo / "data.dvc").read_bytes() == pin and _run_count(repo) == runs
    finally:
        sh(["dvc", "checkout", "-q", "--force", "data.dvc"], repo, env)  # the pinned train file back


def _run_count(repo) -> int:
    experiment = _client(repo).get_experiment_by_name("rewardflow")
    return len(_client(repo).search_runs([experiment.experiment_id], max_results=1000)) if experiment else 0


def test_unreachable_tracking_server_fails_fast_and_trains_nothing(project, monkeypatch):
    from flows.pipeline import training_pipeline
    from tasks.tracking import TrackingUnavailable

    repo, env = project
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    set_params(repo, {"sft": {"max_steps": 4}})  # sft would run if the pipeline got that far
    lock = (repo / "dvc.lock").read_text()
    started = time.perf_counter()
    with pytest.raises(TrackingUnavailable, match="unreachable"):
        training_pipeline()
    assert time.perf_counter() - started < 30
    assert (repo / "dvc.lock").read_text() == lock


def test_retraining_deployment_is_served_on_its_cron_schedule(project):
    """The deployment `rewardflow serve` serves, applied to the harness's Prefect server, is the one prefect.yaml
    declares for a work pool: its flow, name and cron schedule; `--cron` replaces the schedule."""
    from prefect.client.orchestration import get_client

    from flows.retrain import deployment

    deployment_id = deployment().apply()
    with get_client(sync_client=True) as prefect:
        served = prefect.read_deployment(deployment_id)
    assert served.name == "scheduled-retraining"
    assert [s.schedule.cron for s in served.schedules] == ["0 3 * * 1"]
    assert served.parameters == {"params_file": "params.yaml", "force": False}
    declared = yaml.safe_load((Path(__file__).resolve().parents[1] / "prefect.yaml").read_text())["deployments"][0]
    assert declared["entrypoint"] == "flows/retrain.py:retraining_flow"
    assert declared["schedules"][0]["cron"] == "0 3 * * 1" and declared["name"] == served.name
    with get_client(sync_client=True) as prefect:
        replaced = prefect.read_deployment(deployment("30 4 * * *").apply())
    assert [s.schedule.cron for s in replaced.schedules] == ["30 4 * * *"]


def test_pipeline_against_a_real_mlflow_server(project, tmp_path, monkeypatch):
    """`mlflow server` on 127.0.0.1 as the tracking server and registry: the pipeline registers the (DVC-current)
    model there, and a fresh process loads the champion from it and predicts scores.

    Slow: an `mlflow server` starts, the pipeline registers through it, and a fresh process loads the champion.
    """
    import subprocess
    import sys

    from flows.pipeline import training_pipeline

    repo, env = project
    sh(["git", "checkout", "-q", "--", "params.yaml"], repo, env)
    with mlflow_server(f"sqlite:///{tmp_path}/server.db", tmp_path / "art") as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        summary = training_pipeline()
        assert summary["model_version"] == "1" and summary["promoted"]
        load = (
            "import mlflow, json; m = mlflow.pyfunc.load_model('models:/rewardflow-scorer@champion'); "
            "print(json.dumps(m.predict(['review : food : superb . service : rude . price : okay . ambience : '"
            "'cold . rate food service price ambience from 1 to 5 :'])))"
        )
        out = subprocess.run(
            [sys.executable, "-c", load],
            cwd=tmp_path,
            env={**env, "MLFLOW_TRACKING_URI": uri},
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert out.returncode == 0, out.stderr
        (scores,) = json.loads(out.stdout.strip().splitlines()[-1])
        assert isinstance(scores, list) and all(isinstance(s, int) for s in scores)


WARM_UP_PROBE = """
import json, sys, threading, urllib.request
from tasks.config import load_params
imports = []
def hook(event, args):
    if event == "import" and threading.current_thread() is not threading.main_thread():
        imports.append([threading.current_thread().name, args[0]])
sys.addaudithook(hook)
from flows.pipeline import warm_up
warm_up(load_params(sys.argv[1]))
from prefect.server.api.server import SubprocessASGIServer
server = SubprocessASGIServer()
health = urllib.request.urlopen(server.api_url + "/health", timeout=10).status
server.stop()
print(json.dumps({"imports": imports, "health": health, "torch": "torch" in sys.modules, "trl": "trl" in sys.modules}))
"""


def test_warm_up_starts_prefect_in_a_thread_that_imports_nothing(tmp_path):
    """warm_up overlaps Prefect's server start with the heavy imports, and only the main thread imports: a
    background thread importing alongside the main one broke sqlalchemy's circular imports on a loaded machine.

    Slow: a fresh Python starts Prefect's temporary server and imports torch and TRL.
    """
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {
        "PREFECT_HOME": str(seed_prefect_home(tmp_path / "prefect")),
        **TELEMETRY_OFF,
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    probe = subprocess.run(
        [sys.executable, "-c", WARM_UP_PROBE, str(root / "params.yaml")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    assert result["health"] == 200  # the server the flow's client will find is up when warm_up returns
    assert result["torch"] and result["trl"]  # the heavy imports happened
    assert [i for i in result["imports"] if i[0].startswith("rewardflow")] == []  # our threads import nothing
    assert (tmp_path / "mlflow.db").exists()  # the MLflow store was created


def test_warm_up_with_a_prefect_server_configured_imports_no_stage_library(tmp_path):
    """With PREFECT_API_URL set there is no server start to overlap: warm_up opens the MLflow store and imports
    none of the stages' libraries (a stage DVC skips never pays for them; validate's Great Expectations alone is
    ~3 s of CPU)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    code = (
        "import sys; from tasks.config import load_params; from flows.pipeline import WARM_UP_IMPORTS, warm_up; "
        "warm_up(load_params(sys.argv[1])); print([m for m in WARM_UP_IMPORTS if m in sys.modules])"
    )
    env = {**os.environ, **TELEMETRY_OFF, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    env["PREFECT_API_URL"] = f"http://127.0.0.1:{free_port()}/api"  # set, and never contacted by warm_up
    probe = subprocess.run(
        [sys.executable, "-c", code, str(root / "params.yaml")], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert probe.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "mlflow.db").exists()  # the MLflow store was opened (created)
