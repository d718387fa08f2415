"""Nothing trains on data DVC has not pinned, and every registered version's `dvc.*` tags name content that exists.

Before any stage runs, the pipeline compares the configured data files with what their `.dvc` file (data.dvc)
pins. Changed data is pinned (`dvc commit data.dvc`: the content goes into the DVC cache and data.dvc gets its
md5; the user commits data.dvc) or, with `data.pin: refuse`, nothing trains. After the stages, what the version
will name is pushed to the default DVC remote when one is configured (tasks/rebuild finds it again).

Every DVC call goes through the project's Repo (tasks/projectlock), which the pipeline holds locked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks import projectlock, tracking
from tasks.config import PathsConfig

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


def check_data(root: str | Path, paths: PathsConfig, mode: str, gate: Callable[[], None] = lambda: None) -> DataPin:
    """Compare the configured data files with their .dvc pin: pin changed ones (mode "pin") or raise
    DataNotPinned ("refuse"). Content that matches the pin but is missing from the cache is cached either way.

    `gate` is the data gate: called before anything new is pinned (data.dvc, the DVC cache), it raises when the
    files may not be trained on, and then nothing is written."""
    root = Path(root).resolve()
    with projectlock.open_repo(root) as repo:
        if repo is None:
            return DataPin(None, None, None, (), "not a DVC project: the data is not pinned")
        dvc_file, out = _pinning_file(repo, root, paths, mode, gate)
        status = repo.status(targets=[dvc_file])
        changes = {c for entry in status.get(dvc_file, []) for c in entry.get("changed outs", {}).values()}
        old = _md5(root, dvc_file)
        if not changes:
            return DataPin(dvc_file, out, old, (), f"data as {dvc_file} pins it (md5 {old})")
        if changes == {"not in cache"}:  # the files are what the pin says; only the cache lacked them
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
        gate()
        repo.commit(dvc_file, force=True)
        new = _md5(root, dvc_file)
        message = (
            f"data changed since {dvc_file} ({', '.join(changed)}): pinned as md5 {new} (was {old}); "
            f"commit {dvc_file}: git add {dvc_file} && git commit -m 'pin data'"
        )
        log.warning("%s", message)
        return DataPin(dvc_file, out, new, tuple(changed), message)


def _pinning_file(repo: Any, root: Path, paths: PathsConfig, mode: str, gate: Callable[[], None]) -> tuple[str, str]:
    """(the .dvc file that pins the data files, the output it pins); the data folder is added (`dvc add`) when
    nothing pins the files yet and mode is "pin", once the files pass the gate."""
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
