"""The register stage: log the GRPO model as an MLflow pyfunc, register it as challenger and apply the gate.

Not a DVC stage: the registry is state outside the repository, and `dvc repro` re-running a stage must never
create a model version by surprise. Idempotence comes from the registry instead: a version is found by the run
that trained its checkpoint (`source_run_id`), so re-registering the same training run creates nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks import promotion, registry, scorer_package
from tasks.config import Params
from tasks.reading import CONSTANT

log = logging.getLogger(__name__)


@dataclass
class RegisterResult:
    version: str
    created: bool
    source_run_id: str
    decision: promotion.Decision | None = None
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


def champion_on_heldout(p: Params, heldout_hash: str) -> Callable[[str, dict[str, float] | None, dict], Any]:
    """The champion's held-out metrics on the current held-out file: its recorded ones when it was evaluated on
    the same bytes, otherwise a fresh evaluation of its checkpoint with the same code as evaluate (cached)."""
    evaluated: dict[str, dict[str, float]] = {}

    def metrics_of(version: str, recorded: dict[str, float] | None, tags: dict[str, str]) -> dict[str, float] | None:
        if tags.get("heldout_hash") == heldout_hash:
            return recorded
        if version not in evaluated:
            import mlflow

            from tasks.data import read_jsonl
            from tasks.evaluation import evaluate_checkpoint

            log.info(
                "register: champion v%s was evaluated on other held-out data; re-evaluating it on this file", version
            )
            local = Path(mlflow.artifacts.download_artifacts(f"models:/{p.register.model_name}/{version}"))
            evaluated[version], _ = evaluate_checkpoint(
                local / "artifacts" / "model", p, read_jsonl(p.paths.heldout_file)
            )
        return evaluated[version]

    return metrics_of


def run_register(client: Any, p: Params, run_id: str, source_run_id: str, lineage: dict[str, str]) -> RegisterResult:
    """Register models/grpo unless its training run already has a version; then gate it against the champion.
    `lineage`: the version's lineage tags (hashes, git commit, the `dvc.<path>` md5s it can be rebuilt from).
    Re-running after a crash anywhere in here finishes the job (promotion.register_and_gate)."""
    import mlflow

    from tasks.data import read_jsonl

    name = p.register.model_name
    existing = promotion.find_version(client, name, source_run_id)
    if existing is not None and registry.decided(existing):
        log.info(
            "register: training run %s is already version %s of %s; nothing to do",
            source_run_id,
            existing.version,
            name,
        )
        return RegisterResult(str(existing.version), False, source_run_id)
    report = json.loads((Path(p.paths.reports_dir) / "eval.json").read_text())
    if "grpo" not in report:
        raise ValueError(f"{p.paths.reports_dir}/eval.json has no grpo metrics; run the evaluate stage first")
    metrics = {k: float(v) for k, v in report["grpo"].items()}
    champion_of = champion_on_heldout(p, lineage["heldout_hash"])
    # the slow part (re-evaluating a champion from other held-out data) before the registry lock is taken
    champion_version, recorded, champion_tags = registry.champion_metrics(client, name)
    if champion_version is not None:
        champion_of(champion_version, recorded, champion_tags)

    model_uri, tags = None, {}
    if existing is None:
        with mlflow.start_run(run_id=run_id):
            info = scorer_package.log_score_model(
                Path(p.paths.models_dir) / "grpo",
                batch_size=p.evaluate.batch_size,
                max_new_tokens=p.evaluate.max_new_tokens,
                input_example=[row["prompt"] for row in read_jsonl(p.paths.heldout_file)[:2]],
            )
        model_uri = info.model_uri
        tags = {**lineage, **{f"metric.{k}": repr(v) for k, v in metrics.items()}}
    constant = report.get(CONSTANT)
    version, decision, champion = promotion.register_and_gate(
        client, name, source_run_id, model_uri, tags, metrics, p.register, champion_of, constant
    )
    if decision is None:  # another process finished it meanwhile
        return RegisterResult(version, False, source_run_id)
    log.info("register: %s version %s: %s", name, version, decision.reason)
    return RegisterResult(version, True, source_run_id, decision, decision.champion_version, champion, metrics)
