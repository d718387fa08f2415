"""The sft and grpo stages: TRL's trainers on the project's data and model, resumable from their checkpoints, saving
the stage's artefact and its logs (reports/<stage>_logs.json)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tasks.checkpoints import Checkpoints, stage_fingerprint
from tasks.config import Params
from tasks.data import completion_for, read_jsonl, read_jsonl_lines
from tasks.dvcfile import stage_params
from tasks.grpo_trainer import STATS_PREFIX, DeadComponentMonitor, component_stats, grpo_trainer_class
from tasks.launcher import world_size
from tasks.modeling import check_targets, load_base_model, load_pretrained, peft_config_for
from tasks.prompts import PromptFormat, check_fits, trl_example
from tasks.reward_funcs import build_reward_funcs
from tasks.trainer_setup import LogCapture, device_kwargs, quiet, score_labelled_positions_only

log = logging.getLogger(__name__)


def _resolved(p: Params, stage: str, fmt: PromptFormat) -> dict[str, Any]:
    """What the saved model records: its prompt format (tasks.prompts) and exactly the params dvc.yaml gives the
    stage, so that it never shows a value DVC would not re-run the stage for."""
    return {"stage": stage, **fmt.record(), **stage_params(p, stage)}


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
    fmt: PromptFormat,
) -> tuple[Path, dict[str, Any], bool]:
    """Save a trained stage's artefact (main process only, the others wait) and summarise the run: (artefact
    folder, summary, whether this is the main process)."""
    main = trainer.accelerator.is_main_process
    out_dir = checkpoints.save(trainer.model, tokenizer, _resolved(p, stage, fmt), main)
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
    fmt = PromptFormat.resolve(p.model.chat_template_mode, p.model.system_prompt, tokenizer, p.model.name_or_path)
    texts = [(n, r["prompt"], completion_for(r["scores"])) for n, r in lines]
    check_fits(tokenizer, p.paths.train_file, texts, fmt, p.model.max_length)
    dataset = Dataset.from_list([trl_example(r["prompt"], completion_for(r["scores"]), fmt) for r in rows])
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
        peft_config=peft_config_for(p.sft.lora, p.model, model, "sft"),
        callbacks=[capture.callback, checkpoints.callback],
    )
    quiet(trainer)
    result, resumed_from = checkpoints.train(trainer)
    # --- save
    out_dir, summary, main = _save_stage(trainer, checkpoints, tokenizer, p, "sft", result, resumed_from, fmt)
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
    fmt = PromptFormat.of_checkpoint(sft_dir)
    rows = read_jsonl(p.paths.train_file)
    dataset = Dataset.from_list([{**trl_example(r["prompt"], None, fmt), "scores": r["scores"]} for r in rows])
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
        lr_scheduler_type=p.grpo.lr_scheduler,
        warmup_steps=p.grpo.warmup_ratio,
        loss_type=p.grpo.loss_type,
        beta=p.grpo.beta,
        reward_weights=weights,
        # TRL's own advantages are replaced by the article's (tasks.grpo_trainer), which scale as grpo.scale_rewards
        scale_rewards=p.grpo.scale_rewards,
        logging_steps=p.grpo.logging_steps,
        log_completions=False,
        use_vllm=p.grpo.use_vllm,
        **(
            {"vllm_mode": p.grpo.vllm_mode, "vllm_gpu_memory_utilization": p.grpo.vllm_gpu_memory_utilization}
            if p.grpo.use_vllm
            else {}
        ),
    )
    trainer = grpo_trainer_class()(
        model=model,
        reward_funcs=funcs,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config_for(p.grpo.lora, p.model, model, "grpo"),
        callbacks=[monitor.callback, checkpoints.callback],
        reward_config=p.reward.config,
        min_std=p.grpo.min_std,
        min_unique_ratio=p.grpo.min_unique_ratio,
        std_scaled=p.grpo.scale_rewards == "group",
        shared_prefix=p.grpo.shared_prefix,
        credit=p.grpo.credit,
    )
    quiet(trainer)
    result, resumed_from = checkpoints.train(trainer)
    # --- save
    out_dir, summary, main = _save_stage(trainer, checkpoints, tokenizer, p, "grpo", result, resumed_from, fmt)
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
