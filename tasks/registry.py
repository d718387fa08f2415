"""The MLflow model registry: the scorer as a pyfunc model, challenger/champion aliases, the promotion gate.

Each registered version carries its held-out metrics as tags `metric.<name>` and its lineage as tags
(`data_hash`, `params_hash`, `git_commit`, `source_run_id`, `heldout_hash`). A new version gets the alias
`challenger`; it takes the alias `champion` only when it beats the champion on the primary metric by the
configured margin. The registered model's tag `champion_history` (a JSON list, newest last) is what
rollback walks back through.

Concurrency and crashes: everything that reads the champion and moves an alias runs under the registry lock
(tasks/registry_lock.py: one holder per registered model, across processes and machines, kept by a heartbeat), and
every multi-step change has a commit point (a version's final `promotion_decision`; for a rollback, the release of
the lock that records it), so a re-run after a crash finishes the job without a second version, a wrong alias or a
second rollback. docs/RELIABILITY.md lists the faults tried.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo

from tasks.config import RegisterConfig

# the lock's names are also reachable from here, where callers of the registry look for them
from tasks.registry_lock import LOCK_SUFFIX, Lock, RegistryBusy, RegistryLockLost, check_held, gate_lock  # noqa: F401

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "champion_history"
# the artifact name, and the folder of the transformers checkpoint inside a logged model: artifacts/model
MODEL_ARTIFACT = "model"
METRIC_PREFIX = "metric."
LINEAGE_TAGS = ("data_hash", "params_hash", "git_commit", "source_run_id", "heldout_hash")
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
    "MLFLOW_DISABLE_TELEMETRY": "true",
}
_READY_TIMEOUT_S = 300
# A version's gate is over once it carries one of these; without one, a re-run gates it again.
FINAL_DECISIONS = ("promoted", "rejected")
DECISION_TAG = "promotion_decision"


# The logged model's code (models-from-code): it sets a ScorePredictor as the model.
SCORER_CODE = Path(__file__).resolve().with_name("scorer_model.py")


class ScorePredictor(mlflow.pyfunc.PythonModel):
    """Greedy-decodes each prompt and returns the integers of the completion: a list of ints per prompt.

    Versions logged before models-from-code hold a cloudpickle of this class by its name (tasks.registry.
    ScorePredictor) and ship their own copy of the package: it stays here so that they keep loading."""

    def load_context(self, context) -> None:
        """Load the saved transformers model and tokenizer from the logged artifact."""
        from tasks.modeling import load_pretrained
        from tasks.prompts import checkpoint_uses_chat_template

        self.model, self.tokenizer = load_pretrained(context.artifacts[MODEL_ARTIFACT])
        self.chat = checkpoint_uses_chat_template(context.artifacts[MODEL_ARTIFACT])
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
        # getattr: a predictor unpickled from a version logged before chat templates has no `chat` (plain prompts)
        chat = getattr(self, "chat", False)
        texts = generate_greedy(self.model, self.tokenizer, prompts, self.batch_size, self.max_new_tokens, chat)
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
    """Set OFFLINE_LOGGING_ENV for the duration, then restore the caller's environment."""
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
            # the file imports tasks.registry.ScorePredictor: ship the package with it
            code_paths=[str(SCORER_CODE.parent)],
            model_config={"batch_size": batch_size, "max_new_tokens": max_new_tokens},
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(),
            registered_model_name=registered_model_name,
        )
    log.info("logged scorer %s from %s in %.1fs", info.model_uri, model_dir, time.monotonic() - started)
    return info


# --- registry helpers ---------------------------------------------------------------------------------


def _not_found(err: MlflowException) -> bool:
    return err.error_code == "RESOURCE_DOES_NOT_EXIST"


def _all_versions(client, model_name: str) -> list[ModelVersion]:
    """Every version of model_name, oldest first (search results come in pages)."""
    versions: list[ModelVersion] = []
    token = None
    while True:
        page = client.search_model_versions(f"name='{model_name}'", page_token=token)
        versions += list(page)
        token = page.token
        if not token:
            return sorted(versions, key=lambda v: int(v.version))


def _alias(client, model_name: str, alias: str) -> str | None:
    """The version an alias points to, or None."""
    version = client.get_registered_model(model_name).aliases.get(alias)
    # MLflow's SQL store hands versions back as ints; this module speaks strings throughout
    return None if version is None else str(version)


def _history(client, model_name: str) -> list[str]:
    return json.loads(client.get_registered_model(model_name).tags.get(HISTORY_TAG, "[]"))


def _set_history(client, model_name: str, history: list[str]) -> None:
    check_held(client, model_name)  # a holder whose lock was taken over stops here
    client.set_registered_model_tag(model_name, HISTORY_TAG, json.dumps(history))


def _set_alias(client, model_name: str, alias: str, version: str) -> None:
    check_held(client, model_name)  # a holder whose lock was taken over stops here
    client.set_registered_model_alias(model_name, alias, version)


def _wait_ready(client, model_name: str, version: str) -> ModelVersion:
    """The version once its status is READY; raises when registration failed or timed out."""
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while True:
        mv = client.get_model_version(model_name, version)
        if mv.status == "READY":
            return mv
        if mv.status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
            raise RuntimeError(f"{model_name} v{version}: registration ended {mv.status}: {mv.status_message}")
        time.sleep(1)


# --- the registry lock ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(client, model_name: str) -> Iterator[Lock]:
    """The registry lock (tasks/registry_lock.py), with any change a dead holder left unfinished finished first."""
    with gate_lock(client, model_name) as lock:
        if lock.inherited is not None and lock.finished is None:
            change = lock.inherited
            log.warning(
                "%s: finishing the %s a process that died left unfinished: %s", model_name, change["op"], change
            )
            if change.get("op") == "rollback":
                _apply_rollback(client, model_name, change)
            lock.finished = change
            lock.record(None)
        yield lock


# --- challenger ---------------------------------------------------------------------------------------


def find_version(client, model_name: str, source_run_id: str) -> ModelVersion | None:
    """The version registered from this training run, or None."""
    try:
        found = [v for v in _all_versions(client, model_name) if v.tags.get("source_run_id") == source_run_id]
    except MlflowException as err:
        if not _not_found(err):
            raise
        found = []
    return found[0] if found else None


def register_challenger(
    client, model_name: str, model_uri: str, source_run_id: str, tags: dict[str, str]
) -> tuple[ModelVersion, bool]:
    """Register model_uri as a new version with alias challenger; (existing version, False) when this run's
    model is already registered."""
    with _locked(client, model_name):  # two registrations of one run must not both find nothing and create
        existing = find_version(client, model_name, source_run_id)
        if existing is not None:
            log.info("%s v%s is already registered from run %s", model_name, existing.version, source_run_id)
            return existing, False
        try:
            client.create_registered_model(model_name)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
        check_held(client, model_name)
        mv = client.create_model_version(
            name=model_name,
            source=model_uri,
            run_id=source_run_id,
            tags={**tags, "source_run_id": source_run_id},
            model_id=model_id,
        )
        mv = _wait_ready(client, model_name, str(mv.version))
        _set_alias(client, model_name, CHALLENGER, str(mv.version))
    log.info("registered %s v%s (run %s) as %s", model_name, mv.version, source_run_id, CHALLENGER)
    return mv, True


def _resume_challenger(client, model_name: str, mv: ModelVersion) -> ModelVersion:
    """A version an earlier run registered and left without a final decision: ready, and challenger unless a newer
    version took the alias since."""
    mv = _wait_ready(client, model_name, str(mv.version))
    current = _alias(client, model_name, CHALLENGER)
    if current is None or int(current) < int(mv.version):
        _set_alias(client, model_name, CHALLENGER, str(mv.version))
    return mv


# --- the promotion gate -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    metric: str
    challenger_value: float
    champion_value: float | None
    champion_version: str | None


def decide_promotion(
    challenger_metrics: dict[str, float],
    champion_metrics: dict[str, float] | None,
    cfg: RegisterConfig,
    champion_version: str | None = None,
) -> Decision:
    """Promote when there is no champion, or when the challenger wins on cfg.primary_metric by the margin."""
    metric = cfg.primary_metric
    if metric not in challenger_metrics:
        raise ValueError(f"challenger has no {metric} metric (has: {', '.join(sorted(challenger_metrics))})")
    value = float(challenger_metrics[metric])
    if not math.isfinite(value):
        raise ValueError(f"challenger {metric} is {value}: cannot compare it with the champion")
    if champion_metrics is None:
        return Decision(True, f"first model: no champion yet ({metric} {value:.4f})", metric, value, None, None)
    champion = f"champion v{champion_version}" if champion_version else "champion"
    if metric not in champion_metrics:
        raise ValueError(
            f"{champion} has no recorded {metric} metric, so the challenger cannot be compared; "
            "promote a version by hand if it should become champion"
        )
    best = float(champion_metrics[metric])
    # improvement is positive when the challenger is better, whichever direction the metric goes;
    # rounded so that 0.795 - 0.790 counts as the 0.005 it is, not 0.00499999.
    improvement = round((value - best) if cfg.higher_is_better else (best - value), 12)
    promote = improvement > 0 and improvement >= cfg.min_improvement
    head = f"{metric} {value:.4f} vs {champion} {best:.4f}{'' if cfg.higher_is_better else ' (lower is better)'}"
    if promote:
        reason = f"{head}: improvement {improvement:+.4f} >= min_improvement {cfg.min_improvement:g}"
    elif improvement <= 0:
        reason = f"{head}: improvement {improvement:+.4f}, not better than the champion; champion kept"
    else:
        reason = f"{head}: improvement {improvement:+.4f} < min_improvement {cfg.min_improvement:g}; champion kept"
    return Decision(promote, reason, metric, value, best, champion_version)


def apply_decision(client, model_name: str, version: str, decision: Decision) -> None:
    """Record the gate's decision on the version's tags and promote it when the decision says so.

    The final `promotion_decision` is written last: it is the commit point. A crash before it leaves the version
    without one, and the next run gates it again (see `gate`). Call under `gate_lock`, as `gate` does."""
    verdict = "promoted" if decision.promote else "rejected"
    client.set_model_version_tag(model_name, version, "promotion_reason", decision.reason)
    champion_value = "none" if decision.champion_value is None else repr(decision.champion_value)
    client.set_model_version_tag(model_name, version, "champion_metric_value", champion_value)
    client.set_model_version_tag(model_name, version, "champion_version_at_gate", decision.champion_version or "none")
    if decision.promote:
        _promote(client, model_name, version, decision.reason)
    else:
        log.info("%s v%s stays %s: %s", model_name, version, CHALLENGER, decision.reason)
    client.set_model_version_tag(model_name, version, DECISION_TAG, verdict)


def gate(
    client,
    model_name: str,
    version: str,
    metrics: dict[str, float],
    cfg: RegisterConfig,
    champion_metrics_of: Any = None,
) -> tuple[Decision, dict[str, float] | None]:
    """Compare version with the current champion and apply the decision, all under the registry lock, so that
    concurrent gates act one after another; returns the decision and the champion metrics it compared with.

    champion_metrics_of(champion_version, recorded_metrics, tags) gives the metrics to compare with (default: the
    recorded ones). A version that is already champion (an earlier gate moved the alias and stopped before its
    verdict) gets its promotion finished, not compared with itself."""
    version = str(version)
    with _locked(client, model_name):
        champion_version, champion, tags = champion_metrics(client, model_name)
        if champion_version == version:
            recorded = client.get_model_version(model_name, version).tags
            value = recorded.get("champion_metric_value", "none")
            decision = Decision(
                True,
                recorded.get("promotion_reason", f"v{version} was already {CHAMPION} when its gate ran"),
                cfg.primary_metric,
                float(metrics[cfg.primary_metric]),
                None if value == "none" else float(value),
                None
                if recorded.get("champion_version_at_gate", "none") == "none"
                else recorded["champion_version_at_gate"],
            )
            champion = None
        else:
            if champion_version is not None and champion_metrics_of is not None:
                champion = champion_metrics_of(champion_version, champion, tags)
            decision = decide_promotion(metrics, champion, cfg, champion_version)
        apply_decision(client, model_name, version, decision)
    return decision, champion


def register_and_gate(
    client,
    model_name: str,
    source_run_id: str,
    model_uri: str | None,
    tags: dict[str, str],
    metrics: dict[str, float],
    cfg: RegisterConfig,
    champion_metrics_of: Any = None,
) -> tuple[str, Decision | None, dict[str, float] | None]:
    """Register the model of a training run (once) and gate it; resumes whatever an earlier, interrupted call for
    the same run left undone. Returns (version, decision, champion metrics compared with); the decision is None
    when the run's version was already decided. model_uri may be None only when the run is already registered."""
    with _locked(client, model_name):
        mv = find_version(client, model_name, source_run_id)
        if mv is None:
            if model_uri is None:
                raise ValueError(f"{model_name}: run {source_run_id} has no version yet and no model_uri was given")
            mv, _ = register_challenger(client, model_name, model_uri, source_run_id, tags)
        elif mv.tags.get(DECISION_TAG) in FINAL_DECISIONS:
            return str(mv.version), None, None
        else:
            log.warning(
                "%s v%s has no final promotion decision (an earlier run stopped): finishing", model_name, mv.version
            )
            mv = _resume_challenger(client, model_name, mv)
        decision, champion = gate(client, model_name, str(mv.version), metrics, cfg, champion_metrics_of)
    return str(mv.version), decision, champion


def _promote(client, model_name: str, version: str, reason: str) -> str | None:
    """promote() without the lock. The alias moves first and the history follows, so a crash between the two
    leaves the history one short, which the next call for the same version completes."""
    version = str(version)
    known = [str(v.version) for v in _all_versions(client, model_name)]
    if version not in known:
        raise ValueError(f"{model_name} has no version {version} (versions: {', '.join(known) or 'none'})")
    previous = _alias(client, model_name, CHAMPION)
    history = _history(client, model_name)
    if previous != version:
        if previous is not None and history[-1:] != [previous]:
            # the alias was moved outside this module: keep the champion it replaced reachable by rollback
            history.append(previous)
        _set_alias(client, model_name, CHAMPION, version)
    repaired = history[-1:] != [version]
    if repaired:
        _set_history(client, model_name, [*history, version])
    if previous == version and not repaired and "promoted_reason" in client.get_model_version(model_name, version).tags:
        log.info("%s v%s is already %s; nothing to do", model_name, version, CHAMPION)
        return previous
    client.set_model_version_tag(model_name, version, "promoted_reason", reason)
    log.info("%s v%s is now %s (was %s): %s", model_name, version, CHAMPION, previous or "none", reason)
    return previous


def promote(client, model_name: str, version: str, reason: str) -> str | None:
    """Point alias champion at version and push it on the champion history; returns the champion before
    the call (None when there was none; version itself when it already was champion)."""
    with _locked(client, model_name):
        return _promote(client, model_name, version, reason)


def rollback(client, model_name: str, reason: str = "manual rollback") -> tuple[str, str]:
    """Give alias champion back to the previous champion; returns (demoted version, restored version).

    The change is recorded on the registry lock before anything moves, and the lock's release commits it: after a
    crash at any point, whoever takes the lock next finishes this rollback, and a re-run of rollback finishes it
    instead of rolling back a second time."""
    with _locked(client, model_name) as lock:
        if lock.finished is not None and lock.finished.get("op") == "rollback":
            return lock.finished["from"], lock.finished["to"]
        current = _alias(client, model_name, CHAMPION)
        if current is None:
            raise ValueError(f"{model_name} has no {CHAMPION}: nothing to roll back")
        history = _history(client, model_name)
        if history and history[-1] == current:
            history.pop()
        if not history:
            raise ValueError(f"nothing to roll back to: version {current} is the only champion so far")
        change = {"op": "rollback", "from": current, "to": history[-1], "reason": reason}
        lock.record(change)
        _apply_rollback(client, model_name, change)
    log.warning("%s: %s rolled back from v%s to v%s: %s", model_name, CHAMPION, current, change["to"], reason)
    return current, change["to"]


def _apply_rollback(client, model_name: str, change: dict[str, str]) -> None:
    """The rollback's writes, each safe to repeat: tags on the demoted version, the history, the alias, the tag on
    the restored version. Left alone when the champion is neither version any more (a later change won)."""
    demoted, restored, reason = change["from"], change["to"], change["reason"]
    champion = _alias(client, model_name, CHAMPION)
    if champion not in (demoted, restored):
        log.warning("%s: not finishing the rollback %s: the champion is v%s now", model_name, change, champion)
        return
    client.set_model_version_tag(model_name, demoted, "rolled_back", "true")
    client.set_model_version_tag(model_name, demoted, "rollback_reason", reason)
    history = _history(client, model_name)
    if history[-1:] == [demoted]:
        history.pop()
    _set_history(client, model_name, history)
    _set_alias(client, model_name, CHAMPION, restored)
    client.set_model_version_tag(model_name, restored, "restored_reason", f"rollback from v{demoted}: {reason}")


# --- reading the registry -----------------------------------------------------------------------------


def version_metrics(tags: dict[str, str]) -> dict[str, float]:
    """The eval metrics stored on a version as `metric.<name>` tags."""
    return {k.removeprefix(METRIC_PREFIX): float(v) for k, v in tags.items() if k.startswith(METRIC_PREFIX)}


def champion_metrics(client, model_name: str) -> tuple[str | None, dict[str, float] | None, dict[str, str]]:
    """(champion version, its eval metrics, its tags); (None, None, {}) when there is no champion yet."""
    try:
        version = _alias(client, model_name, CHAMPION)
    except MlflowException as err:
        if _not_found(err):
            return None, None, {}
        raise
    if version is None:
        return None, None, {}
    tags = dict(client.get_model_version(model_name, version).tags)
    return version, version_metrics(tags), tags


def _describe(mv: ModelVersion) -> dict[str, Any]:
    tags = dict(mv.tags)
    return {
        "version": str(mv.version),
        "run_id": mv.run_id,
        "source": mv.source,
        "status": mv.status,
        "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).isoformat(timespec="seconds"),
        "metrics": version_metrics(tags),
        "lineage": {k: tags[k] for k in LINEAGE_TAGS if k in tags},
        "tags": tags,
    }


def registry_status(client, model_name: str) -> dict[str, Any]:
    """Champion, challenger and champion history of model_name."""
    try:
        model = client.get_registered_model(model_name)
    except MlflowException as err:
        if _not_found(err):
            raise LookupError(
                f"no registered model {model_name!r} in the MLflow registry; run the pipeline first to register one"
            ) from None
        raise
    status: dict[str, Any] = {"model_name": model_name}
    for alias in (CHAMPION, CHALLENGER):
        version = model.aliases.get(alias)
        version = None if version is None else str(version)
        status[alias] = _describe(client.get_model_version(model_name, version)) if version else None
    status["champion_history"] = json.loads(model.tags.get(HISTORY_TAG, "[]"))
    return status
