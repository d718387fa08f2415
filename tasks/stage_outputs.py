"""What MLflow records of a stage's outputs, read from its files after it ran (so the stages stay free of MLflow and
a `dvc repro` run logs nothing).

Every stage gets the same, from what dvc.yaml declares for it: the numbers of its `metrics:` files as metrics (nested
keys joined with dots, booleans as 0/1, a list as its length), and each of its outputs under paths.reports_dir as an
artifact (a folder under its own name). A stage's table entry (tasks/stages.py) adds what is particular to it: the
loggers below.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tasks import dvcfile
from tasks.config import Params
from tasks.tracking import log_metrics, log_step_metrics

log = logging.getLogger(__name__)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def metric_values(tree: Any, prefix: str = "") -> dict[str, float]:
    """The numbers of a metrics file as MLflow metrics: nested keys joined with dots, booleans as 0/1, a list as
    its length.

    >>> metric_values({"passed": True, "warnings": [{"check": "x"}], "grpo": {"mae": 0.5, "n": 16}})
    {'passed': 1.0, 'warnings': 1.0, 'grpo.mae': 0.5, 'grpo.n': 16.0}
    """
    if isinstance(tree, Mapping):
        out: dict[str, float] = {}
        for key, value in tree.items():
            out.update(metric_values(value, f"{prefix}{key}."))
        return out
    name = prefix.rstrip(".")
    if isinstance(tree, bool | int | float):
        return {name: float(tree)}
    if isinstance(tree, list):
        return {name: float(len(tree))}
    return {}


def reports(p: Params, stage: str) -> list[Path]:
    """The stage's declared outputs, metrics and plots under paths.reports_dir, as dvc.yaml lists them."""
    root = Path(p.paths.reports_dir)
    found = [f for kind in ("outs", "metrics", "plots") for f in dvcfile.declared_paths(p, stage, kind)]
    return [f for f in dict.fromkeys(found) if f.is_relative_to(root)]


def log_stage_outputs(client: Any, run_id: str, stage: Any, p: Params) -> None:
    """What MLflow records of a finished stage (a tasks.stages.Stage): its metrics files' numbers (named with the
    stage's metrics_prefix), its reports as artifacts, then whatever its table entry adds."""
    for path in dvcfile.declared_paths(p, stage.name, "metrics"):
        values = metric_values(_read_json(path) or {}, stage.metrics_prefix)
        if values:
            log_metrics(client, run_id, values)
    for path in reports(p, stage.name):
        if path.is_dir():
            client.log_artifacts(run_id, str(path), path.name)
        elif path.is_file():
            client.log_artifact(run_id, str(path))
    for logger in stage.log_extra:
        logger(client, run_id, stage.name, p)


# --- what particular stages add ---------------------------------------------------------------------------------


def log_training(client: Any, run_id: str, stage: str, p: Params) -> None:
    """A trainer's log (reports/<stage>_logs.json): every entry as per-step metrics, the summary as metrics, and
    the dead reward components as a tag."""
    logs = _read_json(Path(p.paths.reports_dir) / f"{stage}_logs.json") or {}
    n = log_step_metrics(client, run_id, logs.get("logs", []))
    log_metrics(client, run_id, {f"summary.{k}": v for k, v in logs.get("summary", {}).items() if v is not None})
    dead = logs.get("dead_components") or {}
    client.set_tag(run_id, "dead_components", ", ".join(sorted(dead)) or "none")
    log.info("mlflow: %d %s metric points logged", n, stage)


def log_reward_components(client: Any, run_id: str, stage: str, p: Params) -> None:
    """GRPO's per-component reward means (the stage's dvc.yaml plot) as a figure."""
    for path in dvcfile.declared_paths(p, stage, "plots"):
        records = _read_json(path) or []
        if records:
            client.log_figure(run_id, reward_components_figure(records), "plots/reward_components.png")


def log_score_heatmap(client: Any, run_id: str, stage: str, p: Params) -> None:
    """Held-out predicted vs true scores of the GRPO model as a figure."""
    grpo = Path(p.paths.reports_dir) / "predictions_grpo.jsonl"
    if grpo.is_file():
        from tasks.data import read_jsonl

        figure = score_heatmap(read_jsonl(grpo), p.task.min_score, p.task.max_score)
        client.log_figure(run_id, figure, "plots/heldout_score_heatmap.png")


# --- plots ------------------------------------------------------------------------------------------------------


def reward_components_figure(records: list[dict[str, Any]]) -> Any:
    """Mean of every reward component per GRPO logging step (the article's per-component view), from records
    {step, component, mean}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name in dict.fromkeys(r["component"] for r in records):
        points = [(r["step"], r["mean"]) for r in records if r["component"] == name]
        ax.plot([step for step, _ in points], [mean for _, mean in points], label=name)
    ax.set(xlabel="GRPO step", ylabel="mean reward", title="GRPO reward components")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    plt.close(fig)
    return fig


def score_heatmap(records: list[dict[str, Any]], min_score: int, max_score: int) -> Any:
    """Held-out predicted vs true score, counted per item; structurally failed answers are left out (and counted
    in the title)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    size = max_score - min_score + 1
    counts = np.zeros((size, size), dtype=int)
    failed = 0
    for r in records:
        if r.get("structural_failure"):
            failed += 1
            continue
        for pred, true in zip(r["prediction"], r["scores"], strict=True):
            if min_score <= pred <= max_score:
                counts[true - min_score, pred - min_score] += 1
    fig, ax = plt.subplots(figsize=(5, 4.5))
    image = ax.imshow(counts, cmap="Blues")
    ticks = range(size)
    labels = [str(min_score + i) for i in ticks]
    ax.set(xticks=ticks, yticks=ticks, xticklabels=labels, yticklabels=labels, xlabel="predicted", ylabel="true")
    ax.set_title(f"held-out scores, GRPO model ({failed} of {len(records)} answers unparseable)", fontsize="small")
    for (i, j), n in np.ndenumerate(counts):
        ax.text(j, i, str(n), ha="center", va="center", fontsize="x-small")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    plt.close(fig)
    return fig
