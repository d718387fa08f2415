"""Run a training stage on several processes through `accelerate launch` (DDP, DeepSpeed), per params `launcher`.

In-process is the default (`num_processes: 1`, no config file). Otherwise the stage re-runs itself as
`accelerate launch [--config_file F] --multi_gpu --num_processes N -m flows.cli <stage> --params <resolved>`;
inside those processes `launched()` is true and the stage trains, every process on its shard of each batch.
On a machine without a GPU the processes use gloo (the trainers run with `use_cpu`), which is how the
multi-process path is tested here.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from tasks.config import Params

log = logging.getLogger(__name__)


def launched() -> bool:
    """True inside a process started by accelerate/torchrun (so a stage never launches itself twice)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def needs_launch(p: Params) -> bool:
    return (p.launcher.num_processes > 1 or bool(p.launcher.config_file)) and not launched()


def command(stage: str, params_file: str | Path, p: Params) -> list[str]:
    """The `accelerate launch` command line that runs `stage` with the resolved params in params_file."""
    args = [sys.executable, "-m", "accelerate.commands.launch"]
    if p.launcher.config_file:
        args += ["--config_file", p.launcher.config_file]
    if p.launcher.num_processes > 1:
        # --multi_gpu selects accelerate's torchrun launcher; with no GPU the trainers fall back to CPU + gloo.
        if not p.launcher.config_file:
            args += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        args += ["--num_processes", str(p.launcher.num_processes), "--main_process_port", str(p.launcher.port)]
    return [*args, "-m", "flows.cli", stage, "--params", str(params_file)]


def launch(stage: str, p: Params) -> None:
    """Run `stage` under accelerate with exactly these params (written to a temporary file); raise with the
    processes' last output when it fails."""
    with tempfile.TemporaryDirectory(prefix=f"rewardflow-{stage}-") as tmp:
        params_file = Path(tmp) / "params.yaml"
        # through JSON: tuples become lists, which safe_dump writes and load_params reads back identically; the
        # profile is already merged into the values, so none is applied again
        resolved = {**json.loads(json.dumps(p.to_dict())), "profile": ""}
        params_file.write_text(yaml.safe_dump(resolved, sort_keys=False))
        args = command(stage, params_file, p)
        log.info("%s: launching %d processes: %s", stage, p.launcher.num_processes, " ".join(args))
        result = subprocess.run(args, capture_output=True, text=True)
    for line in result.stderr.splitlines()[-20:]:
        log.debug("%s launcher: %s", stage, line)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-25:])
        raise RuntimeError(
            f"{stage}: `accelerate launch` with {p.launcher.num_processes} processes failed "
            f"(exit {result.returncode}); last output:\n{tail}"
        )
