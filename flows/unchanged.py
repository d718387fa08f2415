"""The fast path of `rewardflow run`: when nothing changed, say so without starting Prefect.

Kept apart from flows/pipeline.py so that answering "nothing to do" never imports Prefect.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tasks import registry, tracking
from tasks.config import load_params
from tasks.lineage import Lineage
from tasks.stages import STAGES


def unchanged_summary(params_file: str = "params.yaml", overrides: Sequence[str] | None = None) -> dict | None:
    """The pipeline's summary when a run would do nothing: DVC sees every stage current and the GRPO checkpoint in
    dvc.lock is already registered with its gate decision. None when anything would run (then the flow runs).

    Answering this before the flow saves the ~10 s a temporary Prefect server costs to start; such a run records
    nothing in Prefect or MLflow, because nothing happened.
    """
    from mlflow.exceptions import MlflowException

    p = load_params(params_file, overrides or ())
    lineage = Lineage.for_params(params_file, overrides)
    data = [Path(f) for f in p.paths.data_files().values()]
    pin = ["data.dvc"] if (lineage.root / "data.dvc").is_file() else []  # data changed since its pin: pin it first
    if not all(f.exists() for f in data) or not lineage.all_current([*STAGES, *pin]):
        return None
    grpo = f"{p.paths.models_dir}/grpo"
    grpo_md5 = tracking.dvc_lock_hashes(lineage.root).get(grpo)
    if not grpo_md5:
        return None
    try:
        client = tracking.open_client(lineage.root)
        registered = registry.versions_tagged(client, p.register.model_name, f"dvc.{grpo}", grpo_md5)
    except MlflowException:
        return None
    done = [v for v in registered if registry.decided(v)]
    if not done:
        return None
    version = str(done[0].version)  # the oldest
    return {
        "stages": [(name, "skipped", 0.0) for name in STAGES],
        "metrics": json.loads((Path(p.paths.reports_dir) / "eval.json").read_text()),
        "registration": f"already registered as version {version} (nothing changed; no flow run)",
        "model_version": version,
        "promoted": False,
        "mlflow_run_id": None,
        "tracking_uri": tracking.tracking_uri(lineage.root),
    }
