"""Telemetry and analytics off for every tool rewardflow runs (Prefect, MLflow, DVC, Great Expectations, Hugging
Face): there is no network to wait on. This is the one list: `flows` (every entry point), the library modules that
start a tool on their own, the tests (tests/conftest.py) and the Makefile (`python tasks/telemetry.py` prints it as
KEY=VALUE lines) read it. The module needs nothing beyond the standard library, so the Makefile can run it with any
Python 3 before the venv exists.

>>> TELEMETRY_OFF["DVC_NO_ANALYTICS"]
'1'
"""

import os
import sys

TELEMETRY_OFF = {
    "DO_NOT_TRACK": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "False",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


def turn_off() -> None:
    """Set each TELEMETRY_OFF variable that the environment does not set already (a user's own value wins)."""
    for var, value in TELEMETRY_OFF.items():
        os.environ.setdefault(var, value)


if __name__ == "__main__":
    sys.stdout.write("".join(f"{var}={value}\n" for var, value in TELEMETRY_OFF.items()))
