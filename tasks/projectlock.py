"""One pipeline at a time per checkout: a pipeline run holds DVC's own repository lock from start to end.

DVC takes `.dvc/tmp/lock` for every command that reads or writes the project's DVC state (`dvc repro`, `dvc exp
run`, `dvc commit`, `dvc status`, `dvc push`). The pipeline (`rewardflow run`, the retraining flow) takes the same
lock before it looks at anything and keeps it until its last dvc.lock, cache and registry write, so of two
pipelines, or of a pipeline and a DVC command, one proceeds and the other refuses within seconds: `ProjectBusy`
here (naming the holder), DVC's "Unable to acquire lock" there. It is an `flock` (zc.lockfile): the kernel
releases it when the holder dies, so a killed run never leaves the project locked. DVC's hardlink lock (for
filesystems without flock, such as some NFS mounts) is a file taken for a year: a killed run would leave the
checkout locked, so the pipeline refuses to start under that setting (HardlinkLockRefused) and says what to do.

`dvc repro` lets go of that lock while a stage's command runs (so that the command may call DVC) and guards the
stage's paths with `.dvc/tmp/rwlock` instead. So after taking the lock the pipeline also reads the rwlock: a live
process there (other than this one) is a stage running, and the pipeline refuses. Entries of dead processes are
ignored, as DVC ignores them.

Within the holding process the lock is re-entrant (the retraining flow holds it around the pipeline flow), and
every DVC call goes through the one `Repo` that holds it (`open_repo`): a second `Repo` in the same process would
find the lock taken by its own process.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# What the holder is doing, beside DVC's lock file (which holds only its pid): read by the process refused.
HOLDER_FILE = "rewardflow-holder.json"
# The exit status of a command refused because the project is busy (sysexits' EX_TEMPFAIL: try again later).
BUSY_EXIT_CODE = 75

_held: dict[Path, list[Any]] = {}  # project root -> [the Repo holding the lock, re-entry depth]


class ProjectBusy(RuntimeError):
    """Another process holds the project; the message names it and what to do."""


class HardlinkLockRefused(ValueError):
    """`core.hardlink_lock` is set: a pipeline killed while holding DVC's hardlink lock would leave the checkout
    locked for a year. The message names the setting and what to do."""


def is_dvc_project(root: str | Path) -> bool:
    return (Path(root) / ".dvc").is_dir()


@contextmanager
def hold(root: str | Path, what: str) -> Iterator[Any]:
    """Hold the project's DVC lock for the body (re-entrant in this process); yields the Repo that holds it, or
    None outside a DVC project. Raises ProjectBusy after DVC's own 3 s of retries when another process holds it."""
    root = Path(root).resolve()
    if not is_dvc_project(root):
        yield None
        return
    if root in _held:
        _held[root][1] += 1
        try:
            yield _held[root][0]
        finally:
            _held[root][1] -= 1
        return
    from dvc.lock import LockError
    from dvc.repo import Repo, lock_repo

    with ExitStack() as stack:
        repo = stack.enter_context(Repo(str(root)))
        if repo.config["core"].get("hardlink_lock"):
            raise HardlinkLockRefused(
                f"{root / '.dvc' / 'config'} sets core.hardlink_lock: DVC's hardlink lock is taken for a year, so a "
                "pipeline killed while holding it would leave this checkout locked. Use DVC's default lock (an "
                "flock the kernel releases when its holder dies): `dvc config --unset core.hardlink_lock` (it is "
                "for filesystems without flock, such as some NFS mounts: keep the checkout on a local disk)"
            )
        try:
            stack.enter_context(lock_repo(repo))
        except LockError:
            raise ProjectBusy(busy_message(root, holder(root))) from None
        running = stage_runners(Path(repo.tmp_dir))
        if running:
            raise ProjectBusy(busy_message(root, running))
        note = Path(repo.tmp_dir) / HOLDER_FILE
        stack.callback(note.unlink, missing_ok=True)
        note.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "what": what, "since": _now()}))
        _held[root] = [repo, 1]
        stack.callback(_held.pop, root)
        log.debug("holding the DVC lock of %s: %s", root, what)
        yield repo


@contextmanager
def open_repo(root: str | Path) -> Iterator[Any]:
    """The project's DVC Repo: the one holding the lock when this process holds it, else a fresh one (whose DVC
    calls take the lock one at a time, as the `dvc` command does); None outside a DVC project."""
    root = Path(root).resolve()
    if root in _held:
        repo = _held[root][0]
        # what DVC does at the start of every command that takes the lock: forget the stages, params and hashes
        # read before, so this call sees dvc.yaml, dvc.lock and the .dvc files as they are now
        repo._reset()
        yield repo
    elif not is_dvc_project(root):
        yield None
    else:
        from dvc.repo import Repo

        with Repo(str(root)) as repo:
            yield repo


def stage_runners(tmp: Path) -> str | None:
    """The live processes other than this one that hold DVC's rwlock (`.dvc/tmp/rwlock`: a stage of `dvc repro`
    running), in words; None when there are none."""
    try:
        entries = json.loads((tmp / "rwlock").read_text() or "{}")
    except FileNotFoundError:
        return None
    except ValueError:  # being rewritten by DVC right now: someone is using it
        return "a DVC command (its .dvc/tmp/rwlock is being rewritten)"
    found: dict[int, tuple[str, set[str]]] = {}
    for mode, paths in entries.items():
        for path, infos in paths.items():
            for info in infos if mode == "read" else [infos]:
                pid = int(info["pid"])
                if pid != os.getpid() and _alive(pid):
                    found.setdefault(pid, (info["cmd"], set()))[1].add(path)
    if not found:
        return None
    return "; ".join(
        f"`{_command(cmd.split())}` (pid {pid}), running a DVC stage on {', '.join(sorted(paths)[:3])}"
        for pid, (cmd, paths) in found.items()
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _command(argv: list[str]) -> str:
    """`python .venv/bin/dvc repro` or `/abs/.venv/bin/dvc repro` as `dvc repro`."""
    if len(argv) > 1 and Path(argv[0]).name.startswith("python"):
        argv = argv[1:]
    return " ".join([Path(argv[0]).name, *argv[1:]])[:160] if argv else "?"


def holder(root: str | Path) -> str:
    """Who holds the project's DVC lock, as far as can be told: what it said it does, else its command line."""
    tmp = Path(root) / ".dvc" / "tmp"
    try:
        pid = int((tmp / "lock").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return "another process (DVC's lock file names none; with core.hardlink_lock see .dvc/tmp/lock)"
    try:
        note = json.loads((tmp / HOLDER_FILE).read_text())
    except (OSError, ValueError):
        note = {}
    if note.get("pid") == pid and note.get("host") == socket.gethostname():
        return f"{note['what']} (pid {pid}, since {note['since']})"
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return f"pid {pid}"
    return f"`{_command(argv)}` (pid {pid})"


def busy_message(root: str | Path, who: str) -> str:
    return (
        f"the project {root} is busy: {who} holds it (DVC's .dvc/tmp/lock or rwlock). One pipeline or DVC command "
        "at a time per checkout: wait for it to finish, or stop it (its locks go with it). Nothing was started."
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
