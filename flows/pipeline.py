"""The training pipeline flow: validate -> sft -> grpo -> evaluate -> validation_eval -> register, tracked in MLflow.

The run holds the project's DVC lock throughout (tasks/projectlock: one pipeline at a time per checkout) and pins
the data before any stage (tasks/pinning). A stage DVC sees as up to date (same data, params section, code and
upstream outputs) is skipped, and a stage that ran is recorded in dvc.lock, so the repository ends as `dvc repro`
would leave it. Retries only on tracking calls (a server hiccup); a validation failure or a bad param fails at once.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows import notify, stopping
from tasks import dvcfile, pinning, projectlock, stage_outputs, tracking
from tasks.config import Params, load_params
from tasks.evaluation import in_table_order
from tasks.lineage import Lineage
from tasks.metric_table import SHOWN
from tasks.stages import STAGES, pipeline_stages


def _tracking_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a tracking call only when the tracking server or the disk failed, never on a user error."""
    from mlflow.exceptions import MlflowException

    try:
        state.result()
    except (MlflowException, ConnectionError, TimeoutError, OSError) as err:
        return not isinstance(err, FileNotFoundError)
    except BaseException:
        return False
    return False


# The libraries the stages import, in import order of the first stages (validate, then sft and grpo).
WARM_UP_IMPORTS = ("great_expectations", "torch", "transformers", "datasets", "trl", "peft")


def warm_up(p: Params) -> None:
    """Before the flow: start Prefect's temporary server in a thread (10-20 s, nearly all of it waiting on the
    server's subprocess) and meanwhile, in this thread, open the MLflow store (on a first run, create it: ~5 s of
    migrations) and import the stages' heavy libraries (~6 s). Returns once the server answers. With a Prefect
    server configured (PREFECT_API_URL) there is no wait to fill: only the MLflow store is opened.

    Only the calling thread imports: what the server thread runs is imported here before it starts. (Importing in
    two threads at once broke sqlalchemy's circular imports: "partially initialized module".) Errors are left to
    the real calls, which report them properly: a server that failed to start is started again by the flow."""
    from prefect.settings import PREFECT_API_URL

    server_thread = None
    if not PREFECT_API_URL.value():  # the flow would start a temporary server: start it now
        import encodings.idna  # noqa: F401  (httpx's first connection to 127.0.0.1 imports it)

        from prefect.logging import get_logger
        from prefect.server.api.server import SubprocessASGIServer

        # The server logs through Prefect's console handler, which imports parts of rich on its first line: emit
        # that first line here, in this thread.
        get_logger("rewardflow").info("starting Prefect's temporary server; loading the stages' libraries meanwhile")

        server = SubprocessASGIServer()  # the instance the flow's client will find running

        def start() -> None:
            stopping.shield_from_ctrl_c()  # the server outlives a Ctrl-C long enough to record the cancellation
            with contextlib.suppress(Exception):
                server.start()

        server_thread = threading.Thread(target=start, name="rewardflow-prefect-server", daemon=True)
        server_thread.start()
    with contextlib.suppress(Exception):
        tracking.connect(p, Path.cwd())
    if server_thread is None:
        return  # nothing to wait for: each stage that runs imports what it needs (none, for the stages DVC skips)
    for module in WARM_UP_IMPORTS:
        with contextlib.suppress(Exception):
            importlib.import_module(module)
    server_thread.join()


TRACKING_RETRIES = dict(retries=2, retry_delay_seconds=3, retry_condition_fn=_tracking_error)


@dataclass
class Pipeline:
    """What every task of one pipeline run shares: params, DVC state and the MLflow runs."""

    p: Params
    root: Path
    lineage: Lineage
    client: Any
    experiment_id: str
    run_id: str
    lineage_tags: dict[str, str]
    data_pin: pinning.DataPin
    stage_runs: dict[str, str] = field(default_factory=dict)


@dataclass
class StageResult:
    name: str
    status: str  # "ran" or "skipped"
    seconds: float
    detail: str = ""


# --- tasks ------------------------------------------------------------------------------------------------------


@task(cache_policy=NO_CACHE)
def prepare_data(p: Params, lineage: Lineage) -> str:
    """The embedded task's files where the configured ones are missing (deterministic, pinned by data.dvc): all of
    them on a fresh clone, or only the validation split beside the embedded train and held-out files; all of them
    when the files are the embedded task of another task.kind. A missing file beside data of another task fails
    naming it and what to do (tasks/splits.py), writing nothing."""
    from tasks.splits import complete_embedded

    written = complete_embedded(p.paths, p.task)
    if not written:
        return "present"
    lineage.pin_generated_data()
    files = p.paths.data_files()
    get_run_logger().info("generated the embedded data set's %s", ", ".join(files[split] for split in written))
    return "generated"


@task(cache_policy=NO_CACHE)
def pin_data(p: Params, lineage: Lineage) -> pinning.DataPin:
    """The data files as data.dvc pins them: changed ones pinned now (data.pin: pin) once they pass the data gate,
    or nothing trains (refuse, or a failed gate: data.dvc and the DVC cache stay as they were)."""
    from tasks.validation import ValidationFailed, require_valid

    try:
        pin = pinning.check_data(lineage.root, p.paths, p.data.pin, gate=lambda: require_valid(p))
    except ValidationFailed as err:
        notify.mark_stage(err, "validate")
        raise
    except BaseException as err:
        notify.mark_stage(err, "data pin")
        raise
    get_run_logger().info("data: %s", pin.message)
    return pin


@task(cache_policy=NO_CACHE, **TRACKING_RETRIES)
def open_stage_run(pipe: Pipeline, name: str) -> str:
    run_id = tracking.start_stage_run(pipe.client, pipe.run_id, pipe.experiment_id, name, pipe.p)
    pipe.stage_runs[name] = run_id
    return run_id


@task(cache_policy=NO_CACHE)
def run_stage(pipe: Pipeline, name: str) -> StageResult:
    """One stage of dvc.yaml, unless DVC says it is up to date; its MLflow run ends FAILED when it fails."""
    logger = get_run_logger()
    if pipe.lineage.is_current(name):
        logger.info("%s: skipped: DVC says its data, params, code and upstream outputs are unchanged", name)
        return StageResult(name, "skipped", 0.0)
    started = time.perf_counter()
    try:
        STAGES[name].run(pipe.p)
    except BaseException as err:
        notify.mark_stage(err, name)
        tracking.end_run(pipe.client, pipe.stage_runs[name], ok=False)
        raise
    pipe.lineage.record(name)
    seconds = time.perf_counter() - started
    logger.info("%s: done in %.1fs", name, seconds)
    return StageResult(name, "ran", seconds)


@task(cache_policy=NO_CACHE, **TRACKING_RETRIES)
def log_stage(pipe: Pipeline, result: StageResult) -> None:
    """The stage's metrics, reports and plots; for a checkpoint, its hash and the run that first produced it."""
    client, run_id = pipe.client, pipe.stage_runs[result.name]
    tags = {"skipped": str(result.status == "skipped").lower(), "seconds": f"{result.seconds:.1f}"}
    models = Path(pipe.p.paths.models_dir)
    checkpoints = [f for f in dvcfile.declared_paths(pipe.p, result.name, "outs") if f.is_relative_to(models)]
    if checkpoints and all(f.is_dir() for f in checkpoints):
        tags["output_hash"] = tracking.hash_files(checkpoints)
        source = tracking.find_stage_run(client, pipe.experiment_id, result.name, tags["output_hash"])
        if result.status == "skipped" and source:
            tags["reused_from_run_id"] = source
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    stage = STAGES[result.name]
    if result.status == "ran" or stage.log_when_skipped:
        stage_outputs.log_stage_outputs(client, run_id, stage, pipe.p)
    tracking.end_run(client, run_id, ok=True)


@task(cache_policy=NO_CACHE)
def push_outputs(pipe: Pipeline) -> str:
    """The data pin and the recorded stages' outputs to the default DVC remote; a failure is reported, not raised."""
    pushed = pinning.push(pipe.root, pipe.lineage.active, pipe.data_pin.dvc_file)
    pipe.client.set_tag(pipe.run_id, "dvc_push", pushed)
    get_run_logger().info("dvc push: %s", pushed)
    return pushed


@task(cache_policy=NO_CACHE, **TRACKING_RETRIES)
def register(pipe: Pipeline, pushed: str) -> Any:
    """Log and register the GRPO model (once per training run) and apply the promotion gate."""
    from tasks.registration import run_register

    run_id = tracking.start_stage_run(pipe.client, pipe.run_id, pipe.experiment_id, "register", pipe.p)
    grpo_run = pipe.stage_runs["grpo"]
    source = pipe.client.get_run(grpo_run).data.tags.get("reused_from_run_id") or grpo_run
    # what the version can be rebuilt from: dvc.lock's hashes only when this run recorded its stages there
    dvc_tags = pinning.version_tags(pipe.root, pipe.data_pin, pipe.lineage.active)
    tags = {**pipe.lineage_tags, **dvc_tags, "dvc_push": pushed}
    try:
        result = run_register(pipe.client, pipe.p, run_id, source, tags)
    except BaseException as err:
        notify.mark_stage(err, "register")
        tracking.end_run(pipe.client, run_id, ok=False)
        raise
    pipe.client.set_tag(run_id, "skipped", str(not result.created).lower())
    pipe.client.set_tag(run_id, "model_version", result.version)
    tracking.end_run(pipe.client, run_id, ok=True)
    get_run_logger().info("register: %s", result.summary)
    return result


@task(cache_policy=NO_CACHE)
def announce(pipe: Pipeline, registration: Any) -> bool:
    """The gate's decision on a new version, through the notification block of params.yaml `notify` (if any)."""
    return notify.promotion(pipe.p.notify.block, pipe.p.register.model_name, registration)


@task(cache_policy=NO_CACHE)
def publish(pipe: Pipeline, results: Sequence[StageResult], registration: Any, pushed: str) -> dict[str, Any]:
    """The evaluation table and the promotion decision as Prefect markdown artifacts; the run's summary."""
    import json

    report = json.loads((Path(pipe.p.paths.reports_dir) / "eval.json").read_text())
    columns: dict[str, dict[str, float]] = dict(report)
    if registration.champion_metrics is not None:
        columns[f"champion v{registration.champion_version}"] = registration.champion_metrics
    columns = in_table_order(columns)
    header = "| metric | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns) + "\n"
    rows = "".join(
        f"| {m} | " + " | ".join(f"{c.get(m, float('nan')):.3f}" for c in columns.values()) + " |\n"
        for m in SHOWN
    )
    create_markdown_artifact(
        key="evaluation", markdown=f"# Held-out evaluation\n\n{header}{rows}", description="SFT vs GRPO vs champion"
    )
    create_markdown_artifact(
        key="promotion",
        markdown=f"# Promotion\n\n**{pipe.p.register.model_name}**: {registration.summary}\n",
        description="the registry gate's decision",
    )
    return {
        "stages": [(r.name, r.status, r.seconds) for r in results],
        "metrics": columns,
        "registration": registration.summary,
        "model_version": registration.version,
        "promoted": bool(registration.decision and registration.decision.promote),
        "data": pipe.data_pin.message,
        "dvc_push": pushed,
        "mlflow_run_id": pipe.run_id,
        "tracking_uri": tracking.tracking_uri(pipe.root),
    }


# --- the flow ---------------------------------------------------------------------------------------------------


@contextmanager
def tracked_pipeline(p: Params, lineage: Lineage, data_pin: pinning.DataPin) -> Iterator[Pipeline]:
    """The MLflow parent run around a pipeline run: FINISHED when the body succeeds, FAILED when it raises. It
    carries the data pin (tag data_pin, artifact data.dvc: what a rebuild restores when it was not committed)."""
    root = lineage.root.resolve()
    client, experiment_id = tracking.connect(p, root)
    tags = {
        "git_commit": tracking.git_commit(root),
        "params_hash": tracking.params_hash(p),
        "data_hash": tracking.hash_files(p.paths.data_files().values()),
        "heldout_hash": tracking.hash_files([p.paths.heldout_file]),
        "data_pin": data_pin.message,
    }
    run_id = tracking.start_parent_run(client, experiment_id, p, tags)
    if data_pin.dvc_file:  # under its repository path, for `rewardflow lineage` to restore
        folder = str(Path(data_pin.dvc_file).parent)
        client.log_artifact(run_id, str(root / data_pin.dvc_file), None if folder == "." else folder)
    try:
        yield Pipeline(p, root, lineage, client, experiment_id, run_id, tags, data_pin)
    except BaseException:
        tracking.end_run(client, run_id, ok=False)
        raise
    if (root / "dvc.lock").is_file():
        client.log_artifact(run_id, str(root / "dvc.lock"))
    tracking.end_run(client, run_id, ok=True)


def _flow_run_label() -> str:
    from prefect.runtime import flow_run

    return f"Prefect flow run {flow_run.get_flow_name()}/{flow_run.get_name()}"


@flow(name="rewardflow-pipeline", **stopping.FLOW_HOOKS)  # a stop signal: Cancelled, and cleaned up
def training_pipeline(params_file: str = "params.yaml", overrides: list[str] | None = None) -> dict[str, Any]:
    """The stages of tasks/stages.py (validate -> sft -> grpo -> evaluate -> validation_eval), each skipped when DVC
    says it is up to date, then register."""
    p = load_params(params_file, overrides or ())
    lineage = Lineage.for_params(params_file, overrides)
    with projectlock.hold(lineage.root, _flow_run_label()):
        prepare_data(p, lineage)
        data_pin = pin_data(p, lineage)
        with tracked_pipeline(p, lineage, data_pin) as pipe:
            results = []
            for name in (stage.name for stage in pipeline_stages()):
                open_stage_run(pipe, name)
                result = run_stage.with_options(name=name)(pipe, name)
                log_stage(pipe, result)
                results.append(result)
            pushed = push_outputs(pipe)
            registration = register(pipe, pushed)
            announce(pipe, registration)
            return publish(pipe, results, registration, pushed)
