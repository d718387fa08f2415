"""What orchestration costs: a cold `rewardflow run` on a fresh clone against the compute inside its stages, the time
to the first training work, unchanged re-runs, and peak memory.

    .venv/bin/python benchmarks/orchestration.py     # ~4 min on 2 cores; writes benchmarks/results/orchestration.json

Uses the committed HEAD (a `git clone` into a temporary folder), the project's installed virtual environment, and a
fresh PREFECT_HOME (Prefect's database created from nothing, as on a new machine).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tasks.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"


def timed(args: list[str], cwd: Path, env: dict) -> tuple[float, subprocess.CompletedProcess, dt.datetime]:
    started_at = dt.datetime.now()
    started = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return seconds, result, started_at


def stage_seconds(stdout: str) -> dict[str, float]:
    """The stage table `rewardflow run` prints: `sft        ran        103.0s`."""
    rows = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in STAGES and parts[2].endswith("s"):
            rows[parts[0]] = float(parts[2][:-1])
    return rows


def first_log_at(log: str, pattern: str, day: dt.date) -> dt.datetime | None:
    """Timestamp of the first Prefect-formatted log line (HH:MM:SS.mmm | ...) matching pattern."""
    for line in log.splitlines():
        match = re.match(r"(\d\d):(\d\d):(\d\d)\.(\d{3}) \|", line)
        if match and re.search(pattern, line):
            h, m, s, ms = map(int, match.groups())
            return dt.datetime.combine(day, dt.time(h, m, s, ms * 1000))
    return None


def main() -> None:
    python = ROOT / ".venv/bin/python"
    with tempfile.TemporaryDirectory(prefix="rewardflow-orch-") as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        env = {
            **os.environ,
            "PATH": f"{ROOT / '.venv/bin'}:{os.environ['PATH']}",
            "PREFECT_HOME": str(Path(tmp) / "prefect-home"),
            "MLFLOW_TRACKING_URI": "",
        }
        env.pop("MLFLOW_TRACKING_URI")
        # `python -m flows.cli` from the clone runs the clone's code (the venv's entry point would run ROOT's).
        cli = [str(python), "-m", "flows.cli"]

        cold, result, started_at = timed([*cli, "run"], clone, env)
        peak_rss_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        stages = stage_seconds(result.stdout)
        if set(stages) != set(STAGES):
            sys.exit(f"could not read the stage table from:\n{result.stdout[-2000:]}")
        compute = sum(stages.values())
        train_eval = stages["sft"] + stages["grpo"] + stages["evaluate"]
        sft_start = first_log_at(result.stderr + result.stdout, r"built-in model|Task run 'sft", started_at.date())
        to_first_step = (sft_start - started_at).total_seconds() if sft_start else None
        server_up = first_log_at(result.stderr + result.stdout, r"Beginning flow run", started_at.date())
        to_flow = (server_up - started_at).total_seconds() if server_up else None

        unchanged, _, _ = timed([*cli, "run"], clone, env)
        flow_unchanged, _, _ = timed([*cli, "run", "--always-flow"], clone, env)
        repro, repro_out, _ = timed([str(ROOT / ".venv/bin/dvc"), "repro"], clone, env)
        if "Running stage" in repro_out.stdout:
            sys.exit(f"dvc repro ran a stage after rewardflow run:\n{repro_out.stdout}")

    out = {
        "cold_run_s": cold,
        "stage_s": stages,
        "compute_s": compute,
        "overhead_ratio": cold / compute,
        "overhead_ratio_train_eval_only": cold / train_eval,
        "command_to_flow_start_s": to_flow,
        "command_to_sft_start_s": to_first_step,
        "unchanged_rerun_s": unchanged,
        "unchanged_rerun_through_prefect_s": flow_unchanged,
        "dvc_repro_unchanged_s": repro,
        "peak_rss_mib": peak_rss_mib,
    }
    print(f"cold rewardflow run (fresh clone, fresh PREFECT_HOME): {cold:.1f}s wall")
    print("  stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in stages.items()) + f" = {compute:.1f}s compute")
    print(
        f"  wall / compute: {cold / compute:.3f} (target <= 1.15); wall / (sft+grpo+evaluate): {cold / train_eval:.3f}"
    )
    print(f"  command -> flow running: {to_flow:.1f}s; command -> SFT model built: {to_first_step:.1f}s")
    print(f"  peak RSS of any process: {peak_rss_mib:.0f} MiB")
    print(
        f"unchanged re-run: {unchanged:.1f}s (target <= 10s); through the Prefect flow (--always-flow): "
        f"{flow_unchanged:.1f}s"
    )
    print(f"dvc repro, nothing changed: {repro:.1f}s (target <= 5s)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "orchestration.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {RESULTS / 'orchestration.json'}; rerun: .venv/bin/python benchmarks/orchestration.py")


if __name__ == "__main__":
    main()
