"""Prefect flows and the CLI. Importing this package (any flow: `rewardflow`, a served deployment, a flow run a
Prefect worker starts from prefect.yaml) first sets what every entry point needs in the environment."""

import os

from tasks import telemetry

# No network to wait on: telemetry and analytics off unless the user says otherwise.
telemetry.turn_off()
for _var, _value in {
    # The ephemeral Prefect server took over its default 20 s to start on a cold 2-core machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    # The library's own loggers show up in Prefect's run logs (UI) as well as the terminal.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "tasks",
}.items():
    os.environ.setdefault(_var, _value)
