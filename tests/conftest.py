import os

from tasks import telemetry

# Tests never touch the network.
telemetry.turn_off()
for var, value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
}.items():
    os.environ.setdefault(var, value)
