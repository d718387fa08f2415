"""Nothing trains on data DVC has not pinned, and every registered version's `dvc.*` tags name content that exists.

Before any stage runs, the pipeline compares the configured data files with what their `.dvc` file (data.dvc)
pins. Changed data is pinned (`dvc commit data.dvc`: the content goes into the DVC cache and data.dvc gets its
md5; the user commits data.dvc) or, with `data.pin: refuse`, nothing trains. After the stages, what the version
will name is pushed to the default DVC remote when one is configured (tasks/rebuild finds it again).

The same check guards every way to train: the pipeline (before its first stage), a stage command run by hand
(`rewardflow sft`: it holds the checkout, as the pipeline does) and a stage command `dvc repro` or `dvc exp run`
runs (stage_guard). `dvc repro` pins changed data itself before its first stage (DVC commits a changed data
source: "Verifying data sources in stage 'data.dvc'"), without the data gate, which then runs as the validate
stage; with `data.pin: refuse`, a stage refuses data.dvc that differs from its committed version in git. A stage
DVC runs cannot pin (DVC holds the data open for reading while its stages run): data that still differs from
data.dvc there (`dvc repro --single-item`) is refused, naming `dvc add`.

Every DVC call goes through the project's Repo (tasks/projectlock), which the pipeline holds locked.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks import projectlock, tracking
from tasks.config import Params, PathsConfig

log = logging.getLogger(__name__)


class DataNotPinned(RuntimeError):
    """The data files cannot be trained on as they are; the message names the file and what to do."""


@dataclass(frozen=True)
class DataPin:
    """The data as pinned for this run: which .dvc file, the path it pins, its md5, the files this run pinned."""

    dvc_file: str | None
    out: str | None
    md5: str | None
    changed: tuple[str, ...]
    message: str


# Set by DVC for every stage command it runs (`dvc repro`, `dvc exp run`): the stage's address.
DVC_STAGE_ENV = "DVC_STAGE"


def inside_dvc_stage() -> bool:
    """Whether this process is a stage command that `dvc repro` or `dvc exp run` started."""
    return DVC_STAGE_ENV in os.environ


def check_data(
    root: str | Path,
    paths: PathsConfig,
    mode: str,
    gate: Callable[[], None] = lambda: None,
    can_pin: bool = True,
) -> DataPin:
    """Compare the configured data files with their .dvc pin: pin changed ones (mode "pin") or raise
    DataNotPinned ("refuse", or `can_pin` false: a stage DVC runs). Content that matches the pin but is missing from
    the cache is cached when it can be. Outside a DVC project, "refuse" refuses: nothing pins the files.

    `gate` is the data gate: called before anything new is pinned (data.dvc, the DVC cache), it raises when the
    files may not be trained on, and then nothing is written."""
    root = Path(root).resolve()
    with projectlock.open_repo(root) as repo:
        if repo is None:
            if mode == "refuse":
                raise DataNotPinned(
                    f"{root} is not a DVC project and data.pin is refuse: nothing pins the data files "
                    f"({', '.join(paths.data_files().values())}), so nothing was trained. Pin them: `dvc init` "
                    f"(inside a git repository), then `dvc add {paths.data_dir}`; or set data.pin: pin to train on "
                    "files nothing pins"
                )
            return DataPin(None, None, None, (), "not a DVC project: the data is not pinned")
        dvc_file, out = _pinning_file(repo, root, paths, mode, gate, can_pin)
        changes = pin_changes(repo, dvc_file)
        old = _md5(root, dvc_file)
        if not can_pin and mode == "refuse" and _differs_from_git(root, dvc_file):
            raise DataNotPinned(
                f"{dvc_file} (md5 {old}) differs from its committed version, and data.pin is refuse: nothing was "
                f"trained. `dvc repro` pins changed data itself before any stage runs, unchecked; to train on it, "
                f"check it (`rewardflow validate`) and commit the pin: `git add {dvc_file} && git commit`; to go back "
                f"to the committed data: `git checkout {dvc_file} && dvc checkout {dvc_file}`"
            )
        if not changes:
            return DataPin(dvc_file, out, old, (), f"data as {dvc_file} pins it (md5 {old})")
        if changes == {"not in cache"}:  # the files are what the pin says; only the cache lacked them
            if not can_pin:
                message = f"data as {dvc_file} pins it (md5 {old}); not in the DVC cache: `dvc commit {dvc_file}`"
                return DataPin(dvc_file, out, old, (), message)
            repo.commit(dvc_file, force=True)
            return DataPin(dvc_file, out, old, (), f"data as {dvc_file} pins it (md5 {old}); added to the DVC cache")
        if "deleted" in changes:
            raise DataNotPinned(
                f"{out} is missing but {dvc_file} pins it (md5 {old}): restore it with `dvc checkout {dvc_file}` "
                f"(or `dvc pull {dvc_file}` from the remote)"
            )
        changed = _changed_files(repo, out)
        if mode == "refuse":
            raise DataNotPinned(
                f"{', '.join(changed)} changed since {dvc_file} pinned {out} (md5 {old}), and data.pin is refuse: "
                f"nothing was trained or registered. To train on the new data pin it: `dvc add {out}`, then "
                f"`git add {dvc_file} && git commit`; to go back to the pinned data: `dvc checkout {dvc_file}`; "
                "or set data.pin: pin to let the pipeline pin it"
            )
        if not can_pin:
            gate()  # bad data is named as such, before it is called unpinned
            raise DataNotPinned(
                f"{', '.join(changed)} changed since {dvc_file} pinned {out} (md5 {old}), and a stage that `dvc "
                f"repro` or `dvc exp run` runs cannot pin it (DVC holds {out} open for reading while its stages run): "
                f"nothing was trained. Pin it, then run again: `dvc add {out}` (or `rewardflow run`, which checks "
                f"and pins it), then `git add {dvc_file} && git commit`; to go back to the pinned data: "
                f"`dvc checkout {dvc_file}`"
            )
        gate()
        repo.commit(dvc_file, force=True)
        new = _md5(root, dvc_file)
        message = (
            f"data changed since {dvc_file} ({', '.join(changed)}): pinned as md5 {new} (was {old}); "
            f"commit {dvc_file}: git add {dvc_file} && git commit -m 'pin data'"
        )
        log.warning("%s", message)
        return DataPin(dvc_file, out, new, tuple(changed), message)


def pin_changes(repo: Any, dvc_file: str) -> set[str]:
    """How the files differ from what dvc_file pins, in DVC's words ("modified", "deleted", "not in cache", ...;
    none: as pinned). DVC's status says "not in cache" alone for an output whose pinned object the cache lacks (a
    fresh clone, a cleared cache) without looking at the files: those outputs' files are hashed and compared with
    the pin here, so that changed files are never taken for the pinned ones (and pinned unchecked)."""
    status = repo.status(targets=[dvc_file])
    changes = {c for entry in status.get(dvc_file, []) for c in entry.get("changed outs", {}).values()}
    if "not in cache" in changes:
        for stage in repo.stage.collect(dvc_file):
            for output in stage.outs:
                changes |= set(output.workspace_status().values())
    return changes


def _pinning_file(
    repo: Any, root: Path, paths: PathsConfig, mode: str, gate: Callable[[], None], can_pin: bool
) -> tuple[str, str]:
    """(the .dvc file that pins the data files, the output it pins); the data folder is added (`dvc add`) when
    nothing pins the files yet, mode is "pin" and this process can pin, once the files pass the gate."""
    from dvc.exceptions import OutputNotFoundError

    pins = set()
    for split, file in paths.data_files().items():
        key = f"{split}_file"
        path = Path(file).resolve()
        if not path.is_relative_to(root):
            raise DataNotPinned(
                f"paths.{key} {path} is outside the project {root}: DVC pins only files inside it. Move the data "
                f"into {paths.data_dir}/, point paths.{key} there and run `dvc add {paths.data_dir}`"
            )
        try:
            outs = repo.find_outs_by_path(str(path), strict=False)
        except OutputNotFoundError:
            outs = []
        sources = [o for o in outs if o.stage.is_data_source]
        if not sources and mode == "refuse":
            raise DataNotPinned(
                f"paths.{key} {path.relative_to(root)} is not pinned by DVC and data.pin is refuse: nothing was "
                f"trained. Pin it: `dvc add {paths.data_dir}`, then `git add {paths.data_dir}.dvc && git commit`"
            )
        if not sources and not can_pin:
            raise DataNotPinned(
                f"paths.{key} {path.relative_to(root)} is not pinned by DVC, and a stage that `dvc repro` or `dvc "
                f"exp run` runs cannot pin it: nothing was trained. Pin it: `dvc add {paths.data_dir}`, then `git "
                f"add {paths.data_dir}.dvc && git commit`"
            )
        if not sources:
            log.warning("nothing pins %s: `dvc add %s`", path.relative_to(root), paths.data_dir)
            gate()
            (stage,) = repo.add(str(root / paths.data_dir))
            sources = stage.outs
        pins.add((sources[0].stage.relpath, sources[0].def_path))
    if len(pins) > 1:
        raise DataNotPinned(
            f"the data files ({', '.join(paths.data_files().values())}) are pinned by {len(pins)} .dvc files "
            f"({sorted(pins)}); pin them with one: keep them in {paths.data_dir}/ and `dvc add {paths.data_dir}`"
        )
    return pins.pop()


@contextmanager
def stage_guard(root: str | Path, p: Params, what: str) -> Iterator[DataPin]:
    """The data check of a stage command, the pipeline's own: run by hand, the command holds the checkout (as
    `rewardflow run` does; ProjectBusy when another pipeline or DVC command holds it) and pins changed data once it
    passes the data gate (data.pin: pin) or refuses it; run by `dvc repro` or `dvc exp run` (which hold the
    checkout), changed data is refused, naming `dvc add`. Yields the data as pinned, for the body to train on."""
    import sqlite3

    from dvc.exceptions import DvcException

    from tasks.launcher import launched
    from tasks.validation import require_valid

    if launched():  # one of the processes a stage launched (tasks/launcher): its launcher checked and holds it
        yield DataPin(None, None, None, (), "checked by the process that launched this one")
        return
    inside = inside_dvc_stage()
    with ExitStack() as stack:
        try:
            if not inside:
                stack.enter_context(projectlock.hold(root, what))
            pin = check_data(root, p.paths, p.data.pin, gate=lambda: require_valid(p), can_pin=not inside)
        except (sqlite3.Error, DvcException) as err:  # DVC itself failed: its state files, its cache
            raise DataNotPinned(
                f"could not compare the data files with their DVC pin: DVC failed ({type(err).__name__}: {err}). "
                "A full disk, a file-size limit or a damaged DVC state (.dvc/tmp, the site cache under "
                "/var/tmp/dvc) is the usual cause: free space or remove the damaged state, then run again. Nothing "
                "was trained"
            ) from None
        log.info("data: %s", pin.message)
        yield pin


def _differs_from_git(root: Path, dvc_file: str) -> bool:
    """Whether the .dvc file differs from its version in git's HEAD (False outside git or before a first commit)."""
    import subprocess

    result = subprocess.run(
        ["git", "diff", "--quiet", "HEAD", "--", dvc_file], cwd=root, capture_output=True, check=False
    )
    return result.returncode == 1


def _md5(root: Path, dvc_file: str) -> str:
    import yaml

    return yaml.safe_load((root / dvc_file).read_text())["outs"][0]["md5"]


def _changed_files(repo: Any, out: str) -> list[str]:
    """The files under `out` that differ from the pin (just `out` when the old listing is not in the cache)."""
    uncommitted = repo.data_status(targets=[out], granular=True).get("uncommitted", {})
    files = sorted({f for kind in ("modified", "added", "deleted") for f in uncommitted.get(kind, [])})
    return [f for f in files if not f.endswith("/")] or [out]


# --- what a registered version names -------------------------------------------------------------------------


def version_tags(root: str | Path, pin: DataPin, stages_recorded: bool) -> dict[str, str]:
    """`dvc.<path>` -> md5 of what the version can be rebuilt from: the data pin, and, when this run recorded its
    stages in dvc.lock (no --set overrides), every stage's dependencies and outputs."""
    hashes = tracking.dvc_lock_hashes(root, stages=stages_recorded)
    if pin.out and pin.md5:
        hashes[pin.out] = pin.md5
    return {f"dvc.{path}": md5 for path, md5 in hashes.items()}


def push(root: str | Path, stages_recorded: bool, dvc_file: str | None) -> str:
    """Push the data pin (and the recorded stages' outputs) to the default DVC remote; what happened, in words.
    A failure is returned (and logged), not raised: the content is still in the local cache."""
    with projectlock.open_repo(root) as repo:
        if repo is None:
            return "not a DVC project: nothing pushed"
        remote = repo.config["core"].get("remote")
        if not remote:
            return "no default DVC remote (`dvc remote add -d NAME URL`): the content is in the local cache only"
        targets = None if stages_recorded else [str(Path(root).resolve() / dvc_file)] if dvc_file else []
        try:
            count = repo.push(targets=targets)
        except Exception as err:  # any failure (DVC's, the remote's filesystem, the network) is reported, not raised
            message = (
                f"push to DVC remote {remote!r} failed: {type(err).__name__}: {err}. The content is in the local "
                "cache only: run `dvc push` once the remote is reachable"
            )
            log.warning("%s", message)
            return message
        return f"pushed to DVC remote {remote!r} ({count} new file(s))"
