"""Stopping a run: SIGTERM (what a Prefect worker, systemd or Kubernetes sends) and SIGINT (Ctrl-C) stop
`rewardflow run` and the stage commands within seconds, at any stage, and leave nothing running or half-recorded.

The handler raises `RunStopped` in the main thread, wherever it is (a training step, an evaluation batch, a
tracking call), so every cleanup on the way out runs: the stage's MLflow run and the pipeline's parent run end
KILLED (tasks.tracking.end_run), the Prefect flow run ends Cancelled (the flow's hooks below), Prefect's temporary
server is stopped by Prefect's own exit handler, and the checkpoint machinery keeps only checkpoints marked
complete, so the next run resumes from the last one. `RunStopped` is a KeyboardInterrupt, so no `except Exception`
in a library can swallow it. A second signal interrupts the cleanup as well.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
from collections.abc import Callable
from typing import Any

log = logging.getLogger("rewardflow")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_received: list[int] = []


class RunStopped(KeyboardInterrupt):
    """A stop signal arrived; raised in the main thread by the handler `install` sets."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        super().__init__(f"stopped by {self.signal_name}")

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number (130 Ctrl-C, 143 SIGTERM)."""
        return 128 + self.signum


def received() -> int | None:
    """The first stop signal this process received, if any."""
    return _received[0] if _received else None


def _handler(signum: int, frame: Any) -> None:
    if not _received:
        log.warning("%s received: stopping", signal.Signals(signum).name)
    _received.append(signum)
    raise RunStopped(signum)


def install() -> None:
    """Handle SIGTERM and SIGINT with RunStopped (main thread only: where Python runs signal handlers)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _handler)


def stops_cleanly(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a CLI command: stop signals raise RunStopped while it runs, and a stop ends it with a message and
    exit status 128 + the signal's number."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            import typer

            install()
            try:
                return command(*args, **kwargs)
            except RunStopped as stop:
                typer.secho(
                    f"{what} stopped by {stop.signal_name}. Complete checkpoints are kept: run it again to resume "
                    "from the last one.",
                    err=True,
                    fg="yellow",
                )
                _exit_now(stop.exit_code)

        return wrapper

    return decorate


def _exit_now(code: int) -> None:
    """Exit as soon as what is pending is written: the log handlers first (Prefect's sends the run's last logs to
    its temporary server, which must still be up: at a normal exit the server stops first and the handler then
    retries for seconds), then the exit handlers (Prefect stops its server there). The interpreter's own teardown
    of torch, transformers and the rest is skipped: together these made a stop take 5-8 s instead of ~1 s."""
    import atexit
    import os
    import sys

    logging.shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def shield_from_ctrl_c() -> None:
    """Block SIGINT in the calling thread, so that a child process it starts inherits it blocked: Ctrl-C reaches
    the terminal's whole process group, and a helper server (Prefect's temporary one) must outlive the run's own
    cleanup, which still reports to it. The helper is stopped at exit (SIGTERM)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


# --- Prefect flow hooks -----------------------------------------------------------------------------------------


def keep_handling_sigterm(flow: Any, flow_run: Any, state: Any) -> None:
    """on_running: Prefect's flow engine swaps SIGTERM for its own bridge, which marks the run Crashed and then
    ends the process with the default action (no cleanup: MLflow runs left RUNNING, Prefect's temporary server left
    behind). Put ours back for the flow's duration; Prefect restores it on the way out."""
    if signal.getsignal(signal.SIGINT) is _handler:  # only where `install` ran (the CLI), never in a library user
        with contextlib.suppress(ValueError):  # not the main thread: signals stay as they are
            signal.signal(signal.SIGTERM, _handler)


def mark_cancelled(flow: Any, flow_run: Any, state: Any) -> None:
    """on_crashed: a flow run ended by a stop signal is Cancelled, with the signal named, not Crashed."""
    signum = received()
    if signum is None:
        return
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(
            flow_run.id, Cancelled(message=f"stopped by {signal.Signals(signum).name}"), force=True
        )


FLOW_HOOKS = {"on_running": [keep_handling_sigterm], "on_crashed": [mark_cancelled]}
