"""Telemetry off is one list (tasks/telemetry.py): the Makefile, every entry point (`flows`) and the tests read it."""

import os
import subprocess
import sys

from project import ROOT

from tasks.telemetry import TELEMETRY_OFF


def _without_telemetry_settings() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in TELEMETRY_OFF}


def test_the_makefile_exports_the_list(tmp_path):
    """Every make target runs with the list exported, overriding the caller's own value as before."""
    probe = tmp_path / "probe.mk"
    probe.write_text(f"include {ROOT / 'Makefile'}\nprobe:\n\t@env\n")
    env = _without_telemetry_settings() | {"PYTHON": sys.executable, "DVC_NO_ANALYTICS": "0"}
    out = subprocess.run(
        ["make", "-s", "-f", str(probe), "probe"], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout
    exported = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert {k: exported.get(k) for k in TELEMETRY_OFF} == TELEMETRY_OFF


def test_every_entry_point_turns_it_off_unless_the_user_says_otherwise():
    """Importing `flows` (the CLI, a deployment, a worker's flow run) sets each variable the user has not set."""
    code = "import os, flows, tasks.telemetry as t; print(' '.join(os.environ[k] for k in t.TELEMETRY_OFF))"
    env = _without_telemetry_settings() | {"MLFLOW_DISABLE_TELEMETRY": "false"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    expected = dict(TELEMETRY_OFF, MLFLOW_DISABLE_TELEMETRY="false")
    assert out.split() == list(expected.values())
