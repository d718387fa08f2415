"""The params sections of the model and its training: model, sft, grpo (and their lora), checked on load."""

from __future__ import annotations

from dataclasses import dataclass

from tasks.params_schema import check as _check

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
# TRL's GRPO loss aggregations that need no extra settings (GRPOConfig.loss_type)
GRPO_LOSS_TYPES = ("dapo", "grpo", "dr_grpo", "bnpo")
# how a group's rewards become advantages: divided by the group's std (the article) or only mean-centred (Dr. GRPO)
SCALE_REWARDS = ("group", "none")
# whose reward a completion token's advantage is: its completion's (sequence) or, for a score's tokens, that score's
# (item; tasks.grpo_trainer.item_advantages)
CREDITS = ("sequence", "item")
CHAT_TEMPLATE_MODES = {True: "on", False: "off", "on": "on", "off": "off", "auto": "auto"}


@dataclass(frozen=True)
class ModelConfig:
    name_or_path: str
    trust_remote_code: bool
    # prompts through the tokenizer's chat template: auto (when it has one), on (required) or off
    chat_template: bool | str
    # with a chat template: a system message before every prompt ("" an empty one); null: the template's own
    system_prompt: str | None
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
        """ "auto", "on" or "off" (YAML reads a bare on/off as a boolean)."""
        return CHAT_TEMPLATE_MODES[self.chat_template]

    @property
    def is_builtin(self) -> bool:
        return self.name_or_path.startswith(BUILTIN_PREFIX)


@dataclass(frozen=True)
class LoraConfig:
    # "auto": on for a pretrained model, off for the built-in one.
    enabled: bool | str
    r: int
    alpha: int
    dropout: float
    target_modules: tuple[str, ...]
    # LoRA on the last N decoder layers only (null: every layer). Backpropagation stops below the lowest adapted
    # layer, so a step costs less, and the layers below learn nothing (measured: docs/learning.md).
    last_layers: int | None

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
        _check(
            self.last_layers is None or self.last_layers >= 1,
            "last_layers",
            f"must be null (every layer) or >= 1 (got {self.last_layers})",
        )

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
    lr_scheduler: str
    warmup_ratio: float
    loss_type: str
    scale_rewards: str
    credit: str
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
    # the loss and backward with each group's prompt computed once (tasks.sampling.shared_prefix_logps): true,
    # false (TRL's row-wise pass) or auto (true where the model's architecture supports it)
    shared_prefix: bool | str
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
        _check(
            self.shared_prefix in (True, False, "auto"),
            "shared_prefix",
            f"must be true, false or auto (got {self.shared_prefix!r})",
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
        _check(
            self.lr_scheduler in LR_SCHEDULERS,
            "lr_scheduler",
            f"must be one of {', '.join(LR_SCHEDULERS)} (got {self.lr_scheduler!r})",
        )
        _check(0.0 <= self.warmup_ratio < 1.0, "warmup_ratio", f"must be in [0, 1) (got {self.warmup_ratio})")
        _check(
            self.loss_type in GRPO_LOSS_TYPES,
            "loss_type",
            f"must be one of {', '.join(GRPO_LOSS_TYPES)} (got {self.loss_type!r})",
        )
        _check(
            self.scale_rewards in SCALE_REWARDS,
            "scale_rewards",
            f"must be one of {', '.join(SCALE_REWARDS)} (got {self.scale_rewards!r})",
        )
        _check(self.credit in CREDITS, "credit", f"must be one of {', '.join(CREDITS)} (got {self.credit!r})")
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
