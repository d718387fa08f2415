"""The `rewardflow` command line."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml

# No network to wait on: telemetry and analytics off unless the user says otherwise.
for _var, _value in {
    "DO_NOT_TRACK": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "False",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}.items():
    os.environ.setdefault(_var, _value)

from tasks.config import ParamsError, load_params  # noqa: E402
from tasks.data import DataFileError, generate_dataset  # noqa: E402
from tasks.validation import ValidationFailed  # noqa: E402

app = typer.Typer(
    help="rewardflow: SFT + GRPO pipeline that teaches a model to emit structured scores.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="The embedded data set.", no_args_is_help=True)
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


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
        stream=sys.stderr,
    )


@data_app.command("generate")
def data_generate(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Write the embedded task's train and held-out files (deterministic: same seeds, same bytes)."""
    p = _load(params, set_)
    train, heldout = generate_dataset(p.paths.train_file, p.paths.heldout_file, p.task)
    typer.echo(f"wrote {train} ({p.task.n_train} rows) and {heldout} ({p.task.n_heldout} rows)")


@app.command("params")
def show_params(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Print the resolved, validated params."""
    typer.echo(yaml.safe_dump(_load(params, set_).to_dict(), sort_keys=False))


def _run_stage(name: str, params: Path, set_: list[str] | None) -> None:
    p = _load(params, set_)
    from tasks.stages import STAGES

    try:
        STAGES[name](p)
    except (FileNotFoundError, ValueError, OSError, ValidationFailed) as err:
        typer.secho(f"error in stage {name}: {err}", err=True, fg="red")
        raise typer.Exit(1) from None


@app.command("validate")
def validate(
    paths: Annotated[list[Path] | None, typer.Argument(help="train file, then held-out file")] = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Stage validate: the Great Expectations data gate. Exit 0 when valid, 1 when not."""
    from tasks.validation import validate_files

    p = _load(params, set_)
    files = list(paths or [p.paths.train_file, p.paths.heldout_file])
    if len(files) > 2:
        typer.secho("error: give at most two files: train, then held-out", err=True, fg="red")
        raise typer.Exit(2)
    try:
        gate = validate_files(files[0], files[1] if len(files) > 1 else None, p)
    except DataFileError as err:
        typer.secho(f"invalid: {err}", err=True, fg="red")
        raise typer.Exit(1) from None
    typer.echo(gate.format())
    raise typer.Exit(0 if gate.passed else 1)


@app.command("sft")
def sft(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Stage sft: supervised fine-tuning -> models/sft."""
    _run_stage("sft", params, set_)


@app.command("grpo")
def grpo(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Stage grpo: GRPO from models/sft with the configured reward -> models/grpo."""
    _run_stage("grpo", params, set_)


@app.command("evaluate")
def evaluate(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Stage evaluate: held-out metrics of models/sft and models/grpo -> reports/eval.json."""
    _run_stage("evaluate", params, set_)


@app.command("run")
def run(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Run the pipeline (validate, sft, grpo, evaluate); stages DVC sees as up to date are skipped."""
    import time

    from tasks.lineage import Lineage

    p = _load(params, set_)
    lineage = Lineage(".", overridden=bool(set_) or params != Path("params.yaml"))
    if not Path(p.paths.train_file).exists() or not Path(p.paths.heldout_file).exists():
        data_generate(params, set_)
        lineage.pin_generated_data()
    from tasks.stages import STAGES

    rows = []
    for name in STAGES:
        if lineage.is_current(name):
            rows.append((name, "skipped (up to date)", 0.0))
            continue
        started = time.perf_counter()
        _run_stage(name, params, set_)
        lineage.record(name)
        rows.append((name, "ran", time.perf_counter() - started))
    typer.echo("\nstage      status                    time")
    for name, status, seconds in rows:
        typer.echo(f"{name:<10} {status:<24} {seconds:6.1f}s")
    report = json.loads((Path(p.paths.reports_dir) / "eval.json").read_text())
    keys = ("exact_match", "item_accuracy", "within_1", "mae", "format_compliance")
    typer.echo("\nheld-out   " + " ".join(f"{k:>17}" for k in keys))
    for name, metrics in report.items():
        typer.echo(f"{name:<10} " + " ".join(f"{metrics[k]:>17.3f}" for k in keys))
    typer.echo(
        f"\nreports: {p.paths.reports_dir}/eval.json, {p.paths.reports_dir}/data_docs/index.html; "
        f"models: {p.paths.models_dir}/sft, {p.paths.models_dir}/grpo; `dvc status` / `dvc metrics show`"
    )
    typer.secho(
        "not built yet: register (MLflow registry), Prefect orchestration, MLflow tracking (see the open issues).",
        fg="yellow",
    )


if __name__ == "__main__":
    app()
