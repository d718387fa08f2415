"""MLflow tracking: where runs go, one parent run per pipeline run with a nested run per stage, the resolved params
and the per-step metric logging (what each stage's outputs add is tasks/stage_outputs.py).

Runs are driven through `MlflowClient` with explicit run ids rather than MLflow's thread-local active run, so the
Prefect tasks that log can run in any thread. Training logs are read back from the stage's own report files after
the stage, so the stages stay free of MLflow and a `dvc repro` run logs nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tasks import telemetry
from tasks.config import Params

log = logging.getLogger(__name__)

DEFAULT_DB = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
PARENT_TAG = "mlflow.parentRunId"

# Bounded client behaviour: MLflow's defaults (7 retries, exponential backoff, 120 s timeout) keep a client
# waiting for minutes on a down server. Users can still override any of these in the environment.
CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    # MLflow prints "View run ... at <tracking URI>" to stdout; the pipeline prints its own summary
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
# scheme://user:password@ (greedy up to the last @ before the path) and secret-looking query values
_PASSWORD_RE = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*):[^/\s]*@")
_SECRET_QUERY_RE = re.compile(
    r"(?i)([?&](?:token|access_token|api_key|apikey|key|password|passwd|secret|sig)=)[^&#\s]*"
)


class TrackingUnavailable(RuntimeError):
    """The tracking server or store cannot be used; the message says which and what to do."""


# --- where ------------------------------------------------------------------------------------------------


def redact(text: str) -> str:
    """text with the password of every scheme://user:password@host, and secret-looking query values, as ***.

    >>> redact("http://user:secret@host:5000/?token=abc&x=1")
    'http://user:***@host:5000/?token=***&x=1'
    """
    return _SECRET_QUERY_RE.sub(r"\1***", _PASSWORD_RE.sub(r"\g<head>:***@", text))


def without_password(uri: str) -> tuple[str, str | None, str | None]:
    """(uri without user:password@, user, password); the uri unchanged when it carries no password."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri, None, None
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=host).geturl(), urllib.parse.unquote(parts.username or ""), parts.password


def tracking_uri(root: str | Path = ".") -> str:
    """MLFLOW_TRACKING_URI when set, else the project's SQLite file; never with a password in it (open_client
    hands a password found there to MLflow through MLFLOW_TRACKING_USERNAME/PASSWORD instead)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(root) / DEFAULT_DB).resolve()}"
    return without_password(uri)[0]


def _credentials_to_env() -> None:
    """Move user:password out of MLFLOW_TRACKING_URI into MLflow's own credential variables: with the password in
    the URI, MLflow repeats it in every error message and in the `View run` links it prints."""
    uri, user, password = without_password(os.environ.get("MLFLOW_TRACKING_URI", ""))
    if password is None:
        return
    os.environ.setdefault("MLFLOW_TRACKING_USERNAME", user or "")
    os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", urllib.parse.unquote(password))
    os.environ["MLFLOW_TRACKING_URI"] = uri
    log.info("tracking: credentials of %s passed to MLflow through MLFLOW_TRACKING_USERNAME/PASSWORD", redact(uri))


def health_problem(url: str, timeout: float = 5.0) -> str | None:
    """What is wrong with a server's `<url>/health` (MLflow's and Prefect's API both have one), or None when it
    answers 200 within `timeout` seconds."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout) as response:
            return None if response.status == 200 else f"HTTP {response.status}"
    except urllib.error.HTTPError as err:
        return f"HTTP {err.code}"
    except (urllib.error.URLError, OSError, ValueError) as err:
        return str(getattr(err, "reason", err))


def check_server(uri: str, timeout: float = 5.0) -> None:
    """Fail in seconds, with the address and what to do, when an http(s) tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    problem = health_problem(uri, timeout)
    if problem is None:
        return
    raise TrackingUnavailable(
        f"MLflow tracking server {redact(uri)} is unreachable ({redact(problem)}). Start it (e.g. `mlflow server "
        "--host 127.0.0.1 --port 5000`), fix MLFLOW_TRACKING_URI, or unset it to use the local sqlite:///mlflow.db"
    )


def open_client(root: str | Path = ".") -> Any:
    """An MlflowClient on the configured tracking store and registry, with bounded retries and timeouts."""
    telemetry.turn_off()
    for key, value in CLIENT_ENV.items():
        os.environ.setdefault(key, value)
    import mlflow

    _credentials_to_env()
    uri = tracking_uri(root)
    check_server(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.MlflowClient(uri, uri)


def connect(p: Params, root: str | Path = ".") -> tuple[Any, str]:
    """An MlflowClient on the configured store and the id of the pipeline's experiment (created if missing)."""
    from mlflow.exceptions import MlflowException

    client = open_client(root)
    uri = client.tracking_uri
    try:
        experiment = client.get_experiment_by_name(p.tracking.experiment_name)
        if experiment is not None:
            return client, experiment.experiment_id
        # A local store keeps artifacts in the project (mlartifacts/); a server decides for itself.
        location = None if uri.startswith(("http://", "https://")) else (Path(root) / ARTIFACTS_DIR).resolve().as_uri()
        return client, client.create_experiment(p.tracking.experiment_name, artifact_location=location)
    except MlflowException as err:
        raise TrackingUnavailable(f"MLflow tracking store {redact(uri)}: {redact(str(err))}") from err


# --- lineage tags ---------------------------------------------------------------------------------------------


def hash_files(paths: Iterable[str | Path]) -> str:
    """sha256 (first 16 hex digits) over the files' names relative to their folder and their bytes; a folder
    counts as all the files under it."""
    digest = hashlib.sha256()
    for path in paths:
        path = Path(path)
        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        for f in files:
            digest.update(str(f.relative_to(path) if path.is_dir() else f.name).encode() + b"\0")
            with f.open("rb") as handle:
                for block in iter(lambda h=handle: h.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def params_hash(p: Params) -> str:
    return hashlib.sha256(json.dumps(p.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def git_commit(root: str | Path = ".") -> str:
    """HEAD's commit, with '-dirty' when tracked files changed; 'unknown' outside a git repository."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def dvc_lock_hashes(root: str | Path = ".", stages: bool = True) -> dict[str, str]:
    """The md5 of every path data.dvc and (with stages) dvc.lock's stage outputs pin: content in the DVC cache, from
    which a registered model can be rebuilt. (Stage dependencies are git-tracked code or the data pinned here.)"""
    import yaml

    root = Path(root)
    hashes: dict[str, str] = {}
    if (root / "data.dvc").is_file():
        for out in yaml.safe_load((root / "data.dvc").read_text()).get("outs", []):
            hashes[out["path"]] = out["md5"]
    if stages and (root / "dvc.lock").is_file():
        for stage in (yaml.safe_load((root / "dvc.lock").read_text()).get("stages") or {}).values():
            for entry in stage.get("outs", []):
                if "md5" in entry:
                    hashes[entry["path"]] = entry["md5"]
    return hashes


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"grpo": {"lora": {"r": 16}}} -> {"grpo.lora.r": "16"}."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list | tuple) else str(value)
    return flat


# --- runs -----------------------------------------------------------------------------------------------------


def _log_batch(client: Any, run_id: str, metrics=(), params=()) -> None:
    """log_batch in chunks under MLflow's per-request limits (1000 metrics, 100 params)."""
    metrics, params = list(metrics), list(params)
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i : i + 100])


def log_params(client: Any, run_id: str, values: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    _log_batch(client, run_id, params=[Param(k, str(v)[:6000]) for k, v in values.items()])


def log_metrics(client: Any, run_id: str, values: Mapping[str, float], step: int = 0) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    _log_batch(client, run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])


def log_step_metrics(client: Any, run_id: str, logs: Iterable[Mapping[str, float]]) -> int:
    """One MLflow metric point per trainer log entry and key (loss, lr, rewards/<fn>/mean|std, reward_stats/...)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    points = [
        Metric(key, float(value), now, int(entry["step"]))
        for entry in logs
        for key, value in entry.items()
        if key != "step" and isinstance(value, int | float)
    ]
    _log_batch(client, run_id, metrics=points)
    return len(points)


def start_parent_run(client: Any, experiment_id: str, p: Params, tags: Mapping[str, str]) -> str:
    """The pipeline run: every resolved param (flattened) and the lineage tags."""
    run = client.create_run(experiment_id, run_name="pipeline", tags={"rewardflow.kind": "pipeline", **tags})
    log_params(client, run.info.run_id, flatten(p.to_dict()))
    return run.info.run_id


def start_stage_run(client: Any, parent: str, experiment_id: str, stage: str, p: Params) -> str:
    """A nested run named after the stage, with its params.yaml section."""
    run = client.create_run(
        experiment_id, run_name=stage, tags={PARENT_TAG: parent, "rewardflow.kind": "stage", "stage": stage}
    )
    section = p.to_dict().get(stage)
    if isinstance(section, Mapping):
        log_params(client, run.info.run_id, flatten(section, f"{stage}."))
    return run.info.run_id


def end_run(client: Any, run_id: str, ok: bool) -> None:
    """FINISHED, or FAILED; KILLED when called while a stop (KeyboardInterrupt: Ctrl-C, or flows.stopping's
    SIGTERM) unwinds. A run that ends badly takes its still-running nested runs with it."""
    import sys

    status = "FINISHED" if ok else "KILLED" if isinstance(sys.exc_info()[1], KeyboardInterrupt) else "FAILED"
    client.set_terminated(run_id, status)
    if not ok:
        experiment_id = client.get_run(run_id).info.experiment_id
        filter_string = f"tags.{PARENT_TAG} = '{run_id}' and attributes.status = 'RUNNING'"
        for child in client.search_runs([experiment_id], filter_string=filter_string):
            client.set_terminated(child.info.run_id, status)


def find_stage_run(client: Any, experiment_id: str, stage: str, output_hash: str) -> str | None:
    """The first run of `stage` that produced outputs with this hash: the source of a checkpoint reused later."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.stage = '{stage}' and tags.output_hash = '{output_hash}' and tags.skipped = 'false'",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None
