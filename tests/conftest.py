import os
import sys

import pytest

from tasks import telemetry

# Tests never touch the network.
telemetry.turn_off()
for var, value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
}.items():
    os.environ.setdefault(var, value)


MLFLOW_URI_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@pytest.fixture(autouse=True)
def _mlflow_store_put_back():
    """mlflow.set_tracking_uri/set_registry_uri write MLFLOW_TRACKING_URI/MLFLOW_REGISTRY_URI into os.environ (so
    that subprocesses inherit them): after a test that ran the pipeline in this process, both are put back as they
    were, or a later test's commands (whose environment copies os.environ) would write into that test's store."""
    saved = {var: os.environ.get(var) for var in MLFLOW_URI_VARS}
    yield
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    for var, value in saved.items():
        os.environ.pop(var, None)
        if value is not None:
            os.environ[var] = value
