"""The MLflow registry for real: a SQLite store in a temporary folder, a tiny trained scorer, the promotion gate,
rollback, and the champion loaded in a fresh process and served by `mlflow models serve`."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient
from project import VENV_BIN, free_port, tiny_params, use_store

from tasks.config import RegisterConfig
from tasks.data import generate_rows
from tasks.metric_table import PROMOTABLE
from tasks.promotion import (
    Decision,
    apply_decision,
    decide_promotion,
    promote,
    register_and_gate,
    register_challenger,
    rollback,
)
from tasks.registry import champion_metrics, decided, registry_status, version_metrics, versions_tagged
from tasks.scorer_package import ScorePredictor, log_score_model, pip_requirements

ROOT = Path(__file__).resolve().parents[1]
# On the tiny model (tests/project.py TINY), just enough SFT (a few seconds) that greedy decoding emits n_items
# integers.
SFT = [
    "sft.max_steps=80",
    "sft.batch_size=8",
    "sft.learning_rate=0.005",
    "sft.logging_steps=40",
]
BATCH_SIZE, MAX_NEW_TOKENS = 8, 8
LINEAGE = {"data_hash": "d" * 8, "params_hash": "p" * 8, "git_commit": "c" * 8, "heldout_hash": "h" * 8}


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    """One tiny SFT model, logged once as a pyfunc scorer in a module-wide SQLite store."""
    from tasks.evaluation import generate_greedy
    from tasks.modeling import load_pretrained
    from tasks.rewards import parse_scores
    from tasks.training import run_sft

    tmp = tmp_path_factory.mktemp("registry")
    p = tiny_params(tmp, *SFT)
    model_dir = run_sft(p)["model_dir"]
    # two prompts neither split contains: modifiers in, which the splits' task has none of
    prompts = [r["prompt"] for r in generate_rows(2, 12345, replace(p.task, modifier_rate=0.4))]
    model, tokenizer = load_pretrained(model_dir)
    expected = [parse_scores(t) for t in generate_greedy(model, tokenizer, prompts, BATCH_SIZE, MAX_NEW_TOKENS)]

    uri = f"sqlite:///{tmp}/mlflow.db"
    with use_store(uri):
        # an explicit artifact location: the default experiment would write ./mlruns into the working directory
        experiment_id = mlflow.create_experiment("registry-tests", artifact_location=(tmp / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment_id) as run:
            started = time.monotonic()
            info = log_score_model(model_dir, batch_size=BATCH_SIZE, max_new_tokens=MAX_NEW_TOKENS)
            log_seconds = time.monotonic() - started
    return SimpleNamespace(
        uri=uri,
        experiment_id=experiment_id,
        model_uri=info.model_uri,
        run_id=run.info.run_id,
        n_items=p.task.n_items,
        prompts=prompts,
        expected=expected,
        log_seconds=log_seconds,
    )


@pytest.fixture
def client(scorer):
    """A client on the module's store, with MLflow's global URIs restored after the test."""
    with use_store(scorer.uri):
        yield MlflowClient(scorer.uri, scorer.uri)


@pytest.fixture
def name(request):
    """A registered model name of this test's own, so tests sharing the store never see each other's versions."""
    return "scorer-" + re.sub(r"[^A-Za-z0-9_.-]", "-", request.node.name)[:80]


def register(client, scorer, name, **metrics):
    """Register the scorer as a new version from a fresh run, with eval metrics and lineage as tags."""
    run_id = client.create_run(scorer.experiment_id).info.run_id
    tags = {**LINEAGE, **{f"metric.{k}": str(v) for k, v in metrics.items()}}
    version, created = register_challenger(client, name, scorer.model_uri, run_id, tags)
    assert created
    return str(version.version)


def gate(client, name, version, cfg):
    """What the pipeline does after registering: compare with the champion and apply the decision."""
    champion_version, champion, _tags = champion_metrics(client, name)
    challenger = version_metrics(client.get_model_version(name, version).tags)
    decision = decide_promotion(challenger, champion, cfg, champion_version)
    apply_decision(client, name, version, decision)
    return decision


def aliases(client, name):
    return {alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()}


def tags_of(client, name, version):
    return client.get_model_version(name, version).tags


CFG = RegisterConfig(
    model_name="rewardflow-scorer", primary_metric="within_1", min_improvement=0.005, require_reading=True
)


# --- the gate as a pure function ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "metric, margin, challenger, champion, promote_it, reason",
    [
        # first model: nothing to beat
        ("within_1", 0.005, 0.5, None, True, "first model: no champion yet (within_1 0.5000)"),
        # better by more than the margin
        (
            "within_1",
            0.005,
            0.812,
            0.790,
            True,
            "within_1 0.8120 vs champion v3 0.7900: improvement +0.0220 >= min_improvement 0.005",
        ),
        # better by exactly the margin: 0.795 - 0.790 is 0.00499999... in floats, and still counts
        (
            "within_1",
            0.005,
            0.795,
            0.790,
            True,
            "within_1 0.7950 vs champion v3 0.7900: improvement +0.0050 >= min_improvement 0.005",
        ),
        # better by less than the margin: rejected
        (
            "within_1",
            0.005,
            0.793,
            0.790,
            False,
            "within_1 0.7930 vs champion v3 0.7900: improvement +0.0030 < min_improvement 0.005; champion kept",
        ),
        # worse: rejected
        (
            "within_1",
            0.005,
            0.700,
            0.790,
            False,
            "within_1 0.7000 vs champion v3 0.7900: improvement -0.0900, not better than the champion; champion kept",
        ),
        # equal, even with no margin at all: rejected
        (
            "within_1",
            0.0,
            0.790,
            0.790,
            False,
            "within_1 0.7900 vs champion v3 0.7900: improvement +0.0000, not better than the champion; champion kept",
        ),
        # lower is better (mae): a lower error wins
        (
            "mae",
            0.005,
            0.400,
            0.500,
            True,
            "mae 0.4000 vs champion v3 0.5000 (lower is better): improvement +0.1000 >= min_improvement 0.005",
        ),
        # lower is better (mae): a higher error loses
        (
            "mae",
            0.005,
            0.600,
            0.500,
            False,
            "mae 0.6000 vs champion v3 0.5000 (lower is better): improvement -0.1000, not better than the champion; "
            "champion kept",
        ),
    ],
)
def test_decide_promotion(metric, margin, challenger, champion, promote_it, reason):
    cfg = RegisterConfig(model_name="m", primary_metric=metric, min_improvement=margin, require_reading=True)
    champion_metrics = None if champion is None else {metric: champion, "n": 16}
    version = None if champion is None else "3"
    decision = decide_promotion({metric: challenger, "n": 16}, champion_metrics, cfg, version)
    assert decision == Decision(promote_it, reason, metric, challenger, champion, version)


@settings(max_examples=3000, deadline=None)
@given(
    metric=st.sampled_from(PROMOTABLE),
    champion=st.floats(0.0, 4.0),
    # the challenger: the champion's value moved by a delta that often lands within a hair of the margin
    delta=st.one_of(st.floats(-1.0, 1.0), st.sampled_from([0.0, 0.005, -0.005, 0.0049999, 0.0050001, 1e-12])),
    margin=st.one_of(st.floats(0.0, 0.2), st.just(0.005), st.just(0.0)),
)
def test_gate_never_promotes_a_worse_or_equal_challenger(metric, champion, delta, margin):
    """Over random metric pairs: a challenger that is worse, equal, or better by less than min_improvement stays
    challenger; one better by clearly more than the margin is promoted. `delta` is the improvement in the metric's
    own direction (mae and structural_failure_rate: lower is better)."""
    cfg = RegisterConfig(model_name="m", primary_metric=metric, min_improvement=margin, require_reading=True)
    challenger = champion + delta if cfg.higher_is_better else champion - delta
    decision = decide_promotion({metric: challenger}, {metric: champion}, cfg, "1")
    improvement = (challenger - champion) if cfg.higher_is_better else (champion - challenger)
    if improvement <= 0 or improvement < margin - 1e-9:
        assert not decision.promote, decision.reason
    if improvement > 0 and improvement >= margin + 1e-9:
        assert decision.promote, decision.reason
    assert decision.reason.endswith("champion kept") != decision.promote


def test_decide_promotion_needs_the_metric():
    # the challenger was evaluated without the primary metric: no decision can be made
    with pytest.raises(ValueError, match="challenger has no within_1 metric"):
        decide_promotion({"mae": 0.3}, {"within_1": 0.8}, CFG, "1")
    # nor when the champion lacks it: never promote blindly
    with pytest.raises(ValueError, match="champion v1 has no recorded within_1"):
        decide_promotion({"within_1": 0.9}, {"mae": 0.3}, CFG, "1")


# --- the gate on a real registry ----------------------------------------------------------------------


def test_first_model_becomes_champion(client, scorer, name):
    v1 = register(client, scorer, name, within_1=0.5, mae=1.2)
    assert aliases(client, name) == {"challenger": v1}
    assert champion_metrics(client, name) == (None, None, {})

    decision = gate(client, name, v1, CFG)
    assert decision.promote and decision.champion_version is None
    assert aliases(client, name) == {"challenger": v1, "champion": v1}
    tags = tags_of(client, name, v1)
    assert tags["promotion_decision"] == "promoted"
    assert tags["promotion_reason"] == tags["promoted_reason"] == "first model: no champion yet (within_1 0.5000)"
    assert tags["champion_metric_value"] == "none"

    status = registry_status(client, name)
    assert status["champion_history"] == [v1]
    champion = status["champion"]
    assert champion["version"] == v1 and champion["run_id"] == tags["source_run_id"]
    assert champion["metrics"] == {"within_1": 0.5, "mae": 1.2}
    assert champion["lineage"] == {**LINEAGE, "source_run_id": tags["source_run_id"]}
    assert champion["created"].endswith("+00:00")
    assert status["challenger"]["version"] == v1


def test_better_model_is_promoted(client, scorer, name):
    v1 = register(client, scorer, name, within_1=0.790)
    gate(client, name, v1, CFG)
    v2 = register(client, scorer, name, within_1=0.812)

    decision = gate(client, name, v2, CFG)
    assert decision.promote and decision.champion_version == v1
    assert aliases(client, name) == {"challenger": v2, "champion": v2}
    tags = tags_of(client, name, v2)
    assert tags["promotion_decision"] == "promoted"
    assert tags["promotion_reason"] == (
        f"within_1 0.8120 vs champion v{v1} 0.7900: improvement +0.0220 >= min_improvement 0.005"
    )
    assert tags["promoted_reason"] == tags["promotion_reason"]
    assert float(tags["champion_metric_value"]) == 0.790
    assert registry_status(client, name)["champion_history"] == [v1, v2]


def test_model_not_better_by_the_margin_stays_challenger(client, scorer, name):
    v1 = register(client, scorer, name, within_1=0.790)
    gate(client, name, v1, CFG)
    v2 = register(client, scorer, name, within_1=0.793)

    decision = gate(client, name, v2, CFG)
    assert not decision.promote
    assert aliases(client, name) == {"challenger": v2, "champion": v1}
    tags = tags_of(client, name, v2)
    assert tags["promotion_decision"] == "rejected"
    assert tags["promotion_reason"] == (
        f"within_1 0.7930 vs champion v{v1} 0.7900: improvement +0.0030 < min_improvement 0.005; champion kept"
    )
    assert "promoted_reason" not in tags
    status = registry_status(client, name)
    assert status["champion"]["version"] == v1 and status["challenger"]["version"] == v2
    assert status["champion_history"] == [v1]


CONSTANT = {"within_1": 0.712, "mae": 1.039}


@pytest.mark.parametrize("has_champion", [False, True])
def test_the_gate_refuses_a_model_not_past_the_constant_answer(client, scorer, name, has_champion):
    """register.require_reading: a challenger that does not beat the constant answer on within_1 and MAE is never
    promoted, first model or better than the champion; off, the champion comparison alone decides."""
    if has_champion:
        v1 = register(client, scorer, name, within_1=0.60, mae=1.30)
        gate(client, name, v1, replace(CFG, require_reading=False))
    run_id = client.create_run(scorer.experiment_id).info.run_id
    ignores = {"within_1": 0.709, "mae": 1.021, "answer_diversity": 0.02, "label_correlation": 0.05}
    version, decision, _ = register_and_gate(
        client, name, run_id, scorer.model_uri, dict(LINEAGE), ignores, CFG, None, CONSTANT
    )
    assert not decision.promote
    assert decision.reason == (
        "the challenger is not past the constant answer (within_1 0.709 vs 0.712; answer diversity 0.020, label "
        "correlation 0.050): its answers do not depend on the prompt enough to beat answering each item's median "
        f"everywhere; {'champion kept' if has_champion else 'no champion'} (register.require_reading)"
    )
    assert tags_of(client, name, version)["promotion_decision"] == "rejected"
    assert aliases(client, name) == {"challenger": version, **({"champion": v1} if has_champion else {})}

    reads = {**ignores, "within_1": 0.80, "mae": 0.90}
    assert decide_promotion(reads, None, CFG, None, CONSTANT).promote
    off = decide_promotion(ignores, None, replace(CFG, require_reading=False), None, CONSTANT)
    assert off.promote and off.reason == "first model: no champion yet (within_1 0.7090)"


def test_rollback_returns_to_the_previous_champion(client, scorer, name):
    v1 = register(client, scorer, name, within_1=0.7)
    gate(client, name, v1, CFG)
    v2 = register(client, scorer, name, within_1=0.8)
    gate(client, name, v2, CFG)

    assert rollback(client, name, reason="bad answers in production") == (v2, v1)
    assert aliases(client, name)["champion"] == v1
    tags = tags_of(client, name, v2)
    assert tags["rolled_back"] == "true" and tags["rollback_reason"] == "bad answers in production"
    assert registry_status(client, name)["champion_history"] == [v1]
    # v1 is the only champion left
    with pytest.raises(ValueError, match=f"nothing to roll back to: version {v1} is the only champion so far"):
        rollback(client, name)
    assert aliases(client, name)["champion"] == v1


def test_rollback_without_a_previous_champion_fails(client, scorer, name):
    v1 = register(client, scorer, name, within_1=0.7)
    with pytest.raises(ValueError, match="has no champion: nothing to roll back"):
        rollback(client, name)
    gate(client, name, v1, CFG)
    with pytest.raises(ValueError, match=f"nothing to roll back to: version {v1} is the only champion so far"):
        rollback(client, name)


def test_promote_by_hand(client, scorer, name):
    v1 = register(client, scorer, name, within_1=0.7)
    v2 = register(client, scorer, name, within_1=0.6)
    with pytest.raises(ValueError, match=rf"{name} has no version 7 \(versions: {v1}, {v2}\)"):
        promote(client, name, "7", "typo")
    assert promote(client, name, v2, "operator's choice") is None
    assert promote(client, name, v1, "back to v1") == v2
    # promoting the champion again changes nothing
    assert promote(client, name, v1, "again") == v1
    assert registry_status(client, name)["champion_history"] == [v2, v1]
    assert tags_of(client, name, v1)["promoted_reason"] == "back to v1"


def test_register_challenger_is_idempotent(client, scorer, name):
    run_id = client.create_run(scorer.experiment_id).info.run_id
    first, created = register_challenger(client, name, scorer.model_uri, run_id, {"metric.within_1": "0.5"})
    again, created_again = register_challenger(client, name, scorer.model_uri, run_id, {"metric.within_1": "0.5"})
    assert (created, created_again) == (True, False)
    assert again.version == first.version
    assert [v.version for v in client.search_model_versions(f"name='{name}'")] == [first.version]
    assert first.tags["source_run_id"] == run_id and first.status == "READY"
    # another run is another version, and takes the challenger alias
    v2 = register(client, scorer, name, within_1=0.6)
    assert aliases(client, name) == {"challenger": v2}


def test_a_checkpoint_is_found_by_its_training_run_or_its_content(client, scorer, name):
    """One answer to "is this checkpoint registered?": versions_tagged finds it by its training run (the register
    step) or by its dvc.lock md5 (`rewardflow run`'s fast path), oldest first; decided is true only once the gate's
    final decision is recorded."""
    assert versions_tagged(client, name, "source_run_id", "no-such-run") == []  # no registered model yet
    v1 = register(client, scorer, name, within_1=0.5)
    v2 = register(client, scorer, name, within_1=0.6)
    for version in (v2, v1):
        client.set_model_version_tag(name, version, "dvc.models/grpo", "0123abcd")
    assert [str(v.version) for v in versions_tagged(client, name, "dvc.models/grpo", "0123abcd")] == [v1, v2]
    assert versions_tagged(client, name, "dvc.models/grpo", "other") == []
    run_of_v2 = tags_of(client, name, v2)["source_run_id"]
    assert [str(v.version) for v in versions_tagged(client, name, "source_run_id", run_of_v2)] == [v2]

    assert not decided(client.get_model_version(name, v1))
    gate(client, name, v1, CFG)
    assert decided(client.get_model_version(name, v1)) and not decided(client.get_model_version(name, v2))
    gate(client, name, v2, CFG)
    assert decided(client.get_model_version(name, v2))


def test_status_of_a_missing_model_says_what_to_do(client):
    with pytest.raises(LookupError, match="no registered model 'nope'.*run the pipeline first"):
        registry_status(client, "nope")
    assert champion_metrics(client, "nope") == (None, None, {})


# --- the logged model ---------------------------------------------------------------------------------


def test_logged_model_is_self_contained(client, scorer):
    local = Path(mlflow.artifacts.download_artifacts(scorer.model_uri))
    requirements = (local / "requirements.txt").read_text().split()
    assert set(pip_requirements()) <= set(requirements)
    assert f"mlflow=={mlflow.__version__}" in requirements
    assert all("+" not in r for r in requirements)  # no local build tags such as torch's +cpu
    assert (local / "code" / "tasks" / "registry.py").is_file()
    # models-from-code: the predictor is the logged file, not a pickle; nothing but source names the class
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["model_code_path"].endswith("scorer_model.py") and "python_model" not in flavor
    assert (local / "scorer_model.py").read_text() == (ROOT / "tasks" / "scorer_model.py").read_text()
    naming = [f.relative_to(local) for f in local.rglob("*") if f.is_file() and b"ScorePredictor" in f.read_bytes()]
    assert naming and all(f.suffix == ".py" for f in naming), naming
    assert not [f for f in local.rglob("*") if f.suffix in (".pkl", ".pickle")]
    # the checkpoint sits at artifacts/model whatever its folder was called (here: sft)
    assert {f.name for f in (local / "artifacts" / "model").iterdir()} >= {"config.json", "model.safetensors"}
    model = mlflow.pyfunc.load_model(scorer.model_uri)
    assert model.metadata.signature.inputs.to_dict() == [{"type": "string", "required": True}]
    assert model.model_config == {"batch_size": BATCH_SIZE, "max_new_tokens": MAX_NEW_TOKENS}
    # every input shape a caller may use gives the same scores
    for data in (scorer.prompts, pd.DataFrame({"prompt": scorer.prompts}), pd.Series(scorer.prompts)):
        assert model.predict(data) == scorer.expected
    assert scorer.log_seconds < 60


def test_versions_logged_as_a_pickle_still_load(client, scorer, monkeypatch):
    """Versions logged as a cloudpickle name the predictor tasks.registry.ScorePredictor (logged here the way they
    were, the class under that name): they still load and score."""
    monkeypatch.setattr(ScorePredictor, "__module__", "tasks.registry")
    checkpoint = Path(mlflow.artifacts.download_artifacts(scorer.model_uri)) / "artifacts" / "model"
    with mlflow.start_run(experiment_id=scorer.experiment_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=ScorePredictor(),
            artifacts={"model": str(checkpoint)},
            code_paths=[str(ROOT / "tasks")],
            model_config={"batch_size": BATCH_SIZE, "max_new_tokens": MAX_NEW_TOKENS},
            pip_requirements=pip_requirements(),
        )
    pickled = Path(mlflow.artifacts.download_artifacts(info.model_uri)) / "python_model.pkl"
    assert b"tasks.registry" in pickled.read_bytes() and b"tasks.scorer_package" not in pickled.read_bytes()
    monkeypatch.undo()
    assert mlflow.pyfunc.load_model(info.model_uri).predict(scorer.prompts) == scorer.expected


def test_the_predictor_keeps_its_registered_name():
    """A pickle that names tasks.registry.ScorePredictor (every version logged as a pickle) finds the class."""
    import pickle

    assert pickle.loads(b"ctasks.registry\nScorePredictor\n.") is ScorePredictor


def _promoted_champion(client, scorer, name):
    version = register(client, scorer, name, within_1=0.5)
    gate(client, name, version, CFG)
    return version


def _check_predictions(predictions, scorer):
    assert len(predictions) == 2
    for scores in predictions:
        assert isinstance(scores, list) and len(scores) == scorer.n_items
        assert all(type(s) is int for s in scores)
    assert predictions == scorer.expected


def _subprocess_env(scorer):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_REGISTRY_URI")}
    # `mlflow models serve --env-manager local` execs `uvicorn` by name: the venv's bin must be on PATH
    env.update(MLFLOW_TRACKING_URI=scorer.uri, PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}")
    return env


@pytest.mark.slow
def test_champion_loads_in_a_fresh_process(client, scorer, name, tmp_path):
    _promoted_champion(client, scorer, name)
    script = (
        "import json, sys, mlflow\n"
        f"model = mlflow.pyfunc.load_model('models:/{name}@champion')\n"
        "prompts = json.loads(sys.argv[1])\n"
        "print(json.dumps({'predictions': model.predict(prompts), 'tasks': sys.modules['tasks'].__file__}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, json.dumps(scorer.prompts)],
        cwd=tmp_path,
        env=_subprocess_env(scorer),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    _check_predictions(result["predictions"], scorer)
    # the package came from the model's code_paths, not from the (editable-installed) project
    tasks_dir = Path(result["tasks"]).parent
    assert tasks_dir.parent.name == "code" and not tasks_dir.is_relative_to(ROOT), result["tasks"]


def _post(url, payload):
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_champion_is_served_by_mlflow_models_serve(client, scorer, name, tmp_path):
    _promoted_champion(client, scorer, name)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_file = tmp_path / "serve.log"
    command = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", f"models:/{name}@champion"]
    command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    with open(log_file, "w") as log:
        # a session of its own: the server's uvicorn child is stopped with it
        server = subprocess.Popen(
            command, cwd=tmp_path, env=_subprocess_env(scorer), stdout=log, stderr=log, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 90
        while True:
            if server.poll() is not None:
                pytest.fail(f"mlflow models serve exited {server.returncode}:\n{log_file.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow models serve not ready after 90 s:\n{log_file.read_text()[-4000:]}")
            time.sleep(0.25)
        _check_predictions(_post(f"{base}/invocations", {"inputs": scorer.prompts})["predictions"], scorer)
        split = {"dataframe_split": {"columns": ["prompt"], "data": [[p] for p in scorer.prompts]}}
        _check_predictions(_post(f"{base}/invocations", split)["predictions"], scorer)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
