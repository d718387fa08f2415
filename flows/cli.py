"""The `rewardflow` command line."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import click
import typer
import yaml
from typer.core import TyperGroup

from flows import stopping
from tasks.config import DATA_SPLITS, Params, ParamsError, load_params
from tasks.data import DataFileError, generate_dataset
from tasks.stages import STAGES
from tasks.validation import ValidationFailed


def _stage_command(name: str) -> click.Command:
    """`rewardflow <stage>`: run one stage of the table (tasks/stages.py) with the params file and overrides."""

    def command(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
        _run_stage(name, params, set_)

    one = typer.Typer(add_completion=False)
    one.command(name, help=STAGES[name].help)(command)
    return typer.main.get_command(one)


class _StageCommands(TyperGroup):
    """The commands defined below, and one per stage of the table that has no command of its own, read from the
    table when the CLI runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        own = super().list_commands(ctx)
        return [*own, *(name for name in STAGES if name not in own)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in STAGES:
            return _stage_command(cmd_name)
        return command


app = typer.Typer(
    cls=_StageCommands,
    help="rewardflow: SFT + GRPO pipeline that teaches a model to emit structured scores.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(
    help="The data files: the embedded data set, and a validation split carved from train.", no_args_is_help=True
)
app.add_typer(data_app, name="data")

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params file")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-S", help="override, e.g. --set grpo.temperature=0.8 (repeatable)"),
]
log = logging.getLogger("rewardflow")


def _load(params: Path, overrides: list[str] | None):
    try:
        return load_params(params, overrides or ())
    except ParamsError as err:
        typer.secho(f"error: {err}", err=True, fg="red")
        raise typer.Exit(2) from None


# Commands that run Prefect flows leave log formatting to Prefect (task run names, run logs in the UI).
FLOW_COMMANDS = {"run", "serve", "retrain", "promote", "rollback"}
# The exit status of a pipeline refused because another one holds the checkout (tasks/projectlock).
BUSY_EXIT_CODE = 75


class _NoTracebackFor(logging.Filter):
    """Drops the traceback from a log record of one of these exceptions (Prefect's engines log every exception a
    flow or task run raises with its traceback): the command reports it as one message."""

    def __init__(self, errors: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self.errors = errors

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], self.errors):
            record.exc_info, record.exc_text = None, None
        return True


@app.callback()
def _main(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="show the traceback of a failure the data, params or a service caused")
    ] = False,
) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    if ctx.invoked_subcommand in FLOW_COMMANDS:
        logging.getLogger("tasks").setLevel(level)
        if not debug:
            quiet = _NoTracebackFor(_pipeline_errors())
            for name in ("prefect.flow_runs", "prefect.task_runs"):
                logging.getLogger(name).addFilter(quiet)
        return
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    # libraries that log their own internals at INFO (Great Expectations: ~200 lines per import)
    for chatty in ("httpx", "great_expectations"):
        logging.getLogger(chatty).setLevel(logging.WARNING)


@data_app.command("generate")
def data_generate(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Write the embedded task's train, held-out and validation files (deterministic: same seeds, same bytes)."""
    p = _load(params, set_)
    written = generate_dataset(p.paths, p.task)
    rows = {split: getattr(p.task, f"n_{split}") for split in written}  # task.n_train, n_heldout, n_validation
    typer.echo("wrote " + ", ".join(f"{path} ({rows[split]} rows)" for split, path in written.items()))


@data_app.command("split")
def data_split(
    fraction: Annotated[
        float, typer.Option(help="share of the train rows to move, in (0, 0.5]; chosen by a hash of the prompt")
    ] = 0.05,
    force: Annotated[bool, typer.Option("--force", help="replace an existing validation file")] = False,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Carve a validation split out of your train file: move the rows whose prompt's sha256 falls below the fraction
    from paths.train_file into paths.validation_file (a row's split never depends on row order or on rows added
    later). Refuses, writing nothing, when the validation file exists (unless --force)."""
    from tasks.splits import SplitRefused, carve_validation

    p = _load(params, set_)
    try:
        carved = carve_validation(p.paths, fraction, force)
    except SplitRefused as err:
        typer.secho(f"error: {err}", err=True, fg="red")
        raise typer.Exit(2) from None
    except DataFileError as err:
        typer.secho(f"error: {err}", err=True, fg="red")
        raise typer.Exit(1) from None
    replaced = " (replaced)" if carved.replaced else ""
    typer.echo(
        f"moved {carved.moved} of {carved.moved + carved.kept} rows from {carved.train_file} to "
        f"{carved.validation_file}{replaced}; {carved.kept} rows stay in train. The next `rewardflow run` pins the "
        f"new files in data.dvc (or `dvc add {p.paths.data_dir}` now); commit data.dvc afterwards"
    )


@app.command("params")
def show_params(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Print the resolved, validated params."""
    typer.echo(yaml.safe_dump(_load(params, set_).to_dict(), sort_keys=False))


@contextlib.contextmanager
def _stage_data(name: str, p: Params) -> Iterator[None]:
    """A stage command's body, on the data as data.dvc pins it (tasks/pinning.stage_guard: the pipeline's check).
    A refusal, a failed data gate or a failure the files cause is one message (exit 1); a checkout another
    pipeline holds, exit 75."""
    from tasks.pinning import stage_guard
    from tasks.projectlock import ProjectBusy

    try:
        with stage_guard(Path.cwd(), p, f"`rewardflow {name}`"):
            yield
    except ProjectBusy as err:
        typer.secho(f"not started: {err}", err=True, fg="red")
        raise typer.Exit(BUSY_EXIT_CODE) from None
    except ParamsError as err:  # a value only the loaded model can judge (tasks.modeling.peft_config_for)
        typer.secho(f"error in stage {name}: {err}", err=True, fg="red")
        raise typer.Exit(2) from None
    except _pipeline_errors() as err:
        typer.secho(f"error in stage {name}: {err}", err=True, fg="red")
        raise typer.Exit(1) from None


@stopping.stops_cleanly("stage")
def _run_stage(name: str, params: Path, set_: list[str] | None) -> None:
    p = _load(params, set_)
    with _stage_data(name, p):
        STAGES[name].run(p)


@app.command("validate")
def validate(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="files to check instead of the configured ones: train, then held-out, then validation"),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="write the check's validation.json and Data Docs (data_docs/) into this folder"),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Stage validate: the Great Expectations data gate on the configured files, written to the reports folder
    (DVC outputs). Given files (or --out), a check instead: the report goes to the terminal (and --out), never to
    the pipeline's outputs. Exit 0 when valid, 1 when not."""
    from tasks.validation import validate_files

    p = _load(params, set_)
    files = list(paths or p.paths.data_files().values())
    if len(files) > len(DATA_SPLITS):
        typer.secho("error: give at most three files: train, then held-out, then validation", err=True, fg="red")
        raise typer.Exit(2)
    reports = Path(p.paths.reports_dir)
    is_stage = not paths and out is None
    if out is not None and out.resolve() == reports.resolve():
        typer.secho(
            f"error: --out {out} is the validate stage's output folder (paths.reports_dir), tracked by DVC; "
            "writing a check there would make the pipeline re-run: pick another folder",
            err=True,
            fg="red",
        )
        raise typer.Exit(2)
    if is_stage:  # the data the stage checks is the data every later stage trains on: pinned as they are
        configured = p.paths.data_files()
        with _stage_data("validate", p):
            gate = validate_files(configured["train"], configured["heldout"], p, reports, configured["validation"])
    else:
        try:
            train, heldout, validation = files + [None] * (len(DATA_SPLITS) - len(files))
            gate = validate_files(train, heldout, p, out, validation)
        except DataFileError as err:
            typer.secho(f"invalid: {err}", err=True, fg="red")
            raise typer.Exit(1) from None
    typer.echo(gate.format())
    raise typer.Exit(0 if gate.passed else 1)


def _print_summary(summary: dict, seconds: float) -> None:
    w = max(10, *(len(name) for name, _, _ in summary["stages"]))
    typer.echo(f"\n{'stage':<{w}} status                    time")
    for name, status, stage_seconds in summary["stages"]:
        typer.echo(f"{name:<{w}} {status:<24} {stage_seconds:6.1f}s")
    typer.echo(f"{'register':<{w}} {summary['registration']}")
    for key in ("data", "dvc_push"):
        if summary.get(key):
            typer.echo(f"{key:<{w}} {summary[key]}")
    from tasks.metric_table import SHOWN

    width = {k: max(len(k), 8) for k in SHOWN}
    typer.echo("\nheld-out         " + " ".join(f"{k:>{width[k]}}" for k in SHOWN))
    from tasks.evaluation import TRAINED, in_table_order
    from tasks.reading import reading_warnings

    for name, metrics in in_table_order(summary["metrics"]).items():
        typer.echo(f"{name:<16} " + " ".join(f"{metrics.get(k, float('nan')):>{width[k]}.3f}" for k in SHOWN))

    for line in reading_warnings(summary["metrics"], TRAINED):
        typer.secho(f"warning: {line}", fg="yellow")
    uri = summary["tracking_uri"]
    typer.echo(
        f"\npipeline finished in {seconds:.1f}s. Where to look next:\n"
        f"  MLflow UI:   make ui  (mlflow ui --backend-store-uri {uri} --host 127.0.0.1)\n"
        f"               pipeline run {summary['mlflow_run_id'] or 'none (nothing changed, no flow started)'}\n"
        "  Prefect UI:  prefect server start, then http://127.0.0.1:4200 (`rewardflow serve` runs appear there)\n"
        "  registry:    rewardflow status; load with mlflow.pyfunc.load_model('models:/<name>@champion')\n"
        "  reports:     reports/eval.json, reports/data_docs/index.html; `dvc metrics show`, `dvc plots show`"
    )


@app.command("run")
@stopping.stops_cleanly("pipeline")
def run(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    always_flow: Annotated[
        bool, typer.Option("--always-flow", help="start the Prefect flow (and record a run) even when nothing changed")
    ] = False,
) -> None:
    """Run the pipeline flow: validate, sft, grpo, evaluate, validation_eval, register. Stages DVC sees as up to
    date are skipped; when nothing changed at all, no flow starts."""
    import time

    p = _load(params, set_)  # a bad params file fails here, before any server starts
    from flows.unchanged import unchanged_summary
    from tasks.projectlock import ProjectBusy, hold

    started = time.perf_counter()
    try:
        # the checkout is this run's from before its first look at DVC state to its last write
        with hold(Path.cwd(), "rewardflow run"):
            summary = None if always_flow else unchanged_summary(str(params), set_)
            if summary is None:
                from flows.pipeline import training_pipeline, warm_up

                _preflight(p)
                warm_up(p)
                summary = training_pipeline(str(params), list(set_ or []))
    except ProjectBusy as err:
        typer.secho(f"not started: {err}", err=True, fg="red")
        raise typer.Exit(BUSY_EXIT_CODE) from None
    except _pipeline_errors() as err:
        typer.secho(f"pipeline failed: {err}", err=True, fg="red")
        raise typer.Exit(1) from None
    _print_summary(summary, time.perf_counter() - started)


def _preflight(p: Params) -> None:
    """Before a pipeline starts a flow run (and Prefect's temporary server): the Prefect server and the tracking
    server answer, and every data file that exists reads as JSONL (missing ones are the embedded task's, which the
    pipeline writes; the data gate checks the rows). Raises one of _pipeline_errors in seconds."""
    from flows import prefect_api
    from tasks import tracking
    from tasks.data import read_jsonl_lines

    prefect_api.check()
    tracking.check_server(tracking.tracking_uri())
    for file in p.paths.data_files().values():
        if Path(file).exists():
            read_jsonl_lines(file)


def _pipeline_errors() -> tuple[type[Exception], ...]:
    """What a pipeline run fails with when the data, the params' files or a service is at fault: reported as one
    message (exit 1), never as a traceback."""
    from flows.prefect_api import PrefectUnavailable
    from tasks.pinning import DataNotPinned
    from tasks.tracking import TrackingUnavailable

    return (
        TrackingUnavailable,
        PrefectUnavailable,
        ValidationFailed,
        DataFileError,
        DataNotPinned,
        FileNotFoundError,
        ValueError,
        OSError,
    )


def _registry_error(err: Exception) -> None:
    typer.secho(f"error: {err}", err=True, fg="red")
    raise typer.Exit(1) from None


@app.command("promote")
def promote(
    version: Annotated[str, typer.Option("--version", help="model version to make champion")],
    reason: Annotated[str, typer.Option(help="recorded on the version")] = "manual promotion",
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Make a registered version the champion (recorded; `rewardflow rollback` undoes it)."""
    _load(params, None)
    from flows import prefect_api
    from flows.promote import promote_flow
    from tasks.tracking import TrackingUnavailable, open_client

    try:
        # a server that is down fails here, not inside the flow run (whose engine logs a traceback)
        open_client()
        prefect_api.check()
        previous = promote_flow(version, reason, str(params))
    except (ValueError, LookupError, TrackingUnavailable, prefect_api.PrefectUnavailable) as err:
        _registry_error(err)
    typer.echo(f"champion: v{previous or 'none'} -> v{version}")


@app.command("rollback")
def rollback(
    reason: Annotated[str, typer.Option(help="recorded on the demoted version")] = "manual rollback",
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Give the champion alias back to the previous champion (recorded)."""
    _load(params, None)
    from flows import prefect_api
    from flows.promote import rollback_flow
    from tasks.tracking import TrackingUnavailable, open_client

    try:
        open_client()  # as in promote: a server that is down fails before the flow run
        prefect_api.check()
        demoted, restored = rollback_flow(reason, str(params))
    except (ValueError, LookupError, TrackingUnavailable, prefect_api.PrefectUnavailable) as err:
        _registry_error(err)
    typer.echo(f"champion: v{demoted} -> v{restored} (rolled back)")


@app.command("status")
def status(params: ParamsOpt = Path("params.yaml")) -> None:
    """Champion and challenger with their held-out metrics and lineage, and the champion history."""
    p = _load(params, None)
    from tasks.registry import registry_status
    from tasks.tracking import TrackingUnavailable, open_client

    try:
        info = registry_status(open_client(), p.register.model_name)
    except (LookupError, TrackingUnavailable) as err:
        _registry_error(err)
    typer.echo(f"model {info['model_name']} (champion history: {' -> '.join(info['champion_history']) or 'none'})")
    for alias in ("champion", "challenger"):
        v = info[alias]
        if v is None:
            typer.echo(f"\n{alias}: none")
            continue
        typer.echo(f"\n{alias}: version {v['version']} (created {v['created']}, run {v['run_id']})")
        for key in ("promotion_decision", "promotion_reason", "rolled_back", "rollback_reason"):
            if key in v["tags"]:
                typer.echo(f"  {key}: {v['tags'][key]}")
        typer.echo("  metrics: " + ", ".join(f"{k}={val:.4g}" for k, val in sorted(v["metrics"].items())))
        typer.echo("  lineage: " + ", ".join(f"{k}={val}" for k, val in v["lineage"].items()))
        typer.echo(f"  data, cache, remote and how to rebuild it: rewardflow lineage {v['version']}")


@app.command("lineage")
def lineage(
    version: Annotated[str, typer.Argument(help="registered model version")],
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """What a registered version was built from (data md5, every DVC-pinned path), whether that content is in the
    local DVC cache and on the remote, and the commands that rebuild it."""
    p = _load(params, None)
    from tasks.rebuild import version_lineage
    from tasks.tracking import TrackingUnavailable, open_client

    try:
        lines = version_lineage(open_client(), p.register.model_name, version, Path.cwd())
    except (LookupError, TrackingUnavailable) as err:
        _registry_error(err)
    typer.echo("\n".join(lines))


@app.command("dvc-deps")
def dvc_deps(
    write: Annotated[bool, typer.Option("--write", help="put the derived code dependencies into dvc.yaml")] = False,
) -> None:
    """Check each dvc.yaml stage's code dependencies against the project modules its function imports
    (tasks/code_deps.py): exit 1 naming what is missing or surplus. With --write, set them."""
    from tasks import code_deps
    from tasks.dvcfile import DVC_FILE

    if write:
        changed = code_deps.write()
        typer.echo(f"{DVC_FILE.name}: code deps of {', '.join(changed)} written" if changed else "up to date")
        return
    found = code_deps.problems()
    if found:
        typer.secho(
            f"error: {DVC_FILE.name}: code dependencies differ from what the stages import:\n  "
            + "\n  ".join(found)
            + "\nrun `rewardflow dvc-deps --write` to set them",
            err=True,
            fg="red",
        )
        raise typer.Exit(1)
    typer.echo(f"{DVC_FILE.name}: every stage's code deps are its import closure")


@app.command("retrain")
def retrain(
    params: ParamsOpt = Path("params.yaml"),
    force: Annotated[bool, typer.Option("--force", help="retrain even when the data did not change")] = False,
) -> None:
    """Run the retraining flow once: the pipeline, unless a registered version was trained on these very data."""
    p = _load(params, None)
    from flows.retrain import retraining_flow

    try:
        _preflight(p)
        result = retraining_flow(str(params), force)
    except _pipeline_errors() as err:
        typer.secho(f"retraining failed: {err}", err=True, fg="red")
        raise typer.Exit(1) from None
    typer.echo(f"skipped: {result['skipped']}" if "skipped" in result else f"retrained: {result['registration']}")


@app.command("sweep")
def sweep(
    grid: Annotated[
        list[str], typer.Option("--set", "-S", help="a grid axis, DVC's syntax: grpo.num_generations=4,8 (repeatable)")
    ],
    seeds: Annotated[str, typer.Option(help="seeds every setting runs with; the ranking averages over them")] = "1,2,3",
    metric: Annotated[
        str | None, typer.Option(help="validation metric to rank on (default register.primary_metric)")
    ] = None,
    jobs: Annotated[int, typer.Option(help="experiments run at once (DVC queue workers)")] = 1,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Tune on the validation split: one DVC experiment per grid point and seed (`dvc exp run --queue`, up to the
    validation_eval stage; the held-out file is never read), ranked by the GRPO model's validation metric."""
    import json

    from tasks.sweep import SweepError
    from tasks.sweep import sweep as run_sweep

    p = _load(params, None)
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        typer.secho(f"error: --seeds {seeds!r}: expected integers, e.g. 1,2,3", err=True, fg="red")
        raise typer.Exit(2) from None
    from tasks.validation import require_valid

    try:
        require_valid(p)  # every experiment would train on these files: refuse them before queueing any
    except (DataFileError, ValidationFailed) as err:
        typer.secho(f"error: {err}", err=True, fg="red")
        raise typer.Exit(1) from None
    try:
        result = run_sweep(Path.cwd(), p, grid, seed_list, metric or p.register.primary_metric, jobs)
    except SweepError as err:
        typer.secho(f"error: {err}", err=True, fg="red")
        raise typer.Exit(2) from None
    out = Path(p.paths.reports_dir) / "sweep.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    typer.echo(f"{result['metric']}, best first:\n{result['table']}\n(written to {out}; `dvc exp show` has them all)")
    if result["settings"]:
        typer.echo("best: " + " ".join(f"-S {o}" for o in result["settings"][0]["overrides"]))
    if result["failed"]:
        typer.secho(
            f"{len(result['failed'])} experiment(s) failed: {', '.join(result['failed'])} (`dvc queue logs NAME`)",
            err=True,
            fg="red",
        )
        raise typer.Exit(1)


@app.command("serve")
def serve(
    cron: Annotated[str | None, typer.Option(help="schedule (cron, UTC); default: prefect.yaml's")] = None,
    interval: Annotated[float, typer.Option(help="fire every N seconds instead of the cron schedule")] = 0,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Serve the scheduled retraining deployment (needs a Prefect server: `prefect server start`)."""
    _load(params, None)
    from flows import prefect_api

    if not prefect_api.configured_url():
        _registry_error(
            RuntimeError(
                "serving a schedule needs a running Prefect server, not the temporary one `rewardflow run` starts: "
                "run `prefect server start` in another terminal, then "
                "`prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api` and retry"
            )
        )
    try:
        prefect_api.check()
    except prefect_api.PrefectUnavailable as err:
        _registry_error(err)
    from prefect import serve as prefect_serve

    from flows.retrain import deployment

    prefect_serve(deployment(cron, str(params), interval))


if __name__ == "__main__":
    app()
