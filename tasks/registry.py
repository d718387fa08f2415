"""The MLflow model registry and what it records: reading versions, aliases and the champion history.

Each registered version carries its held-out metrics as tags `metric.<name>` and its lineage as tags
(`data_hash`, `params_hash`, `git_commit`, `source_run_id`, `heldout_hash`). A new version gets the alias
`challenger`; it takes the alias `champion` only when it beats the champion on the primary metric by the
configured margin (tasks/promotion.py). The registered model's tag `champion_history` (a JSON list, newest last) is
what rollback walks back through. The scorer's packaging as a pyfunc model is tasks/scorer_package.py; the lock
every change to aliases holds is tasks/registry_lock.py.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

# the lock's names are also reachable from here, where callers of the registry look for them
from tasks.registry_lock import LOCK_SUFFIX, Lock, RegistryBusy, RegistryLockLost, check_held, gate_lock  # noqa: F401

# Versions logged as a cloudpickle name the predictor's class tasks.registry.ScorePredictor: keep that name.
from tasks.scorer_package import ScorePredictor  # noqa: F401

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "champion_history"
METRIC_PREFIX = "metric."
LINEAGE_TAGS = ("data_hash", "params_hash", "git_commit", "source_run_id", "heldout_hash")
_READY_TIMEOUT_S = 300
# A version's gate is over once it carries one of these; without one, a re-run gates it again.
FINAL_DECISIONS = ("promoted", "rejected")
DECISION_TAG = "promotion_decision"


# --- registry helpers ---------------------------------------------------------------------------------


def not_found(err: MlflowException) -> bool:
    return err.error_code == "RESOURCE_DOES_NOT_EXIST"


def all_versions(client, model_name: str) -> list[ModelVersion]:
    """Every version of model_name, oldest first (search results come in pages)."""
    versions: list[ModelVersion] = []
    token = None
    while True:
        page = client.search_model_versions(f"name='{model_name}'", page_token=token)
        versions += list(page)
        token = page.token
        if not token:
            return sorted(versions, key=lambda v: int(v.version))


def versions_tagged(client, model_name: str, tag: str, value: str) -> list[ModelVersion]:
    """The versions of model_name whose tag `tag` is `value`, oldest first; [] when the model is not registered.
    A checkpoint is found by the training run it came from (`source_run_id`: the register step) or by its content
    (`dvc.<path>`, its md5 in dvc.lock: `rewardflow run`'s fast path, before any run exists)."""
    try:
        return [v for v in all_versions(client, model_name) if v.tags.get(tag) == value]
    except MlflowException as err:
        if not not_found(err):
            raise
        return []


def decided(version: ModelVersion) -> bool:
    """Whether the gate is over for this version (its final decision is recorded); if not, a re-run gates it."""
    return version.tags.get(DECISION_TAG) in FINAL_DECISIONS


def alias_version(client, model_name: str, alias: str) -> str | None:
    """The version an alias points to, or None."""
    version = client.get_registered_model(model_name).aliases.get(alias)
    # MLflow's SQL store hands versions back as ints; the registry code speaks strings throughout
    return None if version is None else str(version)


def champion_history(client, model_name: str) -> list[str]:
    return json.loads(client.get_registered_model(model_name).tags.get(HISTORY_TAG, "[]"))


def set_champion_history(client, model_name: str, history: list[str]) -> None:
    check_held(client, model_name)  # a holder whose lock was taken over stops here
    client.set_registered_model_tag(model_name, HISTORY_TAG, json.dumps(history))


def set_alias(client, model_name: str, alias: str, version: str) -> None:
    check_held(client, model_name)  # a holder whose lock was taken over stops here
    client.set_registered_model_alias(model_name, alias, version)


def wait_ready(client, model_name: str, version: str) -> ModelVersion:
    """The version once its status is READY; raises when registration failed or timed out."""
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while True:
        mv = client.get_model_version(model_name, version)
        if mv.status == "READY":
            return mv
        if mv.status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
            raise RuntimeError(f"{model_name} v{version}: registration ended {mv.status}: {mv.status_message}")
        time.sleep(1)


# --- reading the registry -----------------------------------------------------------------------------


def version_metrics(tags: dict[str, str]) -> dict[str, float]:
    """The eval metrics stored on a version as `metric.<name>` tags."""
    return {k.removeprefix(METRIC_PREFIX): float(v) for k, v in tags.items() if k.startswith(METRIC_PREFIX)}


def champion_metrics(client, model_name: str) -> tuple[str | None, dict[str, float] | None, dict[str, str]]:
    """(champion version, its eval metrics, its tags); (None, None, {}) when there is no champion yet."""
    try:
        version = alias_version(client, model_name, CHAMPION)
    except MlflowException as err:
        if not_found(err):
            return None, None, {}
        raise
    if version is None:
        return None, None, {}
    tags = dict(client.get_model_version(model_name, version).tags)
    return version, version_metrics(tags), tags


def _describe(mv: ModelVersion) -> dict[str, Any]:
    tags = dict(mv.tags)
    return {
        "version": str(mv.version),
        "run_id": mv.run_id,
        "source": mv.source,
        "status": mv.status,
        "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).isoformat(timespec="seconds"),
        "metrics": version_metrics(tags),
        "lineage": {k: tags[k] for k in LINEAGE_TAGS if k in tags},
        "tags": tags,
    }


def registry_status(client, model_name: str) -> dict[str, Any]:
    """Champion, challenger and champion history of model_name."""
    try:
        model = client.get_registered_model(model_name)
    except MlflowException as err:
        if not_found(err):
            raise LookupError(
                f"no registered model {model_name!r} in the MLflow registry; run the pipeline first to register one"
            ) from None
        raise
    status: dict[str, Any] = {"model_name": model_name}
    for alias in (CHAMPION, CHALLENGER):
        version = model.aliases.get(alias)
        version = None if version is None else str(version)
        status[alias] = _describe(client.get_model_version(model_name, version)) if version else None
    status["champion_history"] = json.loads(model.tags.get(HISTORY_TAG, "[]"))
    return status


def __getattr__(name: str) -> Any:
    """The promotion gate's and the scorer package's names, reachable from here too (tasks.promotion,
    tasks.scorer_package), where callers of the registry look for them."""
    for module in ("tasks.promotion", "tasks.scorer_package"):
        found = importlib.import_module(module)
        if name in vars(found):
            return vars(found)[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
