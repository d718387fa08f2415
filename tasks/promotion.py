"""The promotion gate: a new version registered as challenger (once per training run), compared with the champion
on the primary metric, and promoted or kept challenger; promotion and rollback by hand. Everything that reads the
champion and moves an alias runs under the registry lock (tasks/registry_lock.py), and every multi-step change has
a commit point, so a re-run after a crash finishes the job (tasks/registry.py describes the registry's tags).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from tasks.config import RegisterConfig
from tasks.registry import (
    CHALLENGER,
    CHAMPION,
    DECISION_TAG,
    alias_version,
    all_versions,
    champion_history,
    champion_metrics,
    decided,
    set_alias,
    set_champion_history,
    versions_tagged,
    wait_ready,
)
from tasks.registry_lock import Lock, check_held, gate_lock

log = logging.getLogger(__name__)


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
    found = versions_tagged(client, model_name, "source_run_id", source_run_id)
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
        mv = wait_ready(client, model_name, str(mv.version))
        set_alias(client, model_name, CHALLENGER, str(mv.version))
    log.info("registered %s v%s (run %s) as %s", model_name, mv.version, source_run_id, CHALLENGER)
    return mv, True


def _resume_challenger(client, model_name: str, mv: ModelVersion) -> ModelVersion:
    """A version an earlier run registered and left without a final decision: ready, and challenger unless a newer
    version took the alias since."""
    mv = wait_ready(client, model_name, str(mv.version))
    current = alias_version(client, model_name, CHALLENGER)
    if current is None or int(current) < int(mv.version):
        set_alias(client, model_name, CHALLENGER, str(mv.version))
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
    constant: dict[str, float] | None = None,
) -> Decision:
    """Promote when there is no champion, or when the challenger wins on cfg.primary_metric by the margin; with
    cfg.require_reading, never when the challenger is not past `constant` (the constant answer's metrics on the same
    held-out rows; tasks/reading.py)."""
    metric = cfg.primary_metric
    if metric not in challenger_metrics:
        raise ValueError(f"challenger has no {metric} metric (has: {', '.join(sorted(challenger_metrics))})")
    value = float(challenger_metrics[metric])
    if not math.isfinite(value):
        raise ValueError(f"challenger {metric} is {value}: cannot compare it with the champion")
    best_now = None if champion_metrics is None else champion_metrics.get(metric)
    if cfg.require_reading and constant is not None:
        from tasks.reading import not_past_constant

        if why := not_past_constant(challenger_metrics, constant):
            kept = "champion kept" if champion_metrics is not None else "no champion"
            reason = f"the challenger is {why}; {kept} (register.require_reading)"
            return Decision(False, reason, metric, value, best_now, champion_version)
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
    constant: dict[str, float] | None = None,
) -> tuple[Decision, dict[str, float] | None]:
    """Compare version with the current champion and apply the decision, all under the registry lock, so that
    concurrent gates act one after another; returns the decision and the champion metrics it compared with.

    champion_metrics_of(champion_version, recorded_metrics, tags) gives the metrics to compare with (default: the
    recorded ones); `constant`: the constant answer's metrics for register.require_reading. A version that is
    already champion (an earlier gate moved the alias and stopped before its verdict) gets its promotion finished,
    not compared with itself."""
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
            decision = decide_promotion(metrics, champion, cfg, champion_version, constant)
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
    constant: dict[str, float] | None = None,
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
        elif decided(mv):
            return str(mv.version), None, None
        else:
            log.warning(
                "%s v%s has no final promotion decision (an earlier run stopped): finishing", model_name, mv.version
            )
            mv = _resume_challenger(client, model_name, mv)
        decision, champion = gate(client, model_name, str(mv.version), metrics, cfg, champion_metrics_of, constant)
    return str(mv.version), decision, champion


def _promote(client, model_name: str, version: str, reason: str) -> str | None:
    """promote() without the lock. The alias moves first and the history follows, so a crash between the two
    leaves the history one short, which the next call for the same version completes."""
    version = str(version)
    known = [str(v.version) for v in all_versions(client, model_name)]
    if version not in known:
        raise ValueError(f"{model_name} has no version {version} (versions: {', '.join(known) or 'none'})")
    previous = alias_version(client, model_name, CHAMPION)
    history = champion_history(client, model_name)
    if previous != version:
        if previous is not None and history[-1:] != [previous]:
            # the alias was moved outside this module: keep the champion it replaced reachable by rollback
            history.append(previous)
        set_alias(client, model_name, CHAMPION, version)
    repaired = history[-1:] != [version]
    if repaired:
        set_champion_history(client, model_name, [*history, version])
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
        current = alias_version(client, model_name, CHAMPION)
        if current is None:
            raise ValueError(f"{model_name} has no {CHAMPION}: nothing to roll back")
        history = champion_history(client, model_name)
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
    champion = alias_version(client, model_name, CHAMPION)
    if champion not in (demoted, restored):
        log.warning("%s: not finishing the rollback %s: the champion is v%s now", model_name, change, champion)
        return
    client.set_model_version_tag(model_name, demoted, "rolled_back", "true")
    client.set_model_version_tag(model_name, demoted, "rollback_reason", reason)
    history = champion_history(client, model_name)
    if history[-1:] == [demoted]:
        history.pop()
    set_champion_history(client, model_name, history)
    set_alias(client, model_name, CHAMPION, restored)
    client.set_model_version_tag(model_name, restored, "restored_reason", f"rollback from v{demoted}: {reason}")
