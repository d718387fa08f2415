"""Extending the pipeline is a local change: a reward component is its function and its weight in params.yaml, a
stage is its function, its dvc.yaml entry and its row in the stage table. Here both come from this test alone (the
component registry and the stage table patched, params.yaml and dvc.yaml of a temporary project edited) and the
CLI, the flow, GRPO's statistics, the dead-component monitor, DVC and MLflow pick them up with no other change."""

import json
import os
from pathlib import Path

import pytest
import yaml
from project import ROOT, make_repo, set_params, sh

from tasks import dvcfile
from tasks.rewards import COMPONENTS, Component, RewardConfig, combined_reward, score_completion, structural_ok
from tasks.stages import STAGES, Stage

TOY_WEIGHT = 0.1


def _first_item(predictions, ground_truth, _text, _config) -> float:
    """The toy component: 1 when the first item is right (0 on a structural failure, as every component)."""
    return float(structural_ok(predictions, ground_truth) and predictions[0] == ground_truth[0])


def _never(predictions, ground_truth, _text, _config) -> float:
    """The toy component as trained: always 0, so the dead-component monitor must name it."""
    return 0.0


def run_gain(p) -> dict:
    """The toy stage: how much GRPO moved within_1 over SFT on the held-out set -> reports/gain.json."""
    reports = Path(p.paths.reports_dir)
    evaluation = json.loads((reports / "eval.json").read_text())
    gain = {"within_1_gain": evaluation["grpo"]["within_1"] - evaluation["sft"]["within_1"]}
    (reports / "gain.json").write_text(json.dumps(gain))
    return gain


GAIN_STAGE = {
    "cmd": "rewardflow gain",
    "deps": ["${paths.reports_dir}/eval.json"],
    "params": ["seed"],
    "metrics": ["${paths.reports_dir}/gain.json"],
}


def test_a_component_is_its_function_and_its_weight(monkeypatch):
    """Without training: the registry entry alone puts the component in the combined reward and the scores, and
    its weight becomes required."""
    monkeypatch.setitem(COMPONENTS, "toy", Component("toy", _first_item, TOY_WEIGHT))
    with pytest.raises(ValueError, match="weights.toy is missing"):
        RewardConfig(weights={"item_accuracy": 0.3, "off_by_1": 0.3, "mae": 0.25, "format": 0.15})
    weights = {"item_accuracy": 0.3, "off_by_1": 0.3, "mae": 0.25, "format": 0.15}
    without = combined_reward([3, 4, 2, 5], [3, 4, 3, 5], "3 4 2 5", RewardConfig(weights={**weights, "toy": 0.0}))
    config = RewardConfig(weights={**weights, "toy": TOY_WEIGHT})
    assert combined_reward([3, 4, 2, 5], [3, 4, 3, 5], "3 4 2 5", config) == pytest.approx(without + TOY_WEIGHT)
    assert score_completion("3 4 2 5", [3, 4, 3, 5], config)["toy"] == 1.0
    assert score_completion("4 4 3 5", [3, 4, 3, 5], config)["toy"] == 0.0


@pytest.fixture
def extended(tmp_path, monkeypatch):
    """A temporary project whose params.yaml weighs the toy component and whose dvc.yaml declares the toy stage,
    with the registry and the table patched to match, as the working directory."""
    from prefect.testing.utilities import prefect_test_harness

    repo, env = make_repo(tmp_path / "repo")
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["reward"]["weights"]["toy"] = TOY_WEIGHT
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    set_params(repo, {"grpo": {"dead_window": 2}})
    dvc = yaml.safe_load((repo / "dvc.yaml").read_text())
    dvc["stages"]["gain"] = GAIN_STAGE
    (repo / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    sh(["git", "commit", "-qam", "toy component and stage"], repo, env)

    monkeypatch.setitem(COMPONENTS, "toy", Component("toy", _never, TOY_WEIGHT))
    monkeypatch.setitem(STAGES, "gain", Stage("gain", run_gain, "Stage gain: within_1 of GRPO over SFT."))
    monkeypatch.setattr(dvcfile, "DVC_FILE", repo / "dvc.yaml")
    # the default local store; set (not deleted) so that teardown also removes what mlflow.set_tracking_uri and
    # set_registry_uri put into os.environ during the run
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(var, f"sqlite:///{repo / 'mlflow.db'}")
    monkeypatch.chdir(repo)
    with prefect_test_harness(server_startup_timeout=180):
        yield repo, env


@pytest.mark.slow
def test_the_cli_the_flow_the_statistics_and_mlflow_pick_them_up(extended):
    import mlflow
    from typer.testing import CliRunner

    from flows.cli import app
    from flows.pipeline import training_pipeline

    repo, env = extended
    summary = training_pipeline()

    # the flow runs the new stage after the others, and DVC records it: nothing is left for `dvc repro`
    assert [(name, status) for name, status, _ in summary["stages"]] == [
        ("validate", "ran"),
        ("sft", "ran"),
        ("grpo", "ran"),
        ("evaluate", "ran"),
        ("validation_eval", "ran"),
        ("gain", "ran"),
    ]
    assert json.loads(sh(["dvc", "status", "--json"], repo, env).stdout) == {}
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert lock["gain"]["params"]["params.yaml"] == {"seed": yaml.safe_load((repo / "params.yaml").read_text())["seed"]}
    evaluation = json.loads((repo / "reports/eval.json").read_text())
    gain = json.loads((repo / "reports/gain.json").read_text())["within_1_gain"]
    assert gain == pytest.approx(evaluation["grpo"]["within_1"] - evaluation["sft"]["within_1"])

    # GRPO's statistics, its log, the plot's records and the dead-component monitor carry the component
    logs = json.loads((repo / "reports/grpo_logs.json").read_text())
    assert [entry["reward_stats/toy/mean"] for entry in logs["logs"] if "reward_stats/toy/mean" in entry] == [0, 0]
    assert set(logs["dead_components"]) == {"toy"}
    records = json.loads((repo / "reports/grpo_reward_components.json").read_text())
    assert {r["component"] for r in records} == {*COMPONENTS, "combined"} and "toy" in COMPONENTS

    # MLflow: TRL's per-function mean, GRPO's statistics and the dead tag; a nested run for the new stage with the
    # numbers of its dvc.yaml metrics file and the file as an artifact
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri, uri)
    parent = client.get_run(summary["mlflow_run_id"])
    runs = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    stages = {r.info.run_name: r for r in runs}
    assert set(stages) == {"validate", "sft", "grpo", "evaluate", "validation_eval", "gain", "register"}
    grpo = stages["grpo"]
    assert [m.value for m in client.get_metric_history(grpo.info.run_id, "rewards/toy/mean")] == [0.0, 0.0]
    assert [m.value for m in client.get_metric_history(grpo.info.run_id, "reward_stats/toy/mean")] == [0.0, 0.0]
    assert grpo.data.tags["dead_components"] == "toy"
    assert float(parent.data.params["reward.weights.toy"]) == TOY_WEIGHT
    assert stages["gain"].info.status == "FINISHED"
    assert stages["gain"].data.metrics["within_1_gain"] == pytest.approx(gain)
    assert [a.path for a in client.list_artifacts(stages["gain"].info.run_id)] == ["gain.json"]

    # the CLI: `rewardflow gain` is listed and runs the stage
    runner = CliRunner()
    assert "Stage gain: within_1 of GRPO over SFT." in runner.invoke(app, ["--help"]).output
    os.remove(repo / "reports/gain.json")
    result = runner.invoke(app, ["gain"])
    assert result.exit_code == 0, result.output
    assert json.loads((repo / "reports/gain.json").read_text())["within_1_gain"] == pytest.approx(gain)


def test_the_readme_names_every_module_once():
    """README's "How the code is laid out" has one line per module of tasks/ and flows/, and no line for a module
    that is gone."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## How the code is laid out", 1)[1].split("\n## ", 1)[0]
    listed = [line.split("`")[1] for line in section.splitlines() if line.startswith("| `")]
    modules = [
        f"{path.parent.name}/{path.name}"
        for folder in ("tasks", "flows")
        for path in sorted((ROOT / folder).glob("*.py"))
        if path.name != "__init__.py"
    ]
    assert sorted(m for m in listed if m.endswith(".py")) == sorted(modules)
