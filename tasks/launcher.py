"""Run a training stage on several processes through `accelerate launch` (DDP, DeepSpeed), per params `launcher`.

In-process is the default (`num_processes: 1`, no config file). Otherwise the stage re-runs itself as
`accelerate launch [--config_file F] --multi_gpu --num_processes N -m flows.cli <stage> --params <resolved>`;
inside those processes `launched()` is true and the stage trains, every process on its shard of each batch.
On a machine without a GPU the processes use gloo (the trainers run with `use_cpu`), which is how the
multi-process path is tested here.

Everything the processes listen on stays on the loopback: torchrun's rendezvous store (a TCPStore on
`launcher.port`) binds every interface and has no option for an address, so `python -m tasks.launcher` runs
accelerate's launcher but serves that store first, on a socket bound to 127.0.0.1, and torchrun's own store
shares it (TCPStore's `multi_tenant`); gloo is pointed at the loopback interface (`GLOO_SOCKET_IFNAME`, unless
set). tests/test_training.py reads the listening sockets of a 2-process run.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tasks.config import Params

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
LOOPBACK_INTERFACE = "lo"


def launched() -> bool:
    """True inside a process started by accelerate/torchrun (so a stage never launches itself twice)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def needs_launch(p: Params) -> bool:
    return (p.launcher.num_processes > 1 or bool(p.launcher.config_file)) and not launched()


def launchable(stage: str, run: Callable[[Params], Any]) -> Callable[[Params], Any]:
    """A training stage's function: under `accelerate launch` when params `launcher` asks for several processes,
    else `run` here. The function it wraps is its `__wrapped__`."""

    def stage_function(p: Params) -> Any:
        if needs_launch(p):
            return launch(stage, p)
        return run(p)

    stage_function.__wrapped__ = run
    return stage_function


def command(stage: str, params_file: str | Path, p: Params) -> list[str]:
    """The `accelerate launch` command line that runs `stage` with the resolved params in params_file."""
    args = [sys.executable, "-m", "tasks.launcher"]  # accelerate launch, with its rendezvous on 127.0.0.1
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
        env = {"GLOO_SOCKET_IFNAME": LOOPBACK_INTERFACE, **os.environ}
        # a session of its own, so that a stop reaches the launcher and every process it started, never just one
        with subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
        ) as proc:
            try:
                stdout, stderr = proc.communicate()
            except BaseException:  # stopped (SIGTERM, Ctrl-C) or failed here: the processes stop too
                _stop_session(proc)
                raise
    for line in stderr.splitlines()[-20:]:
        log.debug("%s launcher: %s", stage, line)
    if proc.returncode != 0:
        tail = "\n".join((stdout + stderr).splitlines()[-25:])
        raise RuntimeError(
            f"{stage}: `accelerate launch` with {p.launcher.num_processes} processes failed "
            f"(exit {proc.returncode}); last output:\n{tail}"
        )


def _stop_session(proc: subprocess.Popen, grace_s: float = 10) -> None:
    """SIGTERM to the launched session (torchrun passes it on to its workers), SIGKILL after grace_s."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=grace_s)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def serve_rendezvous_on_loopback(port: int, timeout_s: float = 300) -> tuple[object, object]:
    """A TCPStore server on LOOPBACK:port, in this process, for torchrun's rendezvous store to share: the store
    torchrun creates itself would listen on every interface. Returns (store, its socket): keep both alive while
    torchrun runs."""
    import datetime
    import socket

    import torch.distributed as dist

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((LOOPBACK, port))
    listener.listen(128)
    store = dist.TCPStore(
        LOOPBACK,
        port,
        is_master=True,
        timeout=datetime.timedelta(seconds=timeout_s),
        wait_for_workers=False,
        multi_tenant=True,
        master_listen_fd=listener.fileno(),
    )
    return store, listener


def _launch_main() -> None:
    """`accelerate launch` (its own command line), with the rendezvous store served on the loopback just before
    torchrun starts: accelerate first checks the port is free, and would pick another one if it were taken."""
    import torch.distributed.run as torchrun
    from accelerate.commands.launch import main

    run = torchrun.run

    def run_on_loopback(args) -> None:
        port = getattr(args, "master_port", None)
        if getattr(args, "standalone", False):  # accelerate found the port taken and would rendezvous elsewhere
            raise SystemExit(f"launcher.port {port} is in use on this machine: set launcher.port to a free port")
        served = serve_rendezvous_on_loopback(int(port)) if port else None
        try:
            run(args)
        finally:
            del served

    torchrun.run = run_on_loopback  # accelerate's multi-GPU launcher calls torch.distributed.run.run(args)
    main()


if __name__ == "__main__":
    _launch_main()
