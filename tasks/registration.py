"""The register stage: log the GRPO model as an MLflow pyfunc, register it as challenger and apply the gate.

Not a DVC stage: the registry is state outside the repository, and `dvc repro` re-running a stage must never
create a model version by surprise. Idempotence comes from the registry instead: a version is found by the run
that trained its checkpoint (`source_run_id`), so re-registering the same training run creates nothing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks import registry, tracking
from tasks.config import Params

log = logging.getLogger(__name__)


@dataclass
class RegisterResult:
    version: str
    created: bool
    source_run_id: str
    decision: registry.Decision | None = None
    champion_version: str | None = None
    champion_metrics: dict[str, float] | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        if not self.created:
            return f"already registered as version {self.version} (source run {self.source_run_id})"
        verdict = "champion" if self.decision and self.decision.promote else "challenger only"
        reason = self.decision.reason if self.decision else ""
        return f"version {self.version} registered -> {verdict}: {reason}"


def find_version(client: Any, model_name: str, source_run_id: str) -> str | None:
    """The version registered from this training run, if any."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{model_name}'")
    except MlflowException:
        return None
    found = [v.version for v in versions if (v.tags or {}).get("source_run_id") == source_run_id]
    return str(min(found, key=int)) if found else None


def champion_on_heldout(client: Any, p: Params, heldout_hash: str) -> tuple[str | None, dict[str, float] | None]:
    """The champion's held-out metrics on the current held-out file: its recorded ones when it was evaluated on
    the same bytes, otherwise a fresh evaluation of its checkpoint with the same code as evaluate."""
    version, metrics, tags = registry.champion_metrics(client, p.register.model_name)
    if version is None or tags.get("heldout_hash") == heldout_hash:
        return version, metrics
    import mlflow

    from tasks.data import read_jsonl
    from tasks.evaluation import evaluate_checkpoint

    log.info("register: champion v%s was evaluated on other held-out data; re-evaluating it on this file", version)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{p.register.model_name}/{version}"))
    metrics, _ = evaluate_checkpoint(local / "artifacts" / "model", p, read_jsonl(p.paths.heldout_file))
    return version, metrics


def run_register(
    client: Any, p: Params, run_id: str, source_run_id: str, lineage: dict[str, str], root: str | Path = "."
) -> RegisterResult:
    """Register models/grpo unless its training run already has a version; then gate it against the champion."""
    import mlflow

    from tasks.data import read_jsonl

    name = p.register.model_name
    existing = find_version(client, name, source_run_id)
    if existing is not None and "promotion_decision" in client.get_model_version(name, existing).tags:
        log.info("register: training run %s is already version %s of %s; nothing to do", source_run_id, existing, name)
        return RegisterResult(existing, False, source_run_id)
    report = json.loads((Path(p.paths.reports_dir) / "eval.json").read_text())
    if "grpo" not in report:
        raise ValueError(f"{p.paths.reports_dir}/eval.json has no grpo metrics; run the evaluate stage first")
    metrics = {k: float(v) for k, v in report["grpo"].items()}
    champion_version, champion = champion_on_heldout(client, p, lineage["heldout_hash"])

    if existing is None:
        with mlflow.start_run(run_id=run_id):
            info = registry.log_score_model(
                Path(p.paths.models_dir) / "grpo",
                batch_size=p.evaluate.batch_size,
                max_new_tokens=p.evaluate.max_new_tokens,
                input_example=[row["prompt"] for row in read_jsonl(p.paths.heldout_file)[:2]],
            )
        hashes = {f"dvc.{path}": md5 for path, md5 in tracking.dvc_lock_hashes(root).items()}
        tags = {**lineage, **hashes, **{f"metric.{k}": repr(v) for k, v in metrics.items()}}
        version = str(registry.register_challenger(client, name, info.model_uri, source_run_id, tags)[0].version)
    else:
        # An earlier run registered this version and stopped before the gate: decide now, register nothing new.
        log.warning("register: version %s of %s has no promotion decision yet; deciding now", existing, name)
        version = existing
    decision = registry.decide_promotion(metrics, champion, p.register, champion_version)
    registry.apply_decision(client, name, version, decision)
    log.info("register: %s version %s: %s", name, version, decision.reason)
    return RegisterResult(version, True, source_run_id, decision, champion_version, champion, metrics)
