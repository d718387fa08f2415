"""The data splits on disk: completing a checkout that lacks some of the embedded task's files, and carving a
validation split out of a user's train file.

The pipeline needs three files (params.yaml paths.train_file, heldout_file, validation_file; tasks.config
DATA_SPLITS). For the embedded task they are generated. A user who has a validation file points
paths.validation_file at it; one who has none carves it from train with `rewardflow data split`, which moves the
rows whose prompt hashes below the fraction: a row's split depends on its prompt alone, never on row order or on
rows added later.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

from tasks.config import PathsConfig, TaskConfig
from tasks.data import (
    TASK_KINDS,
    DataFileError,
    embedded_splits,
    generate_rows,
    jsonl_line,
    read_jsonl_lines,
    write_jsonl,
)

# `rewardflow data split --fraction F` takes F in (0, MAX_FRACTION]
MAX_FRACTION = 0.5
_HASH_BYTES = 8


class SplitRefused(ValueError):
    """`data split` would overwrite a file or take a fraction it must not; nothing was written."""


def _missing_message(paths: PathsConfig, missing: list[str], differing: list[str]) -> str:
    files = paths.data_files()
    named = ", ".join(f"{files[s]} (paths.{s}_file)" for s in missing)
    theirs = " and ".join(files[s] for s in differing)
    if missing == ["validation"]:
        return (
            f"{named} is missing, and {theirs} are not the embedded task's files, so no validation split can be "
            f"generated for them. Give one: point paths.validation_file in params.yaml at your validation file; or "
            f"carve one from the train file: `rewardflow data split --fraction 0.05` (then `dvc add "
            f"{paths.data_dir}`). Nothing was written"
        )
    return (
        f"{named} missing, and {theirs} are not the embedded task's files, so the missing ones cannot be generated: "
        f"put your files there (or point paths.* in params.yaml at them); a missing validation file can be carved "
        f"from train with `rewardflow data split`. Nothing was written"
    )


def _first_train_line(task: TaskConfig) -> bytes:
    return jsonl_line(generate_rows(1, task.train_seed, task)[0]).encode("utf-8")


def other_kind(train_file: Path, task: TaskConfig) -> str | None:
    """The task.kind whose embedded files train_file is, when that is not task.kind (its first row is that kind's
    first train row for these params); None for the current kind's files or anyone else's."""
    with train_file.open("rb") as handle:
        first = handle.readline()
    if first == _first_train_line(task):
        return None
    return next((k for k in TASK_KINDS if k != task.kind and first == _first_train_line(replace(task, kind=k))), None)


def complete_embedded(paths: PathsConfig, task: TaskConfig) -> list[str]:
    """Write the embedded task's files that are missing, when every present data file is byte for byte the
    embedded task's for these params (a checkout of the default that predates a split gets it); all of them when
    the files are the embedded task of another task.kind (a profile that switches the kind gets its own task, not
    the last one's); returns the splits written. Raises DataFileError, writing nothing, when a file is missing
    beside files of another task."""
    files = {split: Path(f) for split, f in paths.data_files().items()}
    missing = [split for split, f in files.items() if not f.exists()]
    if not missing:
        if other_kind(files["train"], task) is None:
            return []
        missing = list(files)  # the other kind's files: every one is replaced
    rows = embedded_splits(task)
    differing = [
        split
        for split, f in files.items()
        if split not in missing and f.read_bytes() != "".join(map(jsonl_line, rows[split])).encode("utf-8")
    ]
    if differing:
        raise DataFileError(_missing_message(paths, missing, differing))
    for split in missing:
        write_jsonl(files[split], rows[split])
    return missing


def in_validation(prompt: str, fraction: float) -> bool:
    """The carving rule: the first 8 bytes of sha256(prompt in UTF-8), read as a big-endian integer, fall below
    fraction * 2**64."""
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()[:_HASH_BYTES]
    return int.from_bytes(digest, "big") < fraction * 2 ** (8 * _HASH_BYTES)


@dataclass(frozen=True)
class Carved:
    train_file: Path
    validation_file: Path
    moved: int
    kept: int
    replaced: bool


def carve_validation(paths: PathsConfig, fraction: float, force: bool = False) -> Carved:
    """Move the train rows whose prompt `in_validation` says into paths.validation_file and rewrite
    paths.train_file without them, each file atomically; on a failure between the two writes the validation file
    is put back as it was. Refuses (SplitRefused, nothing written) a fraction outside (0, MAX_FRACTION], an existing
    validation file unless force, and a split that would leave either file empty."""
    train, validation = Path(paths.train_file), Path(paths.validation_file)
    if not 0 < fraction <= MAX_FRACTION:
        raise SplitRefused(f"--fraction must be in (0, {MAX_FRACTION}] (got {fraction})")
    if validation.exists() and not force:
        raise SplitRefused(
            f"{validation} (paths.validation_file) already exists: nothing was moved. --force replaces it (its rows "
            f"are not put back into {train}); or point paths.validation_file at another file"
        )
    moved, kept = [], []
    for lineno, row in read_jsonl_lines(train):
        prompt = row.get("prompt")
        if not isinstance(prompt, str):
            raise DataFileError(f"{train}:{lineno}: no string prompt to split on; fix the row (`rewardflow validate`)")
        (moved if in_validation(prompt, fraction) else kept).append(row)
    if not moved or not kept:
        raise SplitRefused(
            f"--fraction {fraction} moves {len(moved)} of the {len(moved) + len(kept)} rows of {train}: "
            f"{'none would be left to validate on' if not moved else 'none would be left to train on'}; "
            "choose another fraction. Nothing was written"
        )
    before = validation.read_bytes() if validation.exists() else None
    write_jsonl(validation, moved)
    try:
        write_jsonl(train, kept)
    except BaseException:
        if before is None:
            validation.unlink(missing_ok=True)
        else:
            restore = validation.with_name(f".{validation.name}.restore")
            restore.write_bytes(before)
            os.replace(restore, validation)
        raise
    return Carved(train, validation, len(moved), len(kept), before is not None)
