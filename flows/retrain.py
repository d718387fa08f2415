"""Scheduled retraining: run the pipeline when no registered version was trained on the current data.

`rewardflow serve` serves this flow (it needs a running Prefect server: `prefect server start`) as the deployment
prefect.yaml declares for a work pool: its name, schedule, description and tags are read from there. A run that
finds another pipeline holding the checkout (the previous firing still training, a `rewardflow run`, a `dvc repro`)
does nothing and ends in the state Skipped with the holder in its message; so does a run that finds nothing new
(without taking the checkout's lock). A failed run is reported through the notification block of params.yaml
`notify` (flows/notify.py).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger
from prefect.states import Completed, State

from flows import notify
from flows.pipeline import training_pipeline
from tasks import projectlock, tracking
from tasks.config import Params, load_params

# The retraining deployment for a work pool (`prefect deploy`); `rewardflow serve` serves the same one.
DEPLOYMENT_FILE = Path(__file__).resolve().parents[1] / "prefect.yaml"


def nothing_new(p: Params) -> str | None:
    """Why retraining would be pointless (a version trained on exactly these data files has been gated: promoted
    or kept out), or None. A version whose gate never finished does not count: the pipeline finishes it."""
    from tasks import registry

    files = p.paths.data_files().values()
    if not all(Path(file).is_file() for file in files):
        return None  # as `rewardflow run`: the pipeline writes the embedded data, or fails naming what is missing
    data_hash = tracking.hash_files(files)
    versions = registry.versions_tagged(tracking.open_client(), p.register.model_name, "data_hash", data_hash)
    gated = [v for v in versions if registry.decided(v)]
    if not gated:
        return None
    latest = gated[-1]
    decision = latest.tags[registry.DECISION_TAG]
    return f"data hash {data_hash} is what version {latest.version} was trained on ({decision})"


def skipped(reason: str) -> State:
    """A finished run that did nothing: state Skipped (shown as such in the Prefect UI), the reason its message."""
    get_run_logger().info("retraining skipped: %s", reason)
    return Completed(name="Skipped", message=f"skipped: {reason}", data={"skipped": reason})


@flow(name="rewardflow-retrain", on_failure=[notify.failed_run], on_crashed=[notify.failed_run])
def retraining_flow(params_file: str = "params.yaml", force: bool = False) -> Any:
    """The training pipeline, unless a gated version was trained on these very data (override with force) or
    another pipeline holds this checkout."""
    from prefect.runtime import flow_run

    p = load_params(params_file)

    # A firing that finds nothing new skips without taking the checkout's lock (DVC's): a schedule that fires
    # every few minutes must not make the user's own `dvc status` or `dvc repro` fail for the moment it looks.
    # Looked at again under the lock, where the data cannot change nor another pipeline gate a version.
    def unchanged() -> State | None:
        reason = None if force else nothing_new(p)
        return skipped(f"data unchanged: {reason} (force=True retrains anyway)") if reason else None

    if skip := unchanged():
        return skip
    try:
        with projectlock.hold(Path.cwd(), f"scheduled retraining (Prefect flow run {flow_run.get_name()})"):
            if skip := unchanged():
                return skip
            new = "forced" if force else "data no registered version was trained on"
            get_run_logger().info("retraining: %s", new)
            return training_pipeline(params_file)
    except projectlock.ProjectBusy as busy:
        return skipped(f"another pipeline holds this checkout: {busy}")


def declared_deployment() -> dict[str, Any]:
    """The deployment prefect.yaml declares (name, entrypoint, parameters, schedules, description, tags)."""
    if not DEPLOYMENT_FILE.is_file():
        raise FileNotFoundError(
            f"{DEPLOYMENT_FILE} is missing: the retraining deployment is declared there. Serve from a rewardflow "
            "checkout installed with `pip install -e .` (as `make install` does)"
        )
    return yaml.safe_load(DEPLOYMENT_FILE.read_text())["deployments"][0]


def deployment(cron: str | None = None, params_file: str = "params.yaml", interval_s: float = 0) -> Any:
    """The retraining deployment `rewardflow serve` serves: prefect.yaml's, on its cron schedule (UTC) unless `cron`
    is given, or every `interval_s` seconds when that is set."""
    declared = declared_deployment()
    cron = cron or declared["schedules"][0]["cron"]
    schedule = {"interval": timedelta(seconds=interval_s)} if interval_s else {"cron": cron}
    return retraining_flow.to_deployment(
        name=declared["name"],
        **schedule,
        parameters={**declared["parameters"], "params_file": params_file},
        description=declared["description"],
        tags=declared["tags"],
    )
