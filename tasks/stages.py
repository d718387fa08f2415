"""The pipeline's stages, one table. A stage is its function (in its own module), its params.yaml section, its
dvc.yaml entry and its tests: one name everywhere (the params section, the dvc.yaml stage, the CLI command
`rewardflow <stage>`, the Prefect task, the MLflow nested run).

Everything else derives from here: the CLI commands (flows/cli.py), the flow's stage loop (flows/pipeline.py), what
MLflow records of a stage's outputs (tasks/stage_outputs.py), the benchmarks. What a stage depends on (its params,
deps and outs) is read from dvc.yaml, never restated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tasks import dvcfile, launcher, stage_outputs
from tasks.config import Params
from tasks.evaluation import run_evaluate, run_validation_eval
from tasks.training import run_grpo, run_sft
from tasks.validation import run_validate

# what a stage function gets, and what MLflow-logging hooks get: (client, run id, stage name, params)
OutputLogger = Callable[[Any, str, str, Params], None]


@dataclass(frozen=True)
class Stage:
    name: str
    # runs the stage in this process; heavy libraries (torch, transformers, trl) load only when it is called. Its
    # module, with the modules of the functions it wraps (`__wrapped__`), is where the stage's code dependencies
    # start (tasks/code_deps.py)
    run: Callable[[Params], Any]
    # one line for `rewardflow --help`
    help: str
    # what MLflow records of the stage's outputs besides its dvc.yaml metrics and reports (tasks/stage_outputs.py)
    log_extra: tuple[OutputLogger, ...] = ()
    # log its outputs in every pipeline run, also when DVC skipped it (the held-out metrics the gate reads)
    log_when_skipped: bool = False
    # put before the names of its dvc.yaml metrics in MLflow, to keep them apart from another stage's of the same
    # shape (validation_eval's validation.grpo.within_1 beside evaluate's held-out grpo.within_1)
    metrics_prefix: str = ""


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("validate", run_validate, "Stage validate: the Great Expectations data gate."),
        Stage(
            "sft",
            launcher.launchable("sft", run_sft),
            "Stage sft: supervised fine-tuning -> models/sft.",
            (stage_outputs.log_training,),
        ),
        Stage(
            "grpo",
            launcher.launchable("grpo", run_grpo),
            "Stage grpo: GRPO from models/sft with the configured reward -> models/grpo.",
            (stage_outputs.log_training, stage_outputs.log_reward_components),
        ),
        Stage(
            "evaluate",
            run_evaluate,
            "Stage evaluate: held-out metrics of models/sft and models/grpo -> reports/eval.json.",
            (stage_outputs.log_score_heatmap,),
            log_when_skipped=True,
        ),
        Stage(
            "validation_eval",
            run_validation_eval,
            "Stage validation_eval: validation-split metrics of models/sft and models/grpo -> "
            "reports/validation_eval.json (what sweeps select on; never the promotion gate).",
            metrics_prefix="validation.",
        ),
    )
}


def pipeline_stages() -> list[Stage]:
    """The table's stages, in order, once they are checked to be exactly the stages dvc.yaml declares."""
    declared = dvcfile.declared_stages()
    missing = [name for name in declared if name not in STAGES]
    if missing:
        raise ValueError(f"{dvcfile.DVC_FILE} declares stage {missing[0]!r}, which tasks/stages.py STAGES lacks")
    undeclared = [name for name in STAGES if name not in declared]
    if undeclared:
        raise ValueError(f"stage {undeclared[0]!r} of tasks/stages.py STAGES has no entry in {dvcfile.DVC_FILE}")
    return list(STAGES.values())
