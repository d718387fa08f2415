"""params.yaml -> frozen dataclasses, one per section.

params.yaml is the only home of pipeline defaults: every key must be present, unknown keys fail, and every
value is type- and range-checked before any work starts, with the file, the key and what to do.
Overrides use DVC's syntax: `--set grpo.temperature=0.8`. How a mapping becomes a section's dataclass (the type
checks) is tasks/params_schema.py; the range checks are each section's own, here.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tasks.metrics import METRICS, PROMOTABLE
from tasks.params_schema import build
from tasks.profiles import PROFILE_KEY, ParamsError, merged_raw, resolve_files
from tasks.reward_funcs import MODES as REWARD_MODES
from tasks.rewards import RewardConfig

# data.pin: what the pipeline does with data files that differ from what their .dvc file pins
PIN_MODES = ("pin", "refuse")
# transformers' schedulers that need no extra arguments
LR_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
)
BUILTIN_PREFIX = "builtin:"
# The built-in tokenizer has one token per score of the task's range; beyond this many it is the wrong tool.
MAX_BUILTIN_SCORES = 1000


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{key} {message}")


@dataclass(frozen=True)
class PathsConfig:
    data_dir: str
    train_file: str
    heldout_file: str
    models_dir: str
    reports_dir: str

    def __post_init__(self) -> None:
        for key, value in dataclasses.asdict(self).items():
            _check(bool(value.strip()), key, "must not be empty")


@dataclass(frozen=True)
class TaskConfig:
    n_items: int
    min_score: int
    max_score: int
    n_train: int
    n_heldout: int
    train_seed: int
    heldout_seed: int
    # Probabilities that a label's rater scores one point below / at / one above the review's consensus score.
    rater_bias: tuple[float, ...]
    # Probability that a sentiment word carries a modifier ("very" doubles it, "not" flips it).
    modifier_rate: float

    def __post_init__(self) -> None:
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
        _check(self.train_seed != self.heldout_seed, "heldout_seed", "must differ from train_seed")


CHAT_TEMPLATE_MODES = {True: "on", False: "off", "on": "on", "off": "off", "auto": "auto"}


@dataclass(frozen=True)
class ModelConfig:
    name_or_path: str
    trust_remote_code: bool
    # prompts through the tokenizer's chat template: auto (when it has one), on (required) or off
    chat_template: bool | str
    # Shape of the built-in model; ignored for a pretrained one.
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_length: int

    def __post_init__(self) -> None:
        _check(bool(self.name_or_path.strip()), "name_or_path", "must not be empty")
        if self.is_builtin:
            _check(self.name_or_path == "builtin:tiny", "name_or_path", "knows one built-in model: builtin:tiny")
        for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_length"):
            _check(getattr(self, key) >= 1, key, f"must be >= 1 (got {getattr(self, key)})")
        _check(self.hidden_size % self.num_heads == 0, "hidden_size", "must be a multiple of num_heads")
        _check(
            self.chat_template in CHAT_TEMPLATE_MODES,
            "chat_template",
            f"must be auto, on or off (got {self.chat_template!r})",
        )

    @property
    def chat_template_mode(self) -> str:
        """"auto", "on" or "off" (YAML reads a bare on/off as a boolean)."""
        return CHAT_TEMPLATE_MODES[self.chat_template]

    @property
    def is_builtin(self) -> bool:
        return self.name_or_path.startswith(BUILTIN_PREFIX)


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
class LoraConfig:
    # "auto": on for a pretrained model, off for the built-in one.
    enabled: bool | str
    r: int
    alpha: int
    dropout: float
    target_modules: tuple[str, ...]

    def __post_init__(self) -> None:
        _check(
            self.enabled in (True, False, "auto"),
            "enabled",
            f"must be true, false or auto (got {self.enabled!r})",
        )
        _check(self.r >= 1, "r", f"must be >= 1 (got {self.r})")
        _check(self.alpha >= 1, "alpha", f"must be >= 1 (got {self.alpha})")
        _check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1) (got {self.dropout})")
        _check(len(self.target_modules) >= 1, "target_modules", "must name at least one module")

    def active(self, model: ModelConfig) -> bool:
        return (not model.is_builtin) if self.enabled == "auto" else bool(self.enabled)


@dataclass(frozen=True)
class SftConfig:
    max_steps: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    warmup_ratio: float
    lr_scheduler: str
    logging_steps: int
    # a resumable checkpoint every save_steps steps (and at the last step); a killed run resumes from the last one
    save_steps: int
    lora: LoraConfig

    def __post_init__(self) -> None:
        _check(self.max_steps >= 1, "max_steps", f"must be >= 1 (got {self.max_steps})")
        _check(self.batch_size >= 1, "batch_size", f"must be >= 1 (got {self.batch_size})")
        _check(self.learning_rate > 0, "learning_rate", f"must be > 0 (got {self.learning_rate})")
        _check(self.weight_decay >= 0, "weight_decay", f"must be >= 0 (got {self.weight_decay})")
        _check(0.0 <= self.warmup_ratio < 1.0, "warmup_ratio", f"must be in [0, 1) (got {self.warmup_ratio})")
        _check(
            self.lr_scheduler in LR_SCHEDULERS,
            "lr_scheduler",
            f"must be one of {', '.join(LR_SCHEDULERS)} (got {self.lr_scheduler!r})",
        )
        _check(self.logging_steps >= 1, "logging_steps", f"must be >= 1 (got {self.logging_steps})")
        _check(self.save_steps >= 1, "save_steps", f"must be >= 1 (got {self.save_steps})")


@dataclass(frozen=True)
class GrpoConfig:
    max_steps: int
    prompts_per_step: int
    num_generations: int
    temperature: float
    max_completion_length: int
    learning_rate: float
    beta: float
    min_std: float
    min_unique_ratio: float
    logging_steps: int
    # a resumable checkpoint every save_steps steps (and at the last step); a killed run resumes from the last one
    save_steps: int
    dead_window: int
    dead_low: float
    dead_high: float
    # stop when at least this fraction of groups is low-diversity for dead_window consecutive logs (collapse)
    collapse_low_diversity_frac: float
    # generation through vLLM (TRL's use_vllm; needs a GPU and `pip install vllm`): colocate (in the training
    # process, sharing the GPU) or server (`trl vllm-serve` on another GPU)
    use_vllm: bool
    vllm_mode: str
    vllm_gpu_memory_utilization: float
    lora: LoraConfig

    def __post_init__(self) -> None:
        _check(self.max_steps >= 1, "max_steps", f"must be >= 1 (got {self.max_steps})")
        _check(
            self.vllm_mode in ("colocate", "server"),
            "vllm_mode",
            f"must be colocate or server (got {self.vllm_mode!r})",
        )
        _check(
            0.0 < self.vllm_gpu_memory_utilization <= 1.0,
            "vllm_gpu_memory_utilization",
            f"must be in (0, 1] (got {self.vllm_gpu_memory_utilization})",
        )
        _check(self.prompts_per_step >= 1, "prompts_per_step", f"must be >= 1 (got {self.prompts_per_step})")
        _check(
            self.num_generations >= 2,
            "num_generations",
            f"must be >= 2: GRPO compares completions within a group (got {self.num_generations})",
        )
        _check(self.temperature > 0, "temperature", f"must be > 0 (got {self.temperature})")
        _check(self.max_completion_length >= 1, "max_completion_length", "must be >= 1")
        _check(self.learning_rate > 0, "learning_rate", f"must be > 0 (got {self.learning_rate})")
        _check(self.beta >= 0, "beta", f"must be >= 0 (got {self.beta})")
        _check(self.min_std >= 0, "min_std", f"must be >= 0 (got {self.min_std})")
        _check(0.0 <= self.min_unique_ratio <= 1.0, "min_unique_ratio", "must be in [0, 1]")
        _check(self.logging_steps >= 1, "logging_steps", f"must be >= 1 (got {self.logging_steps})")
        _check(self.save_steps >= 1, "save_steps", f"must be >= 1 (got {self.save_steps})")
        _check(self.dead_window >= 1, "dead_window", f"must be >= 1 (got {self.dead_window})")
        _check(
            0.0 < self.collapse_low_diversity_frac <= 1.0,
            "collapse_low_diversity_frac",
            f"must be in (0, 1] (got {self.collapse_low_diversity_frac})",
        )
        _check(
            0.0 <= self.dead_low < self.dead_high <= 1.0,
            "dead_low",
            "and dead_high need 0 <= low < high <= 1",
        )


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
        return METRICS[self.primary_metric].higher_is_better


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
    for assignment in overrides:
        if assignment.partition("=")[0].strip() != PROFILE_KEY:
            apply_override(raw, assignment, files.label)
    return build(Params, raw, "", files.label)
