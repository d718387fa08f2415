"""params.yaml -> frozen dataclasses, one per section.

params.yaml is the only home of pipeline defaults: every key must be present, unknown keys fail, and every
value is type- and range-checked before any work starts, with the file, the key and what to do.
Overrides use DVC's syntax: `--set grpo.temperature=0.8`. How a mapping becomes a section's dataclass (the type
checks) is tasks/params_schema.py; the range checks are each section's own, here and, for the model and its
training (model, sft, grpo), in tasks/training_params.py.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tasks.metric_table import PROMOTABLE, SPECS
from tasks.params_schema import build
from tasks.params_schema import check as _check
from tasks.profiles import PROFILE_KEY, ParamsError, merged_raw, resolve_files
from tasks.reward_funcs import MODES as REWARD_MODES
from tasks.rewards import RewardConfig

# every section is reachable from here, where callers look for them
from tasks.training_params import GrpoConfig, LoraConfig, ModelConfig, SftConfig  # noqa: F401

# data.pin: what the pipeline does with data files that differ from what their .dvc file pins
PIN_MODES = ("pin", "refuse")
# The built-in tokenizer has one token per score of the task's range; beyond this many it is the wrong tool.
MAX_BUILTIN_SCORES = 1000


# The data splits, in the order the data gate reads them; split X is the file paths.X_file. train trains, validation
# is for tuning (sweeps select on it), heldout is the untouched test set of reports/eval.json and the promotion gate.
DATA_SPLITS = ("train", "heldout", "validation")


@dataclass(frozen=True)
class PathsConfig:
    data_dir: str
    train_file: str
    heldout_file: str
    validation_file: str
    models_dir: str
    reports_dir: str

    def __post_init__(self) -> None:
        for key, value in dataclasses.asdict(self).items():
            _check(bool(value.strip()), key, "must not be empty")
        files = self.data_files()
        for i, split in enumerate(DATA_SPLITS):
            for other in DATA_SPLITS[:i]:
                _check(
                    Path(files[split]) != Path(files[other]),
                    f"{split}_file",
                    f"must differ from {other}_file (both {files[split]!r}): each split is a file of its own",
                )

    def data_files(self) -> dict[str, str]:
        """The data files by split (DATA_SPLITS order): what the data gate checks and data.dvc pins."""
        return {split: getattr(self, f"{split}_file") for split in DATA_SPLITS}


@dataclass(frozen=True)
class TaskConfig:
    # the embedded task's generator; n_items, the score range and the rest describe any data
    kind: str
    n_items: int
    min_score: int
    max_score: int
    n_train: int
    n_heldout: int
    n_validation: int
    train_seed: int
    heldout_seed: int
    validation_seed: int
    # Probabilities that a label's rater scores one point below / at / one above the review's consensus score.
    rater_bias: tuple[float, ...]
    # Probability that a sentiment word carries a modifier ("very" doubles it, "not" flips it).
    modifier_rate: float

    def __post_init__(self) -> None:
        from tasks.data import TASK_KINDS  # the generators live there, and tasks.data imports this module

        _check(self.kind in TASK_KINDS, "kind", f"must be one of {', '.join(TASK_KINDS)} (got {self.kind!r})")
        _check(self.n_items >= 1, "n_items", f"must be >= 1 (got {self.n_items})")
        bias = self.rater_bias
        _check(
            len(bias) == 3 and all(isinstance(b, int | float) and 0 <= b <= 1 for b in bias),
            "rater_bias",
            f"must be three probabilities [below, at, above] in [0, 1] (got {list(bias)})",
        )
        _check(abs(sum(bias) - 1) < 1e-6, "rater_bias", f"must sum to 1 (got {list(bias)}, sum {sum(bias):g})")
        _check(0 <= self.modifier_rate <= 1, "modifier_rate", f"must be in [0, 1] (got {self.modifier_rate})")
        _check(self.max_score > self.min_score, "max_score", "must be greater than min_score")
        _check(self.n_train >= 1, "n_train", f"must be >= 1 (got {self.n_train})")
        _check(self.n_heldout >= 1, "n_heldout", f"must be >= 1 (got {self.n_heldout})")
        _check(self.n_validation >= 1, "n_validation", f"must be >= 1 (got {self.n_validation})")
        _check(self.train_seed != self.heldout_seed, "heldout_seed", "must differ from train_seed")
        _check(
            self.validation_seed not in (self.train_seed, self.heldout_seed),
            "validation_seed",
            f"must differ from train_seed and heldout_seed (got {self.validation_seed})",
        )


@dataclass(frozen=True)
class RewardParams(RewardConfig):
    """The reward section: the article's RewardConfig plus which reward GRPO optimises."""

    mode: str = "multi"
    binary_tolerance: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.mode in REWARD_MODES, "mode", f"must be one of {', '.join(REWARD_MODES)} (got {self.mode!r})")
        _check(self.binary_tolerance >= 0, "binary_tolerance", f"must be >= 0 (got {self.binary_tolerance})")
        # a negative weight or bonus, or a positive penalty, would reward worse answers
        for name, weight in self.weights.items():
            _check(weight >= 0, f"weights.{name}", f"must be >= 0 (got {weight})")
        _check(self.perfect_bonus >= 0, "perfect_bonus", f"must be >= 0 (got {self.perfect_bonus})")
        _check(self.structural_penalty <= 0, "structural_penalty", f"must be <= 0 (got {self.structural_penalty})")

    @property
    def config(self) -> RewardConfig:
        return RewardConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(RewardConfig)})


@dataclass(frozen=True)
class ValidateConfig:
    max_prompt_chars: int
    # warning (not failure) when more than this fraction of held-out rows has a score value never seen in train
    max_unseen_score_fraction: float
    max_reported_rows: int

    def __post_init__(self) -> None:
        _check(self.max_prompt_chars >= 1, "max_prompt_chars", f"must be >= 1 (got {self.max_prompt_chars})")
        _check(0.0 <= self.max_unseen_score_fraction <= 1.0, "max_unseen_score_fraction", "must be in [0, 1]")
        _check(self.max_reported_rows >= 1, "max_reported_rows", f"must be >= 1 (got {self.max_reported_rows})")


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int
    max_new_tokens: int

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "batch_size", f"must be >= 1 (got {self.batch_size})")
        _check(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1 (got {self.max_new_tokens})")


@dataclass(frozen=True)
class RegisterConfig:
    # the MLflow registered model; its versions carry the aliases challenger and champion
    model_name: str
    # the held-out metric the promotion gate compares (see evaluate), and the margin a challenger must win by
    primary_metric: str
    min_improvement: float
    # refuse to promote a model that is not past the constant answer on the held-out file (tasks/reading.py)
    require_reading: bool

    def __post_init__(self) -> None:
        _check(
            bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", self.model_name)),
            "model_name",
            f"must be letters, digits, '_', '.', '-' (got {self.model_name!r})",
        )
        _check(
            self.primary_metric in PROMOTABLE,
            "primary_metric",
            f"must be one of {', '.join(PROMOTABLE)} (got {self.primary_metric!r})",
        )
        _check(self.min_improvement >= 0.0, "min_improvement", f"must be >= 0 (got {self.min_improvement})")

    @property
    def higher_is_better(self) -> bool:
        return SPECS[self.primary_metric].higher_is_better


@dataclass(frozen=True)
class LauncherConfig:
    # processes for the sft and grpo stages; > 1 runs them under `accelerate launch` (DDP; gloo on a CPU)
    num_processes: int
    # an accelerate config file (configs/accelerate/*.yaml: one GPU, DDP, DeepSpeed ZeRO-3), or "" for none
    config_file: str
    # the rendezvous port of the launched processes on 127.0.0.1
    port: int

    def __post_init__(self) -> None:
        _check(self.num_processes >= 1, "num_processes", f"must be >= 1 (got {self.num_processes})")
        _check(
            not self.config_file or Path(self.config_file).is_file(),
            "config_file",
            f"{self.config_file!r} is not a file (see configs/accelerate/)",
        )
        _check(1024 <= self.port <= 65535, "port", f"must be in 1024..65535 (got {self.port})")


@dataclass(frozen=True)
class TrackingConfig:
    # MLflow experiment of the pipeline runs; the tracking URI comes from MLFLOW_TRACKING_URI (default: the
    # project's sqlite:///mlflow.db), never from params, so a server address and its credentials stay out of git
    experiment_name: str

    def __post_init__(self) -> None:
        _check(bool(self.experiment_name.strip()), "experiment_name", "must not be empty")


@dataclass(frozen=True)
class DataConfig:
    # data files that differ from what data.dvc pins: "pin" them (DVC cache + data.dvc) before any stage runs, or
    # "refuse" to train on them
    pin: str

    def __post_init__(self) -> None:
        _check(self.pin in PIN_MODES, "pin", f"must be one of {', '.join(PIN_MODES)} (got {self.pin!r})")


@dataclass(frozen=True)
class NotifyConfig:
    # a saved Prefect notification block, "<block-type-slug>/<block-name>" (e.g. slack-webhook/ml-team); "" = off
    block: str

    def __post_init__(self) -> None:
        _check(
            not self.block or bool(re.fullmatch(r"[a-z0-9-]+/[A-Za-z0-9_-]+", self.block)),
            "block",
            f"must be <block-type-slug>/<block-name>, e.g. slack-webhook/ml-team, or empty (got {self.block!r})",
        )


@dataclass(frozen=True)
class Params:
    # the overlay merged over params.yaml (tasks/profiles.py), relative to params.yaml; "" for none
    profile: str
    seed: int
    paths: PathsConfig
    data: DataConfig
    task: TaskConfig
    model: ModelConfig
    reward: RewardParams
    validate: ValidateConfig
    sft: SftConfig
    grpo: GrpoConfig
    evaluate: EvaluateConfig
    launcher: LauncherConfig
    tracking: TrackingConfig
    register: RegisterConfig
    notify: NotifyConfig

    def __post_init__(self) -> None:
        # numpy's generator, which set_seed seeds too, takes 0 <= seed < 2**32
        _check(0 <= self.seed < 2**32, "seed", f"must be in [0, 2**32) (got {self.seed})")
        n_scores = self.task.max_score - self.task.min_score + 1
        _check(
            not self.model.is_builtin or n_scores <= MAX_BUILTIN_SCORES,
            "task.max_score",
            f"- task.min_score + 1 = {n_scores} scores: the built-in model has one token per score and takes at most "
            f"{MAX_BUILTIN_SCORES}; narrow the range or set model.name_or_path to a pretrained model",
        )
        _check(
            self.grpo.credit == "sequence" or self.reward.mode == "multi",
            "grpo.credit",
            f"item needs reward.mode multi, whose reward is a mean over items (reward.mode is {self.reward.mode})",
        )
        n = self.launcher.num_processes
        # every process takes an equal share of the global batch
        _check(self.sft.batch_size % n == 0, "sft.batch_size", f"must be divisible by launcher.num_processes ({n})")
        per_step = self.grpo.prompts_per_step * self.grpo.num_generations
        _check(
            per_step % n == 0,
            "grpo.prompts_per_step",
            f"x grpo.num_generations ({per_step}) must be divisible by launcher.num_processes ({n})",
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- loading ------------------------------------------------------------------------------------------


def apply_override(raw: dict[str, Any], assignment: str, file: str) -> None:
    """Apply one DVC-style `section.key=value` override to the raw params mapping, in place."""
    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ParamsError(f"--set {assignment!r}: expected section.key=value, e.g. grpo.temperature=0.8")
    *parents, leaf = key.split(".")
    node = raw
    for depth, part in enumerate(parents):
        node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            raise ParamsError(f"--set {key}: {'.'.join(parents[: depth + 1])} is not a section of {file}")
    if leaf not in node:
        raise ParamsError(f"--set {key}: unknown key {key} in {file}")
    try:
        node[leaf] = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ParamsError(f"--set {key}: cannot parse value {text!r}: {err}") from None


def _profile_override(overrides: Iterable[str]) -> str | None:
    """The value of a `--set profile=...` override, if any (it picks the overlay before the others apply)."""
    value = None
    for assignment in overrides:
        key, sep, text = assignment.partition("=")
        if sep and key.strip() == PROFILE_KEY:
            value = yaml.safe_load(text) or ""
    return value


def load_params(path: str | Path = "params.yaml", overrides: Iterable[str] = ()) -> Params:
    """Load params.yaml with its profile (or the profile given as path merged over params.yaml), apply the
    overrides, then type-check and range-check everything."""
    overrides = list(overrides)
    files = resolve_files(path, _profile_override(overrides))
    raw = merged_raw(files)
    assigned = [a.partition("=")[0].strip() for a in overrides]
    for assignment, key in zip(overrides, assigned, strict=True):
        if key != PROFILE_KEY:
            apply_override(raw, assignment, files.label)
    return build(Params, raw, "", lambda key: f"--set {key}" if key in assigned else files.origin(key))
