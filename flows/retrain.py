"""Scheduled retraining: run the pipeline when the data changed since the champion was trained.

`rewardflow serve --cron "0 3 * * 1"` serves this flow (it needs a running Prefect server: `prefect server
start`); prefect.yaml declares the same deployment for a work pool.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.pipeline import training_pipeline
from tasks import registry, tracking
from tasks.config import Params, load_params

DEPLOYMENT_NAME = "scheduled-retraining"
DEFAULT_CRON = "0 3 * * 1"


def nothing_new(p: Params) -> str | None:
    """Why retraining would be pointless (the champion was trained on exactly these data files), or None."""
    version, _, tags = registry.champion_metrics(tracking.open_client(), p.register.model_name)
    if version is None:
        return None
    data_hash = tracking.hash_files([p.paths.train_file, p.paths.heldout_file])
    if tags.get("data_hash") == data_hash:
        return f"data hash {data_hash} equals the one champion v{version} was trained on"
    return None


@flow(name="rewardflow-retrain")
def retraining_flow(params_file: str = "params.yaml", force: bool = False) -> dict[str, Any]:
    """The training pipeline, unless the data is what the champion was trained on (override with force)."""
    logger = get_run_logger()
    p = load_params(params_file)
    reason = None if force else nothing_new(p)
    if reason:
        logger.info("retraining skipped: %s (nothing new; force=True retrains anyway)", reason)
        return {"skipped": reason}
    logger.info("retraining: %s", "forced" if force else "new data since the champion (or no champion yet)")
    return training_pipeline(params_file)


def deployment(cron: str = DEFAULT_CRON, params_file: str = "params.yaml") -> Any:
    """The retraining deployment `rewardflow serve` serves: the flow on a cron schedule (UTC)."""
    return retraining_flow.to_deployment(
        name=DEPLOYMENT_NAME,
        cron=cron,
        parameters={"params_file": params_file, "force": False},
        description="Retrain when the data changed since the champion was trained.",
        tags=["rewardflow"],
    )
