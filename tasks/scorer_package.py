"""The scorer as an MLflow pyfunc model: the predictor that serves a checkpoint, and logging it with everything
it needs to load (its code, the checkpoint, pinned requirements, a signature and an input example).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models.model import ModelInfo

from tasks import telemetry

log = logging.getLogger(__name__)

# the artifact name, and the folder of the transformers checkpoint inside a logged model: artifacts/model
MODEL_ARTIFACT = "model"
# What the served model needs at run time; pinned to this environment instead of inferred by MLflow.
RUNTIME_PACKAGES = ("torch", "transformers", "tokenizers", "numpy", "pandas", "pyyaml")
# Two prompts of the embedded task, in its format, as the logged input example.
INPUT_EXAMPLE = (
    "review : food : very tasty . service : slow . price : cheap . ambience : not cozy . "
    "rate food service price ambience from 1 to 5 :",
    "review : food : bland and cold . service : very friendly . price : okay . ambience : lovely . "
    "rate food service price ambience from 1 to 5 :",
)
# Model logging must never reach the network nor shell out to pip/uv: requirements are given explicitly.
OFFLINE_LOGGING_ENV = {
    "MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK": "true",
    "MLFLOW_LOCK_MODEL_DEPENDENCIES": "false",
    "MLFLOW_UV_AUTO_DETECT": "false",
}

# The logged model's code (models-from-code): it sets a ScorePredictor as the model.
SCORER_CODE = Path(__file__).resolve().with_name("scorer_model.py")


class ScorePredictor(mlflow.pyfunc.PythonModel):
    """Greedy-decodes each prompt and returns the integers of the completion: a list of ints per prompt.

    Versions logged as a cloudpickle name this class tasks.registry.ScorePredictor and ship their own copy of the
    package: tasks.registry keeps that name, so they keep loading."""

    def load_context(self, context) -> None:
        """Load the saved transformers model and tokenizer from the logged artifact."""
        from tasks.modeling import load_pretrained
        from tasks.prompts import PromptFormat

        self.model, self.tokenizer = load_pretrained(context.artifacts[MODEL_ARTIFACT])
        self.fmt = PromptFormat.of_checkpoint(context.artifacts[MODEL_ARTIFACT])
        config = context.model_config or {}
        self.batch_size = int(config.get("batch_size", 8))
        self.max_new_tokens = int(config.get("max_new_tokens", 8))

    # Served, model_input is always a DataFrame (MLflow's schema check turns lists into one); the annotation
    # tells MLflow so and stops it inferring a schema from type hints. Called directly, lists work too.
    def predict(self, context, model_input: pd.DataFrame, params=None) -> list[list[int]]:
        """Scores for a list of prompts, a DataFrame with a `prompt` column (or one column), or a Series."""
        from tasks.evaluation import generate_greedy
        from tasks.rewards import parse_scores

        prompts = _prompts(model_input)
        # getattr: a predictor whose load_context did not run (called directly) feeds plain prompts
        fmt = getattr(self, "fmt", None)
        texts = generate_greedy(self.model, self.tokenizer, prompts, self.batch_size, self.max_new_tokens, fmt)
        return [parse_scores(text) for text in texts]


def _prompts(model_input: Any) -> list[str]:
    """The prompt strings of any input shape the scoring server or a caller may hand to predict."""
    if isinstance(model_input, pd.DataFrame):
        if "prompt" in model_input.columns:
            model_input = model_input["prompt"]
        elif len(model_input.columns) == 1:
            model_input = model_input.iloc[:, 0]
        else:
            raise ValueError(f"expected a `prompt` column, got columns {list(model_input.columns)}")
    if isinstance(model_input, str):
        model_input = [model_input]
    if hasattr(model_input, "tolist"):
        model_input = model_input.tolist()
    prompts = list(model_input)
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
        raise TypeError(f"every prompt must be a string; got {type(bad[0]).__name__} {bad[0]!r}")
    return prompts


# --- logging the model --------------------------------------------------------------------------------


@contextlib.contextmanager
def _offline_logging_env() -> Iterator[None]:
    """Set OFFLINE_LOGGING_ENV for the duration, then restore the caller's environment (telemetry stays off)."""
    telemetry.turn_off()
    saved = {key: os.environ.get(key) for key in OFFLINE_LOGGING_ENV}
    os.environ.update(OFFLINE_LOGGING_ENV)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        # another filesystem, or links unsupported: a plain copy
        shutil.copy2(src, dst)


@contextlib.contextmanager
def _named_model_dir(model_dir: Path) -> Iterator[Path]:
    """model_dir under the name `model` (hard links in a temporary folder when it has another name)."""
    if model_dir.name == MODEL_ARTIFACT:
        yield model_dir
        return
    with tempfile.TemporaryDirectory(prefix="rewardflow-log-") as tmp:
        staged = Path(tmp) / MODEL_ARTIFACT
        shutil.copytree(model_dir, staged, copy_function=_link_or_copy)
        yield staged


def pip_requirements() -> list[str]:
    """The runtime packages pinned to the installed versions (local build tags like +cpu dropped)."""
    return [f"{name}=={installed_version(name).split('+')[0]}" for name in RUNTIME_PACKAGES]


def log_score_model(
    model_dir: str | Path,
    *,
    batch_size: int,
    max_new_tokens: int,
    registered_model_name: str | None = None,
    input_example: list[str] | None = None,
) -> ModelInfo:
    """Log the saved model in model_dir as a pyfunc scorer in the active MLflow run; the input example defaults to
    two prompts of the embedded task (pass prompts of your own data)."""
    from mlflow.models import infer_signature

    if mlflow.active_run() is None:
        raise RuntimeError("log_score_model needs an active MLflow run (mlflow.start_run())")
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir}: no saved model (config.json missing) to log")
    example = list(input_example or INPUT_EXAMPLE)
    # One unnamed string column: a named `prompt` column would make MLflow's schema check reject a plain list
    # of prompts ({"inputs": [...]} when served); a DataFrame with a `prompt` column passes either way.
    # The output schema fixes the type only (an array of integers per prompt); the values are illustrative.
    signature = infer_signature(example, [[3, 4, 2, 5], [1, 2, 3, 4]])
    started = time.monotonic()
    # MLflow keeps an artifact folder's own name: staged as `model`, the checkpoint always lands at
    # <logged model>/artifacts/model, whatever folder (sft, grpo) it came from.
    with _offline_logging_env(), _named_model_dir(model_dir) as staged:
        info = mlflow.pyfunc.log_model(
            name="model",
            # models-from-code: the file that sets the predictor is logged, not a pickle of it
            python_model=str(SCORER_CODE),
            artifacts={MODEL_ARTIFACT: str(staged)},
            # the file imports tasks.scorer_package.ScorePredictor: ship the package with it
            code_paths=[str(SCORER_CODE.parent)],
            model_config={"batch_size": batch_size, "max_new_tokens": max_new_tokens},
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(),
            registered_model_name=registered_model_name,
        )
    log.info("logged scorer %s from %s in %.1fs", info.model_uri, model_dir, time.monotonic() - started)
    return info
