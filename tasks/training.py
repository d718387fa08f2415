"""The sft and grpo stages: TRL's trainers with CPU-sane settings, the article's advantage rules and
per-component reward statistics."""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

from tasks.config import Params
from tasks.data import completion_for, read_jsonl
from tasks.modeling import load_base_model, load_pretrained, peft_config_for, save_artifact
from tasks.rewards import (
    RewardConfig,
    build_reward_funcs,
    check_diversity,
    completion_text,
    compute_advantages,
    score_completion,
)

log = logging.getLogger(__name__)

COMPONENTS = ("exact_match", "off_by_1", "mae", "format", "combined")
STATS_PREFIX = "reward_stats/"

# Local training needs nothing from the network: keep TRL/transformers from trying.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DISABLE_MLFLOW_INTEGRATION", "TRUE")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# gradient_checkpointing=False must be passed to override TRL's default of True; transformers 5 calls the name a
# deprecated alias of activation_checkpointing, which TRL does not set.
warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated", category=FutureWarning)


def device_kwargs() -> dict[str, Any]:
    """Trainer settings shared by SFT and GRPO. TRL 1.16 defaults to bf16 autocast and gradient checkpointing,
    which made a CPU step ~8x slower than a plain PyTorch loop here: both off unless a GPU can use bf16."""
    import torch

    cuda = torch.cuda.is_available()
    return dict(
        use_cpu=not cuda,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        fp16=False,
        gradient_checkpointing=False,
        torch_compile=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="steps",
        disable_tqdm=True,
        skip_memory_metrics=True,
    )


class LogCapture:
    """Keeps every log dict a trainer emits (in-process metrics for tests, reports and MLflow)."""

    # the numbers a progress line shows, when the trainer logs them
    PROGRESS_KEYS = ("loss", "reward", "reward_std", "learning_rate")

    def __init__(self, label: str = "train") -> None:
        from transformers import TrainerCallback

        outer = self
        self.label = label
        self.logs: list[dict[str, float]] = []

        class _Callback(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs:
                    outer.on_log(state.global_step, logs)
                    shown = ", ".join(f"{k} {logs[k]:.4g}" for k in outer.PROGRESS_KEYS if k in logs)
                    if shown:  # the end-of-training summary log has none of them
                        log.info("%s step %d/%d: %s", outer.label, state.global_step, state.max_steps, shown)

        self.callback = _Callback()

    def on_log(self, step: int, logs: dict[str, Any]) -> None:
        self.logs.append({"step": step, **{k: v for k, v in logs.items() if isinstance(v, int | float)}})


class DeadComponentMonitor(LogCapture):
    """The article's diagnostic as a feature: a reward component whose mean stays above `high` or below `low`
    for `window` consecutive logs gives no signal; it is reported once (warning) and recorded."""

    def __init__(self, window: int, low: float, high: float, label: str = "grpo") -> None:
        super().__init__(label)
        self.window, self.low, self.high = window, low, high
        self.history: dict[str, list[float]] = defaultdict(list)
        self.dead: dict[str, str] = {}

    def on_log(self, step: int, logs: dict[str, Any]) -> None:
        super().on_log(step, logs)
        for name in COMPONENTS[:-1]:
            value = logs.get(f"{STATS_PREFIX}{name}/mean")
            if value is None:
                continue
            recent = [*self.history[name], value][-self.window :]
            self.history[name] = recent
            if len(recent) < self.window or name in self.dead:
                continue
            if all(v > self.high for v in recent) or all(v < self.low for v in recent):
                side = f"above {self.high}" if recent[-1] > self.high else f"below {self.low}"
                self.dead[name] = f"mean {side} for {self.window} logs (last {recent[-1]:.3f}) at step {step}"
                log.warning("reward component %s is dead: %s; it gives GRPO no signal", name, self.dead[name])


def _quiet(trainer: Any) -> None:
    """With tqdm off, transformers prints every log dict to stdout; LogCapture logs progress lines instead."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def completion_stats(texts: list[str], truths: list[list[int]], config: RewardConfig) -> dict[str, list[float]]:
    """Per-completion component values, structural failures and perfect answers (the article's components)."""
    out: dict[str, list[float]] = defaultdict(list)
    for text, truth in zip(texts, truths, strict=True):
        for name, value in score_completion(text, truth, config).items():
            if name != "prediction":
                out[name].append(value)
    return out


def group_advantages(
    rewards: list[float], texts: list[str], group_size: int, min_std: float, min_unique_ratio: float
) -> tuple[list[float], int, int]:
    """The article's advantages for consecutive groups: compute_advantages (zero when std < min_std),
    and zero for a group whose completions are less than min_unique_ratio unique.
    Returns (advantages, zero-std groups, low-diversity groups)."""
    advantages: list[float] = []
    zero_std = low_diversity = 0
    for start in range(0, len(rewards), group_size):
        group = rewards[start : start + group_size]
        adv = compute_advantages(group, min_std=min_std)
        if not any(adv):
            zero_std += 1
        if not check_diversity(texts[start : start + group_size], min_unique_ratio):
            low_diversity += 1
            adv = [0.0] * len(group)
        advantages += adv
    return advantages, zero_std, low_diversity


def _grpo_trainer_class():
    from accelerate.utils import gather_object
    from trl import GRPOTrainer

    class RewardflowGRPOTrainer(GRPOTrainer):
        """GRPOTrainer whose update uses the article's advantages (tasks.rewards.compute_advantages and
        check_diversity) instead of TRL's (r - mean) / (std + 1e-4), and logs per-component statistics."""

        def __init__(self, *args, reward_config: RewardConfig, min_std: float, min_unique_ratio: float, **kw):
            super().__init__(*args, **kw)
            self.reward_config, self.min_std, self.min_unique_ratio = reward_config, min_std, min_unique_ratio
            self._last: tuple[Any, list[str]] | None = None

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            self._last = (rewards_per_func, [completion_text(c) for c in completions])
            return rewards_per_func

        def _generate_and_score_completions(self, inputs):
            import torch

            out = super()._generate_and_score_completions(inputs)
            rewards_per_func, local_texts = self._last
            self._last = None
            mode = "train" if self.model.training else "eval"
            group = self.num_generations if mode == "train" else self.num_generations_eval
            # What TRL optimises: the weighted sum of the reward functions, gathered over processes.
            weights = self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
            rewards = torch.nan_to_num((rewards_per_func * weights).nansum(dim=1), nan=0.0).tolist()
            non_finite = int(sum(not math.isfinite(r) for r in rewards))
            texts = gather_object(local_texts)
            truths = gather_object([list(x["scores"]) for x in inputs])
            advantages, zero_std, low_div = group_advantages(rewards, texts, group, self.min_std, self.min_unique_ratio)
            n_local = out["advantages"].size(0)
            start = self.accelerator.process_index * n_local
            local = torch.tensor(advantages[start : start + n_local], dtype=out["advantages"].dtype)
            out["advantages"] = local.to(out["advantages"].device)

            metrics = self._metrics[mode]
            n_groups = max(1, len(rewards) // group)
            metrics[f"{STATS_PREFIX}zero_std_group_frac"].append(zero_std / n_groups)
            metrics[f"{STATS_PREFIX}low_diversity_group_frac"].append(low_div / n_groups)
            metrics[f"{STATS_PREFIX}non_finite_rewards"].append(float(non_finite))
            stats = completion_stats(texts, truths, self.reward_config)
            for name in COMPONENTS:
                values = torch.tensor(stats[name], dtype=torch.float64)
                metrics[f"{STATS_PREFIX}{name}/mean"].append(values.mean().item())
                metrics[f"{STATS_PREFIX}{name}/std"].append(values.std(unbiased=False).item())
            for name in ("structural_failure", "perfect"):
                metrics[f"{STATS_PREFIX}{name}_rate"].append(sum(stats[name]) / len(stats[name]))
            return out

    return RewardflowGRPOTrainer


def _resolved(p: Params, stage: str) -> dict[str, Any]:
    full = p.to_dict()
    return {
        "stage": stage,
        "seed": p.seed,
        "model": full["model"],
        "task": full["task"],
        stage: full[stage],
        "reward": full["reward"],
    }


def _write_logs(path: Path, logs: list[dict[str, Any]], extra: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"logs": logs, **extra}, indent=1, sort_keys=True) + "\n")


def run_sft(p: Params) -> dict[str, Any]:
    """Supervised fine-tuning on prompt/completion pairs (loss on the completion only)."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(p.seed)
    # --- data
    rows = read_jsonl(p.paths.train_file)
    dataset = Dataset.from_list(
        [{"prompt": r["prompt"], "completion": " " + completion_for(r["scores"])} for r in rows]
    )
    # --- model
    model, tokenizer = load_base_model(p.model, (r["prompt"] for r in rows), p.seed)
    # --- train
    capture = LogCapture("sft")
    with tempfile.TemporaryDirectory(prefix="rewardflow-sft-") as scratch:
        args = SFTConfig(
            output_dir=scratch,
            **device_kwargs(),
            seed=p.seed,
            max_steps=p.sft.max_steps,
            per_device_train_batch_size=p.sft.batch_size,
            learning_rate=p.sft.learning_rate,
            weight_decay=p.sft.weight_decay,
            warmup_steps=p.sft.warmup_ratio,
            lr_scheduler_type=p.sft.lr_scheduler,
            logging_steps=p.sft.logging_steps,
            max_length=p.model.max_length,
            packing=False,
            padding_free=False,
            dataset_num_proc=None,
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config_for(p.sft.lora, p.model),
            callbacks=[capture.callback],
        )
        _quiet(trainer)
        result = trainer.train()
    # --- save
    out_dir = save_artifact(trainer.model, tokenizer, Path(p.paths.models_dir) / "sft", _resolved(p, "sft"))
    summary = {
        "train_runtime": result.metrics.get("train_runtime"),
        "train_loss": result.training_loss,
        "steps": result.global_step,
    }
    _write_logs(Path(p.paths.reports_dir) / "sft_logs.json", capture.logs, {"summary": summary})
    log.info(
        "sft: %d steps in %.1fs, final loss %.4f -> %s",
        result.global_step,
        summary["train_runtime"] or 0.0,
        result.training_loss,
        out_dir,
    )
    return {"summary": summary, "logs": capture.logs, "model_dir": str(out_dir)}


def run_grpo(p: Params) -> dict[str, Any]:
    """GRPO from the SFT checkpoint with the configured reward."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import GRPOConfig

    set_seed(p.seed)
    # --- data: TRL passes the `scores` column to every reward function
    rows = read_jsonl(p.paths.train_file)
    dataset = Dataset.from_list([{"prompt": r["prompt"], "scores": r["scores"]} for r in rows])
    # --- model: the merged SFT artefact, so a fresh LoRA (if any) can be put on it
    sft_dir = Path(p.paths.models_dir) / "sft"
    if not (sft_dir / "config.json").exists():
        raise FileNotFoundError(f"{sft_dir}: no SFT checkpoint; run the sft stage first (GRPO only after SFT)")
    model, tokenizer = load_pretrained(sft_dir)
    # --- reward
    funcs, weights = build_reward_funcs(p.reward.mode, p.reward.config, p.reward.binary_tolerance)
    monitor = DeadComponentMonitor(p.grpo.dead_window, p.grpo.dead_low, p.grpo.dead_high)
    # --- train
    with tempfile.TemporaryDirectory(prefix="rewardflow-grpo-") as scratch:
        args = GRPOConfig(
            output_dir=scratch,
            **device_kwargs(),
            seed=p.seed,
            max_steps=p.grpo.max_steps,
            per_device_train_batch_size=p.grpo.prompts_per_step * p.grpo.num_generations,
            num_generations=p.grpo.num_generations,
            temperature=p.grpo.temperature,
            top_p=1.0,
            top_k=0,
            max_completion_length=p.grpo.max_completion_length,
            learning_rate=p.grpo.learning_rate,
            beta=p.grpo.beta,
            reward_weights=weights,
            scale_rewards="group",
            logging_steps=p.grpo.logging_steps,
            log_completions=False,
            use_vllm=False,
        )
        trainer = _grpo_trainer_class()(
            model=model,
            reward_funcs=funcs,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config_for(p.grpo.lora, p.model),
            callbacks=[monitor.callback],
            reward_config=p.reward.config,
            min_std=p.grpo.min_std,
            min_unique_ratio=p.grpo.min_unique_ratio,
        )
        _quiet(trainer)
        result = trainer.train()
    # --- save
    out_dir = save_artifact(trainer.model, tokenizer, Path(p.paths.models_dir) / "grpo", _resolved(p, "grpo"))
    summary = {"train_runtime": result.metrics.get("train_runtime"), "steps": result.global_step}
    components = [
        {"step": e["step"], **{c: e[f"{STATS_PREFIX}{c}/mean"] for c in COMPONENTS}}
        for e in monitor.logs
        if f"{STATS_PREFIX}combined/mean" in e
    ]
    Path(p.paths.reports_dir).mkdir(parents=True, exist_ok=True)
    (Path(p.paths.reports_dir) / "grpo_reward_components.json").write_text(json.dumps(components, indent=1) + "\n")
    _write_logs(
        Path(p.paths.reports_dir) / "grpo_logs.json",
        monitor.logs,
        {"summary": summary, "dead_components": monitor.dead},
    )
    log.info("grpo: %d steps in %.1fs -> %s", result.global_step, summary["train_runtime"] or 0.0, out_dir)
    return {
        "summary": summary,
        "logs": monitor.logs,
        "dead_components": monitor.dead,
        "model_dir": str(out_dir),
    }
