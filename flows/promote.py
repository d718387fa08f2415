"""Promotion by hand: make a version champion, or give the champion back to the one before. Both are flows, so
each decision is a Prefect run with its log and a markdown artifact, beside the tags it leaves on the version."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from tasks import promotion, tracking
from tasks.config import load_params


@flow(name="rewardflow-promote")
def promote_flow(version: str, reason: str = "manual promotion", params_file: str = "params.yaml") -> str | None:
    """Alias champion -> `version`; returns the previous champion."""
    name = load_params(params_file).register.model_name
    previous = promotion.promote(tracking.open_client(), name, str(version), reason)
    message = f"{name}: champion v{previous or 'none'} -> v{version} ({reason})"
    get_run_logger().info(message)
    create_markdown_artifact(key="promotion", markdown=f"# Promotion\n\n{message}\n", description="manual promotion")
    return previous


@flow(name="rewardflow-rollback")
def rollback_flow(reason: str = "manual rollback", params_file: str = "params.yaml") -> tuple[str, str]:
    """Alias champion -> the previous champion; returns (demoted, restored)."""
    name = load_params(params_file).register.model_name
    demoted, restored = promotion.rollback(tracking.open_client(), name, reason)
    message = f"{name}: champion rolled back from v{demoted} to v{restored} ({reason})"
    get_run_logger().info(message)
    create_markdown_artifact(key="promotion", markdown=f"# Rollback\n\n{message}\n", description="rollback")
    return demoted, restored
