"""The Prefect server a command's flow runs report to, checked before the first one starts.

With PREFECT_API_URL set (in the environment or the active Prefect profile), every flow run talks to that server;
when it does not answer, Prefect's client fails deep inside the flow engine with a traceback. The commands that
run flows (`run`, `retrain`, `serve`, `promote`, `rollback`) ask first and fail with one message instead. Without
PREFECT_API_URL, `rewardflow run` starts Prefect's temporary server: nothing to check.
"""

from __future__ import annotations

from tasks.tracking import health_problem, redact


class PrefectUnavailable(RuntimeError):
    """The configured Prefect server does not answer; the message names it and what to do."""


def configured_url() -> str | None:
    """PREFECT_API_URL as Prefect resolves it (environment, then the active profile), or None."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def check(timeout: float = 5.0) -> None:
    """Return when no Prefect server is configured or the configured one answers its health check; else raise
    PrefectUnavailable within `timeout` seconds."""
    url = configured_url()
    if url is None:
        return
    problem = health_problem(url, timeout)
    if problem is None:
        return
    raise PrefectUnavailable(
        f"Prefect server {redact(url)} (PREFECT_API_URL) is unreachable ({redact(problem)}). Start it (`prefect "
        "server start`), fix PREFECT_API_URL, or unset it (`prefect config unset PREFECT_API_URL`): `rewardflow "
        "run` then starts a temporary server of its own (`rewardflow serve` needs a running one)"
    )
