"""A training stage's resumable checkpoints: the Trainer's checkpoints marked complete once written, resumed only
when made with the same params and inputs (its fingerprint), and the stage's artefact written atomically."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import traceback
from pathlib import Path
from typing import Any

from tasks.config import Params
from tasks.dvcfile import stage_params
from tasks.modeling import save_artifact
from tasks.write_errors import write_error_cause

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = ".checkpoints"
COMPLETE_MARKER = "rewardflow_complete.json"
FINGERPRINT_FILE = "fingerprint.json"
# The Trainer deletes old checkpoints right after writing a new one, before the completion marker goes in: keeping
# two means the newest complete checkpoint is still on disk whenever the one being written is cut short.
SAVE_TOTAL_LIMIT = 2
_CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)")


class SaveFailed(OSError):
    """A checkpoint or a stage's artefact could not be written; the message says why, from the error itself."""


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stage_fingerprint(p: Params, stage: str, inputs: list[str | Path]) -> str:
    """sha256 (16 hex digits) of the params dvc.yaml gives the stage and the bytes of its input files and folders:
    a checkpoint made with anything else must not be resumed."""
    from tasks.tracking import hash_files

    sections = json.dumps(stage_params(p, stage), sort_keys=True)
    return hashlib.sha256(f"{sections}\0{hash_files(inputs)}".encode()).hexdigest()[:16]


class Checkpoints:
    """A stage's resumable Trainer checkpoints, in <models_dir>/.checkpoints/<stage>/ (not a DVC output).

    HF Trainer writes checkpoint-N file by file, so a killed run can leave half of one. A checkpoint counts only
    once the Trainer has finished writing it: `callback` then drops a marker file into it. On start, checkpoints
    from other params or inputs (fingerprint.json differs) and unmarked ones are removed, and training resumes from
    the newest marked one; the folder goes once the stage's artefact is saved.
    """

    def __init__(self, models_dir: str | Path, stage: str, fingerprint: str, max_steps: int) -> None:
        self.dir = Path(models_dir) / CHECKPOINTS_DIR / stage
        self.artefact = Path(models_dir) / stage
        self.stage, self.fingerprint, self.max_steps = stage, fingerprint, max_steps
        self.saving: int | None = None  # the step whose checkpoint is being written, if any
        self.callback = self._callback()

    def _callback(self) -> Any:
        from transformers import TrainerCallback

        outer = self

        class _MarkComplete(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                # runs after the Trainer's own flow callback has decided whether this step saves
                outer.saving = state.global_step if control.should_save else None

            def on_save(self, args, state, control, **kwargs):
                # called once _save_checkpoint returned: every file of checkpoint-N is written
                if state.is_world_process_zero:
                    outer.mark(state.global_step)
                outer.saving = None

        return _MarkComplete()

    def trainer_kwargs(self, save_steps: int) -> dict[str, Any]:
        return dict(
            output_dir=str(self.dir), save_strategy="steps", save_steps=save_steps, save_total_limit=SAVE_TOTAL_LIMIT
        )

    def _found(self) -> list[tuple[int, Path]]:
        found = [(int(m.group(1)), d) for d in self.dir.glob("checkpoint-*") if (m := _CHECKPOINT_RE.fullmatch(d.name))]
        return sorted(found)

    def _is_complete(self, step: int, path: Path) -> bool:
        marker = _read_json(path / COMPLETE_MARKER) or {}
        return marker.get("step") == step and marker.get("fingerprint") == self.fingerprint

    def complete(self) -> list[Path]:
        """The marked checkpoints, oldest first."""
        return [path for step, path in self._found() if self._is_complete(step, path)]

    def mark(self, step: int) -> None:
        marker = {"step": step, "fingerprint": self.fingerprint}
        _write_json_atomic(self.dir / f"checkpoint-{step}" / COMPLETE_MARKER, marker)

    def resume_point(self) -> Path | None:
        """Clear what must not be resumed; the newest complete checkpoint, or None to start from step 0."""
        recorded = (_read_json(self.dir / FINGERPRINT_FILE) or {}).get("fingerprint")
        if self.dir.exists() and recorded != self.fingerprint:
            if self._found():
                log.warning(
                    "%s: not resuming from %s: its checkpoints were made with other params or inputs "
                    "(fingerprint %s, now %s); starting from step 0",
                    self.stage,
                    self.dir,
                    recorded,
                    self.fingerprint,
                )
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(self.dir / FINGERPRINT_FILE, {"fingerprint": self.fingerprint, "stage": self.stage})
        for step, path in self._found():
            if not self._is_complete(step, path):
                log.warning(
                    "%s: skipping %s: incomplete (no completion marker: the run stopped while writing it); removed",
                    self.stage,
                    path.name,
                )
                shutil.rmtree(path, ignore_errors=True)
        complete = self.complete()
        if not complete:
            return None
        step = _CHECKPOINT_RE.fullmatch(complete[-1].name).group(1)
        log.info("%s: resuming from %s (step %s of %d)", self.stage, complete[-1].name, step, self.max_steps)
        return complete[-1]

    def train(self, trainer: Any) -> tuple[Any, int]:
        """trainer.train(), resumed from the newest complete checkpoint; (TrainOutput, step resumed from).
        Under several processes the main one tidies the folder and the others read what it left."""
        accelerator = trainer.accelerator
        resume = self.resume_point() if accelerator.is_main_process else None
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            resume = (self.complete() or [None])[-1]
        try:
            result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        except Exception as err:
            # only a failure inside the Trainer's checkpoint writer is a failed checkpoint write
            writing = any(frame.name == "_save_checkpoint" for frame in traceback.extract_tb(err.__traceback__))
            if self.saving is None or not writing:
                raise
            raise self.save_failed(err, self.dir / f"checkpoint-{self.saving}") from err
        return result, int(_CHECKPOINT_RE.fullmatch(resume.name).group(1)) if resume else 0

    def save(self, model: Any, tokenizer: Any, resolved: dict[str, Any], main: bool = True) -> Path:
        """The stage's artefact (atomic), written by the main process only; then the checkpoints are no longer
        needed."""
        if not main:
            return self.artefact
        try:
            out_dir = save_artifact(model, tokenizer, self.artefact, resolved)
        except Exception as err:
            raise self.save_failed(err, self.artefact) from err
        shutil.rmtree(self.dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.dir.parent.rmdir()  # only when no other stage's checkpoints are left
        return out_dir

    def save_failed(self, err: Exception, target: Path) -> SaveFailed:
        """What a failed write means for the user: what happened, what is intact, what a re-run does, what to do."""
        complete = self.complete()
        kept = (
            f"the last complete checkpoint, {complete[-1].name}, is kept and a re-run resumes from it"
            if complete
            else "no complete checkpoint exists yet, so a re-run starts from step 0"
        )
        previous = f"{self.artefact} was not written"
        if self.artefact.exists():
            previous = f"the previous {self.artefact} is unchanged"
        cause, todo = write_error_cause(err, target)
        return SaveFailed(
            f"{self.stage}: could not write {target}: {err} ({cause}). "
            f"Nothing half-written is used: {previous}, and {kept}. {todo}"
        )
