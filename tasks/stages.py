"""The pipeline's stages by name: one name per stage in params.yaml, the CLI, dvc.yaml and the flows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tasks.config import Params


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
