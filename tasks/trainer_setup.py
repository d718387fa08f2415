"""What SFT and GRPO share: trainer settings that are sane on a CPU, the environment TRL and transformers run in
(nothing from the network), and a callback that keeps every log a trainer emits."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

from tasks import telemetry

log = logging.getLogger(__name__)

# Local training needs nothing from the network: keep TRL/transformers from trying.
telemetry.turn_off()
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


def quiet(trainer: Any) -> None:
    """With tqdm off, transformers prints every log dict to stdout; LogCapture logs progress lines instead."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
