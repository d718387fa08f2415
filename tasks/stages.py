"""The pipeline's stages by name: one name per stage in params.yaml, the CLI, dvc.yaml and the flows."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tasks.config import Params

# The stage declarations: commands, deps, params and outs (the project's own dvc.yaml, beside this package).
DVC_FILE = Path(__file__).resolve().parents[1] / "dvc.yaml"


def _validate(p: Params) -> Any:
    from tasks.validation import run_validate

    return run_validate(p)


def _sft(p: Params) -> Any:
    from tasks import launcher

    if launcher.needs_launch(p):
        return launcher.launch("sft", p)
    from tasks.training import run_sft

    return run_sft(p)


def _grpo(p: Params) -> Any:
    from tasks import launcher

    if launcher.needs_launch(p):
        return launcher.launch("grpo", p)
    from tasks.training import run_grpo

    return run_grpo(p)


def _evaluate(p: Params) -> Any:
    from tasks.evaluation import run_evaluate

    return run_evaluate(p)


# Heavy libraries (torch, transformers, trl) load only when a stage that needs them runs.
STAGES: dict[str, Callable[[Params], Any]] = {"validate": _validate, "sft": _sft, "grpo": _grpo, "evaluate": _evaluate}


def declared_params(dvc_file: str | Path = DVC_FILE) -> dict[str, tuple[str, ...]]:
    """Each stage's params as dvc.yaml declares them: params.yaml keys, top-level (`model`) or dotted (`a.b`)."""
    stages = yaml.safe_load(Path(dvc_file).read_text())["stages"]
    return {name: tuple(k for k in stage.get("params", []) if isinstance(k, str)) for name, stage in stages.items()}


# What a stage's outputs and checkpoints depend on besides its input files: read from dvc.yaml, never restated.
STAGE_PARAMS = declared_params()


def stage_params(p: Params, stage: str) -> dict[str, Any]:
    """The values of the params dvc.yaml gives `stage`, by key (sections as plain dicts)."""
    values: dict[str, Any] = {}
    for key in STAGE_PARAMS[stage]:
        value: Any = p
        for part in key.split("."):
            value = getattr(value, part)
        values[key] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return values
