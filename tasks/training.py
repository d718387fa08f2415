"""The sft and grpo stages: TRL's trainers with CPU-sane settings, the article's advantage rules and
per-component reward statistics."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import traceback
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

from tasks.config import Params
from tasks.data import completion_for, read_jsonl, read_jsonl_lines
from tasks.dvcfile import stage_params
from tasks.launcher import world_size
from tasks.modeling import check_targets, load_base_model, load_pretrained, peft_config_for, save_artifact
from tasks.prompts import CHAT_KEY, check_fits, checkpoint_uses_chat_template, trl_example, uses_chat_template
from tasks.reward_funcs import build_reward_funcs, completion_text
from tasks.rewards import COMPONENTS, RewardConfig, check_diversity, compute_advantages, score_completion
from tasks.write_errors import write_error_cause

log = logging.getLogger(__name__)

STATS_PREFIX = "reward_stats/"


def component_stats() -> tuple[str, ...]:
    """What GRPO logs a mean and std of per step, and plots: every reward component, then the combined reward."""
    return (*COMPONENTS, "combined")


# Local training needs nothing from the network: keep TRL/transformers from trying.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DISABLE_MLFLOW_INTEGRATION", "TRUE")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# gradient_checkpointing=False must be passed to override TRL's default of True; transformers 5 calls the name a
# deprecated alias of activation_checkpointing, which TRL does not set.
warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated", category=FutureWarning)


def score_labelled_positions_only() -> None:
    """TRL's fused LM head (the SFT loss, GRPO's log-probs) projects only the positions that carry a label on
    devices with Triton, and every position elsewhere, so that a compiler (Neuron) sees fixed tile shapes. Nothing
    is compiled on a CPU: there, the prompt positions' projections onto the whole vocabulary (and their softmax
    gradients) are pure waste, most of an SFT step for a 49k-token vocabulary. This makes the CPU take the labelled
    positions only too; the loss and gradients are the same (tested)."""
    from trl.trainer import utils

    use_triton = getattr(utils, "_use_triton", None)
    if use_triton is None or getattr(use_triton, "rewardflow", False):
        return  # another TRL layout: leave it as it is

    def labelled_only(device: Any) -> bool:
        return device.type == "cpu" or use_triton(device)

    labelled_only.rewardflow = True  # type: ignore[attr-defined]
    utils._use_triton = labelled_only


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
        self.stop_reason: str | None = None  # set by a subclass to end training early

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                # Resumed from a checkpoint: its log history first, so reports and MLflow show the whole run.
                for entry in state.log_history:
                    outer.on_log(entry["step"], {k: v for k, v in entry.items() if k != "step"})

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs:
                    outer.on_log(state.global_step, logs)
                    if outer.stop_reason:
                        control.should_training_stop = True
                    shown = ", ".join(f"{k} {logs[k]:.4g}" for k in outer.PROGRESS_KEYS if k in logs)
                    if shown:  # the end-of-training summary log has none of them
                        log.info("%s step %d/%d: %s", outer.label, state.global_step, state.max_steps, shown)

        self.callback = _Callback()

    def on_log(self, step: int, logs: dict[str, Any]) -> None:
        self.logs.append({"step": step, **{k: v for k, v in logs.items() if isinstance(v, int | float)}})


class DeadComponentMonitor(LogCapture):
    """The article's diagnostic as a feature: a reward component whose mean stays above `high` or below `low`
    for `window` consecutive logs gives no signal; it is reported once (warning) and recorded.

    Collapse guard: when at least `collapse_frac` of the groups are low-diversity (fewer than min_unique_ratio of
    their completions distinct) for `window` consecutive logs, the policy answers every prompt the same way (the
    "3 3 3 3" reward hack seen with an under-trained SFT model); every advantage is then zero and more steps only
    cost time, so training stops there with a warning and the reason is recorded."""

    def __init__(self, window: int, low: float, high: float, collapse_frac: float = 1.0, label: str = "grpo") -> None:
        super().__init__(label)
        self.window, self.low, self.high, self.collapse_frac = window, low, high, collapse_frac
        self.history: dict[str, list[float]] = defaultdict(list)
        self.dead: dict[str, str] = {}

    def on_log(self, step: int, logs: dict[str, Any]) -> None:
        super().on_log(step, logs)
        low_diversity = logs.get(f"{STATS_PREFIX}low_diversity_group_frac")
        if low_diversity is not None and self.stop_reason is None:
            recent = [*self.history["_low_diversity"], low_diversity][-self.window :]
            self.history["_low_diversity"] = recent
            if len(recent) == self.window and all(v >= self.collapse_frac for v in recent):
                self.stop_reason = (
                    f"collapsed at step {step}: {recent[-1]:.0%} of groups low-diversity for {self.window} logs "
                    f"(grpo.collapse_low_diversity_frac {self.collapse_frac})"
                )
                log.warning("grpo stopped early: policy %s; its groups carry no advantage", self.stop_reason)
        for name in COMPONENTS:
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


# --- resumable checkpoints -------------------------------------------------------------------------------------

CHECKPOINTS_DIR = ".checkpoints"
COMPLETE_MARKER = "rewardflow_complete.json"
FINGERPRINT_FILE = "fingerprint.json"
# The Trainer deletes old checkpoints right after writing a new one, before the completion marker goes in: keeping
# two means the newest complete checkpoint is still on disk whenever the one being written is cut short.
SAVE_TOTAL_LIMIT = 2
_CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)")


class SaveFailed(OSError):
    """A checkpoint or a stage's artefact could not be written; the message says why, from the error itself."""


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stage_fingerprint(p: Params, stage: str, inputs: list[str | Path]) -> str:
    """sha256 (16 hex digits) of the params dvc.yaml gives the stage and the bytes of its input files and folders:
    a checkpoint made with anything else must not be resumed."""
    from tasks.tracking import hash_files

    sections = json.dumps(stage_params(p, stage), sort_keys=True)
    return hashlib.sha256(f"{sections}\0{hash_files(inputs)}".encode()).hexdigest()[:16]


class Checkpoints:
    """A stage's resumable Trainer checkpoints, in <models_dir>/.checkpoints/<stage>/ (not a DVC output).

    HF Trainer writes checkpoint-N file by file, so a killed run can leave half of one. A checkpoint counts only
    once the Trainer has finished writing it: `callback` then drops a marker file into it. On start, checkpoints
    from other params or inputs (fingerprint.json differs) and unmarked ones are removed, and training resumes from
    the newest marked one; the folder goes once the stage's artefact is saved.
    """

    def __init__(self, models_dir: str | Path, stage: str, fingerprint: str, max_steps: int) -> None:
        self.dir = Path(models_dir) / CHECKPOINTS_DIR / stage
        self.artefact = Path(models_dir) / stage
        self.stage, self.fingerprint, self.max_steps = stage, fingerprint, max_steps
        self.saving: int | None = None  # the step whose checkpoint is being written, if any
        self.callback = self._callback()

    def _callback(self) -> Any:
        from transformers import TrainerCallback

        outer = self

        class _MarkComplete(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                # runs after the Trainer's own flow callback has decided whether this step saves
                outer.saving = state.global_step if control.should_save else None

            def on_save(self, args, state, control, **kwargs):
                # called once _save_checkpoint returned: every file of checkpoint-N is written
                if state.is_world_process_zero:
                    outer.mark(state.global_step)
                outer.saving = None

        return _MarkComplete()

    def trainer_kwargs(self, save_steps: int) -> dict[str, Any]:
        return dict(
            output_dir=str(self.dir), save_strategy="steps", save_steps=save_steps, save_total_limit=SAVE_TOTAL_LIMIT
        )

    def _found(self) -> list[tuple[int, Path]]:
        found = [(int(m.group(1)), d) for d in self.dir.glob("checkpoint-*") if (m := _CHECKPOINT_RE.fullmatch(d.name))]
        return sorted(found)

    def _is_complete(self, step: int, path: Path) -> bool:
        marker = _read_json(path / COMPLETE_MARKER) or {}
        return marker.get("step") == step and marker.get("fingerprint") == self.fingerprint

    def complete(self) -> list[Path]:
        """The marked checkpoints, oldest first."""
        return [path for step, path in self._found() if self._is_complete(step, path)]

    def mark(self, step: int) -> None:
        marker = {"step": step, "fingerprint": self.fingerprint}
        _write_json_atomic(self.dir / f"checkpoint-{step}" / COMPLETE_MARKER, marker)

    def resume_point(self) -> Path | None:
        """Clear what must not be resumed; the newest complete checkpoint, or None to start from step 0."""
        recorded = (_read_json(self.dir / FINGERPRINT_FILE) or {}).get("fingerprint")
        if self.dir.exists() and recorded != self.fingerprint:
            if self._found():
                log.warning(
                    "%s: not resuming from %s: its checkpoints were made with other params or inputs "
                    "(fingerprint %s, now %s); starting from step 0",
                    self.stage,
                    self.dir,
                    recorded,
                    self.fingerprint,
                )
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(self.dir / FINGERPRINT_FILE, {"fingerprint": self.fingerprint, "stage": self.stage})
        for step, path in self._found():
            if not self._is_complete(step, path):
                log.warning(
                    "%s: skipping %s: incomplete (no completion marker: the run stopped while writing it); removed",
                    self.stage,
                    path.name,
                )
                shutil.rmtree(path, ignore_errors=True)
        complete = self.complete()
        if not complete:
            return None
        step = _CHECKPOINT_RE.fullmatch(complete[-1].name).group(1)
        log.info("%s: resuming from %s (step %s of %d)", self.stage, complete[-1].name, step, self.max_steps)
        return complete[-1]

    def train(self, trainer: Any) -> tuple[Any, int]:
        """trainer.train(), resumed from the newest complete checkpoint; (TrainOutput, step resumed from).
        Under several processes the main one tidies the folder and the others read what it left."""
        accelerator = trainer.accelerator
        resume = self.resume_point() if accelerator.is_main_process else None
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            resume = (self.complete() or [None])[-1]
        try:
            result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        except Exception as err:
            # only a failure inside the Trainer's checkpoint writer is a failed checkpoint write
            writing = any(frame.name == "_save_checkpoint" for frame in traceback.extract_tb(err.__traceback__))
            if self.saving is None or not writing:
                raise
            raise self.save_failed(err, self.dir / f"checkpoint-{self.saving}") from err
        return result, int(_CHECKPOINT_RE.fullmatch(resume.name).group(1)) if resume else 0

    def save(self, model: Any, tokenizer: Any, resolved: dict[str, Any], main: bool = True) -> Path:
        """The stage's artefact (atomic), written by the main process only; then the checkpoints are no longer
        needed."""
        if not main:
            return self.artefact
        try:
            out_dir = save_artifact(model, tokenizer, self.artefact, resolved)
        except Exception as err:
            raise self.save_failed(err, self.artefact) from err
        shutil.rmtree(self.dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.dir.parent.rmdir()  # only when no other stage's checkpoints are left
        return out_dir

    def save_failed(self, err: Exception, target: Path) -> SaveFailed:
        """What a failed write means for the user: what happened, what is intact, what a re-run does, what to do."""
        complete = self.complete()
        kept = (
            f"the last complete checkpoint, {complete[-1].name}, is kept and a re-run resumes from it"
            if complete
            else "no complete checkpoint exists yet, so a re-run starts from step 0"
        )
        previous = f"{self.artefact} was not written"
        if self.artefact.exists():
            previous = f"the previous {self.artefact} is unchanged"
        cause, todo = write_error_cause(err, target)
        return SaveFailed(
            f"{self.stage}: could not write {target}: {err} ({cause}). "
            f"Nothing half-written is used: {previous}, and {kept}. {todo}"
        )


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

        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, *args, **kwargs):
            """TRL's generation, with each group's prompt computed once instead of num_generations times (see
            tasks.sampling); vLLM and multimodal batches go through TRL unchanged."""
            from tasks.sampling import shared_prefix_generation

            generate = super()._generate_single_turn
            if self.use_vllm or images is not None or multimodal_fields:
                return generate(prompt_ids, images, multimodal_fields, num_generations, *args, **kwargs)
            with shared_prefix_generation(self.accelerator.unwrap_model(self.model_wrapped), num_generations):
                return generate(prompt_ids, images, multimodal_fields, num_generations, *args, **kwargs)

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
            # What TRL optimises: the weighted sum of the reward functions, gathered over processes. A NaN or inf
            # from any function (or a float32 overflow) is counted and logged, not hidden: compute_advantages gives
            # the completion's whole group zero advantage, so the update stays finite.
            weighted = rewards_per_func * self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
            bad = ~torch.isfinite(weighted)
            rewards = weighted.sum(dim=1).tolist()
            non_finite = int(bad.any(dim=1).sum())
            if non_finite:
                funcs = [name for name, hit in zip(self.reward_func_names, bad.any(dim=0).tolist(), strict=True) if hit]
                log.warning(
                    "grpo step %d: %d completion(s) got a non-finite reward (from %s); their groups get zero advantage",
                    self.state.global_step + 1,
                    non_finite,
                    ", ".join(funcs),
                )
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
            for name in component_stats():
                values = torch.tensor(stats[name], dtype=torch.float64)
                metrics[f"{STATS_PREFIX}{name}/mean"].append(values.mean().item())
                metrics[f"{STATS_PREFIX}{name}/std"].append(values.std(unbiased=False).item())
            for name in ("structural_failure", "perfect"):
                metrics[f"{STATS_PREFIX}{name}_rate"].append(sum(stats[name]) / len(stats[name]))
            return out

    return RewardflowGRPOTrainer


def _resolved(p: Params, stage: str, chat: bool) -> dict[str, Any]:
    """What the saved model records: its prompt format (tasks.prompts) and exactly the params dvc.yaml gives the
    stage, so that it never shows a value DVC would not re-run the stage for."""
    return {"stage": stage, CHAT_KEY: chat, **stage_params(p, stage)}


def _write_logs(path: Path, logs: list[dict[str, Any]], extra: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"logs": logs, **extra}, indent=1, sort_keys=True) + "\n")


def _save_stage(
    trainer: Any,
    checkpoints: Checkpoints,
    tokenizer: Any,
    p: Params,
    stage: str,
    result: Any,
    resumed_from: int | None,
    chat: bool,
) -> tuple[Path, dict[str, Any], bool]:
    """Save a trained stage's artefact (main process only, the others wait) and summarise the run: (artefact
    folder, summary, whether this is the main process)."""
    main = trainer.accelerator.is_main_process
    out_dir = checkpoints.save(trainer.model, tokenizer, _resolved(p, stage, chat), main)
    trainer.accelerator.wait_for_everyone()
    summary = {
        "train_runtime": result.metrics.get("train_runtime"),
        "steps": result.global_step,
        "resumed_from_step": resumed_from,
        "processes": trainer.accelerator.num_processes,
    }
    return out_dir, summary, main


def run_sft(p: Params) -> dict[str, Any]:
    """Supervised fine-tuning on prompt/completion pairs (loss on the completion only)."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(p.seed)
    score_labelled_positions_only()
    # --- data
    lines = read_jsonl_lines(p.paths.train_file)
    rows = [row for _, row in lines]
    # --- model; every target must be something its tokenizer can represent
    score_range = (p.task.min_score, p.task.max_score)
    model, tokenizer = load_base_model(p.model, (r["prompt"] for r in rows), p.seed, score_range)
    check_targets(tokenizer, p.paths.train_file, ((n, completion_for(r["scores"])) for n, r in lines))
    chat = uses_chat_template(p.model.chat_template_mode, tokenizer, p.model.name_or_path)
    texts = [(n, r["prompt"], completion_for(r["scores"])) for n, r in lines]
    check_fits(tokenizer, p.paths.train_file, texts, chat, p.model.max_length)
    dataset = Dataset.from_list([trl_example(r["prompt"], completion_for(r["scores"]), chat) for r in rows])
    # --- train, resuming an interrupted run of the same params and data from its last complete checkpoint
    capture = LogCapture("sft")
    fingerprint = stage_fingerprint(p, "sft", [p.paths.train_file])
    checkpoints = Checkpoints(p.paths.models_dir, "sft", fingerprint, p.sft.max_steps)
    args = SFTConfig(
        **{**device_kwargs(), **checkpoints.trainer_kwargs(p.sft.save_steps)},
        seed=p.seed,
        max_steps=p.sft.max_steps,
        # under N processes (launcher) each takes 1/N of the batch: sft.batch_size stays the global batch
        per_device_train_batch_size=p.sft.batch_size // world_size(),
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
        callbacks=[capture.callback, checkpoints.callback],
    )
    _quiet(trainer)
    result, resumed_from = checkpoints.train(trainer)
    # --- save
    out_dir, summary, main = _save_stage(trainer, checkpoints, tokenizer, p, "sft", result, resumed_from, chat)
    summary["train_loss"] = result.training_loss
    if main:
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
    score_labelled_positions_only()
    # --- model: the merged SFT artefact, so a fresh LoRA (if any) can be put on it
    sft_dir = Path(p.paths.models_dir) / "sft"
    if not (sft_dir / "config.json").exists():
        raise FileNotFoundError(f"{sft_dir}: no SFT checkpoint; run the sft stage first (GRPO only after SFT)")
    model, tokenizer = load_pretrained(sft_dir, p.model.trust_remote_code)
    # --- data, formatted as SFT trained: TRL passes the `scores` column to every reward function
    chat = checkpoint_uses_chat_template(sft_dir)
    rows = read_jsonl(p.paths.train_file)
    dataset = Dataset.from_list([{**trl_example(r["prompt"], None, chat), "scores": r["scores"]} for r in rows])
    # --- reward
    funcs, weights = build_reward_funcs(p.reward.mode, p.reward.config, p.reward.binary_tolerance)
    monitor = DeadComponentMonitor(
        p.grpo.dead_window, p.grpo.dead_low, p.grpo.dead_high, p.grpo.collapse_low_diversity_frac
    )
    # --- train, resuming an interrupted run of the same params, data and SFT model from its last complete checkpoint
    fingerprint = stage_fingerprint(p, "grpo", [p.paths.train_file, sft_dir])
    checkpoints = Checkpoints(p.paths.models_dir, "grpo", fingerprint, p.grpo.max_steps)
    args = GRPOConfig(
        **{**device_kwargs(), **checkpoints.trainer_kwargs(p.grpo.save_steps)},
        seed=p.seed,
        max_steps=p.grpo.max_steps,
        per_device_train_batch_size=p.grpo.prompts_per_step * p.grpo.num_generations // world_size(),
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
        use_vllm=p.grpo.use_vllm,
        **(
            {"vllm_mode": p.grpo.vllm_mode, "vllm_gpu_memory_utilization": p.grpo.vllm_gpu_memory_utilization}
            if p.grpo.use_vllm
            else {}
        ),
    )
    trainer = _grpo_trainer_class()(
        model=model,
        reward_funcs=funcs,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config_for(p.grpo.lora, p.model),
        callbacks=[monitor.callback, checkpoints.callback],
        reward_config=p.reward.config,
        min_std=p.grpo.min_std,
        min_unique_ratio=p.grpo.min_unique_ratio,
    )
    _quiet(trainer)
    result, resumed_from = checkpoints.train(trainer)
    # --- save
    out_dir, summary, main = _save_stage(trainer, checkpoints, tokenizer, p, "grpo", result, resumed_from, chat)
    components = [
        {"step": e["step"], "component": c, "mean": e[f"{STATS_PREFIX}{c}/mean"]}
        for e in monitor.logs
        if f"{STATS_PREFIX}combined/mean" in e
        for c in component_stats()
    ]
    if main:
        Path(p.paths.reports_dir).mkdir(parents=True, exist_ok=True)
        components_file = Path(p.paths.reports_dir) / "grpo_reward_components.json"
        components_file.write_text(json.dumps(components, indent=1) + "\n")
        _write_logs(
            Path(p.paths.reports_dir) / "grpo_logs.json",
            monitor.logs,
            {"summary": summary, "dead_components": monitor.dead, "stopped_early": monitor.stop_reason},
        )
    log.info("grpo: %d steps in %.1fs -> %s", result.global_step, summary["train_runtime"] or 0.0, out_dir)
    return {
        "summary": summary,
        "logs": monitor.logs,
        "dead_components": monitor.dead,
        "model_dir": str(out_dir),
    }
