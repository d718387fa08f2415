"""Someone hears about it: every promotion decision, and every failed retraining run, through a Prefect
notification block.

`notify.block` in params.yaml names a saved block as "<block-type-slug>/<block-name>" (`slack-webhook/ml-team`,
`custom-webhook/alerts`, `microsoft-teams-webhook/...`, `sendgrid-email/...`); empty, the default, sends nothing.
A notification that cannot be sent is logged as a warning and never fails the run it reports on.
"""

from __future__ import annotations

import logging
from typing import Any

from tasks.config import load_params

log = logging.getLogger(__name__)

STAGE_NOTE = "rewardflow stage: "
_MAX_ERROR_CHARS = 2000


def mark_stage(err: BaseException, stage: str) -> None:
    """Note on the exception which stage raised it, for the failure notification (once: the innermost wins)."""
    if not any(note.startswith(STAGE_NOTE) for note in getattr(err, "__notes__", ())):
        err.add_note(f"{STAGE_NOTE}{stage}")


def send(block: str, subject: str, body: str) -> bool:
    """Send through the saved notification block `block`; False (and a warning) when it could not be sent."""
    if not block:
        return False
    from prefect.blocks.core import Block

    try:
        target = Block.load(block)
        if not hasattr(target, "notify"):
            raise TypeError(f"block {block} is a {type(target).__name__}, not a notification block")
        target.notify(body, subject)
    except Exception as err:  # a notification must never fail the run it reports on
        log.warning("notification through Prefect block %s failed: %s: %s", block, type(err).__name__, err)
        return False
    log.info("notified through Prefect block %s: %s", block, subject)
    return True


def _this_flow_run() -> list[str]:
    """Lines naming the current flow run and, for a subflow, the run that started it (the scheduled run)."""
    from prefect.runtime import flow_run

    lines = [f"flow run: {flow_run.get_flow_name()}/{flow_run.get_name()} ({flow_run.get_id()})"]
    root = flow_run.get_root_flow_run_id()
    if root and str(root) != str(flow_run.get_id()):
        lines.append(f"started by flow run: {_flow_run_name(root)} ({root})")
    return lines


def _flow_run_name(flow_run_id: Any) -> str:
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(flow_run_id)
            return f"{client.read_flow(run.flow_id).name}/{run.name}"
    except Exception:  # the name is a courtesy; the id is what identifies the run
        return "?"


def promotion(block: str, model_name: str, registration: Any) -> bool:
    """A new version's gate decision: promoted to champion, or champion kept, with the reason (both values)."""
    if not block or registration.decision is None:
        return False
    decision = registration.decision
    kept = f"not promoted: champion v{decision.champion_version} kept"
    verdict = "promoted to champion" if decision.promote else kept
    subject = f"rewardflow: {model_name} version {registration.version} {verdict}"
    body = "\n".join(
        [
            *_this_flow_run(),
            f"model: {model_name} version {registration.version}",
            f"decision: {'promoted' if decision.promote else 'kept'}",
            f"reason: {decision.reason}",
            f"{decision.metric}: challenger {decision.challenger_value:.4f}, champion "
            + ("none" if decision.champion_value is None else f"{decision.champion_value:.4f}"),
        ]
    )
    return send(block, subject, body)


def failed_run(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect on_failure / on_crashed hook: which run, which stage, what error."""
    try:
        block = load_params(flow_run.parameters.get("params_file", "params.yaml")).notify.block
    except Exception as err:  # the params themselves may be what failed: nothing says where to send
        log.warning("failure notification not sent: params unreadable: %s", err)
        return
    if not block:
        return
    err = state.result(raise_on_failure=False)
    stage = "none (the flow itself; see the error)"
    if isinstance(err, BaseException):
        notes = [n for n in getattr(err, "__notes__", ()) if n.startswith(STAGE_NOTE)]
        stage = notes[0].removeprefix(STAGE_NOTE) if notes else stage
        error = f"{type(err).__name__}: {err}"
    else:
        error = state.message or state.name
    subject = f"rewardflow: {flow.name} run {flow_run.name} {state.name.lower()} at stage {stage}"
    body = "\n".join(
        [
            f"flow run: {flow.name}/{flow_run.name} ({flow_run.id})",
            f"state: {state.name}",
            f"stage: {stage}",
            f"error: {error[:_MAX_ERROR_CHARS]}",
        ]
    )
    send(block, subject, body)
