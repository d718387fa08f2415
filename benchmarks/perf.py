"""How close to the hardware the training and evaluation paths run on this CPU, as ratios measured in one run.

    .venv/bin/python benchmarks/perf.py            # ~5 min on 2 cores; writes benchmarks/results/perf.json
    .venv/bin/python benchmarks/perf.py --quick    # fewer steps, for a smoke check

1. SFT step through our stage (TRL SFTTrainer, the pipeline's settings) vs a bare PyTorch loop on the same model,
   batch, sequence lengths, optimizer and gradient clipping.
2. GRPO step breakdown from TRL's own profiling hooks (generation, rewards, log-probs, loss+backward), and the
   loss+backward part vs a bare PyTorch policy-gradient loss on the very tensors TRL used.
3. Held-out evaluation: batched greedy decoding vs one prompt at a time, same checkpoint.
4. Scaling: evaluation time at 1x, 2x, 4x the prompts; GRPO step time at 1x, 2x, 4x prompts per step.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from tasks.config import load_params
from tasks.data import completion_for, generate_dataset, read_jsonl
from tasks.evaluation import generate_greedy
from tasks.modeling import load_base_model, load_pretrained
from tasks.training import run_grpo, run_sft

RESULTS = Path(__file__).parent / "results"
log = logging.getLogger("perf")


# --- FLOPs as the kernels do them ---------------------------------------------------------------------------------


def training_flops(
    config, tokens: float, head_positions: float, attention_pairs: float, weights_train: bool = False
) -> float:
    """Floating-point operations of one forward and backward pass of a Llama-shaped decoder, counted as its kernels
    do them (multiply-adds as 2):

    - every non-embedding matrix weight (attention q/k/v/o and MLP gate/up/down projections), N_w of them, on every
      token computed (padding included: the kernels compute it): 2 N_w T forward, 2 N_w T backward for the
      activations' gradients, and 2 N_w T more when the weights themselves train (no LoRA);
    - the output head (hidden x vocabulary) only on the positions it projects (the labelled ones, see
      tasks.trainer_setup.score_labelled_positions_only), forward and the hidden states' gradient backward; the
      embedding lookup multiplies nothing;
    - attention's own products (scores QK^T and their weighted sum of V) on every (query, key) pair the kernel
      computes, forward, and twice that backward.

    LoRA adapters (r 16 on 4 of 7 projections) add under 1 % and are left out."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (hidden // config.num_attention_heads)
    matrix_weights = layers * (2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * config.intermediate_size)
    weights = 2 * matrix_weights * tokens * (3 if weights_train else 2)
    head = 2 * hidden * config.vocab_size * head_positions * 2
    attention = 4 * hidden * layers * attention_pairs * 3
    return weights + head + attention


# --- TRL's profiling hooks, collected instead of sent to wandb/mlflow ------------------------------------------

SPANS: list[tuple[str, float, float]] = []  # (name, start, duration)


def _collect_trl_profiling() -> None:
    from trl.extras import profiling

    def record(self, duration: float) -> None:
        SPANS.append((self.name.split(".", 1)[-1], self._start_time, duration))

    profiling.ProfilingContext._log_metrics = record


def _params(workdir: Path, *overrides: str, params_file: str = "params.yaml"):
    base = [
        f"paths.train_file={workdir}/data/train.jsonl",
        f"paths.heldout_file={workdir}/data/heldout.jsonl",
        f"paths.validation_file={workdir}/data/validation.jsonl",
        f"paths.models_dir={workdir}/models",
        f"paths.reports_dir={workdir}/reports",
    ]
    return load_params(params_file, [*base, *overrides])


# --- 1. SFT: TRL vs bare PyTorch --------------------------------------------------------------------------------


def sft_trl_step(workdir: Path, short: int, long: int, params_file: str = "params.yaml") -> tuple[float, dict]:
    """Seconds per SFT step through run_sft: the train_runtime difference of two lengths cancels start-up."""
    runtimes = {}
    for steps in (short, long):
        p = _params(workdir, f"sft.max_steps={steps}", f"sft.logging_steps={steps}", params_file=params_file)
        runtimes[steps] = run_sft(p)["summary"]["train_runtime"]
    return (runtimes[long] - runtimes[short]) / (long - short), runtimes


def sft_bare_step(workdir: Path, steps: int, warmup: int) -> float:
    """Seconds per step of a plain loop: same model, batch, completion-only labels, AdamW, clipping, scheduler."""
    p = _params(workdir)
    rows = read_jsonl(p.paths.train_file)
    model, tok = load_base_model(p.model, (r["prompt"] for r in rows), p.seed)
    batch_size = p.sft.batch_size
    examples = []
    for r in rows[: batch_size * (steps + warmup)]:
        prompt = tok(r["prompt"])["input_ids"]
        completion = tok(" " + completion_for(r["scores"]), add_special_tokens=False)["input_ids"]
        ids = (prompt + completion + [tok.eos_token_id])[: p.model.max_length]
        examples.append((ids, [-100] * len(prompt) + ids[len(prompt) :]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=p.sft.learning_rate, weight_decay=p.sft.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    model.train()
    started = 0.0
    for step in range(steps + warmup):
        if step == warmup:
            started = time.perf_counter()
        batch = examples[step * batch_size : (step + 1) * batch_size]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.tensor([i + [tok.pad_token_id] * (width - len(i)) for i, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in batch])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - started) / steps


# --- 2. GRPO: breakdown, and loss+backward vs bare ---------------------------------------------------------------


def grpo_breakdown(
    workdir: Path, steps: int, prompts_per_step: int, *overrides: str, params_file: str = "params.yaml"
) -> dict:
    """Shares of a GRPO step (params overridden by `overrides`), from TRL's profiling spans and its step_time metric."""
    import trl

    captured: dict = {}
    original = trl.GRPOTrainer.compute_loss

    def keep_inputs(self, model, inputs, *args, **kwargs):
        captured.setdefault("inputs", {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)})
        return original(self, model, inputs, *args, **kwargs)

    trl.GRPOTrainer.compute_loss = keep_inputs
    SPANS.clear()
    p = _params(
        workdir,
        f"grpo.max_steps={steps}",
        "grpo.logging_steps=1",
        f"grpo.prompts_per_step={prompts_per_step}",
        *overrides,
        params_file=params_file,
    )
    try:
        result = run_grpo(p)
    finally:
        trl.GRPOTrainer.compute_loss = original
    logs = [e for e in result["logs"] if "step_time" in e]
    skip = min(2, len(logs) - 1)  # the first steps warm up allocator and caches
    step_time = statistics.mean(e["step_time"] for e in logs[skip:])
    wall = result["summary"]["train_runtime"] / steps
    per_step = defaultdict(float)
    loss_spans = [(s, d) for n, s, d in SPANS if n == "compute_loss"]
    for name, start, duration in SPANS:
        inside_loss = any(ls <= start <= ls + ld for ls, ld in loss_spans)
        key = f"{name} (in loss)" if name == "_get_per_token_logps_and_entropies" and inside_loss else name
        per_step[key] += duration
    n = len(loss_spans)
    per_step = {k: v / n for k, v in per_step.items()}
    generation = per_step.get("transformers.generate", 0.0)
    rewards = per_step.get("_calculate_rewards", 0.0)
    prepare = per_step.get("_prepare_inputs", 0.0)
    logps_outside = per_step.get("_get_per_token_logps_and_entropies", 0.0)
    loss_backward = step_time - prepare
    parts = {
        "generation": generation,
        "rewards": rewards,
        "old/ref log-probs": logps_outside,
        "other scoring (tokenise, advantages, stats)": prepare - generation - rewards - logps_outside,
        "loss + backward": loss_backward,
        "optimizer, logging, data loading": max(wall - step_time, 0.0),
    }
    return {"wall_per_step": wall, "step_time": step_time, "parts": parts, "inputs": captured.get("inputs")}


def grpo_bare_loss_backward(model_dir: Path, inputs: dict, repeats: int) -> float:
    """Seconds for the policy-gradient loss + backward on TRL's own batch, in plain PyTorch."""
    model, _ = load_pretrained(model_dir)
    model.train()
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    keep = inputs["completion_ids"].size(1)
    adv = inputs["advantages"]
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        logits = model(input_ids=ids, attention_mask=mask).logits[:, -keep - 1 : -1, :]
        logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, inputs["completion_ids"].unsqueeze(-1)).squeeze(-1)
        cmask = inputs["completion_mask"].float()
        # GRPO with one update per generation: ratio = exp(logp - logp.detach()) == 1, so the loss is -A * ratio.
        ratio = torch.exp(logps - logps.detach())
        loss = (-(adv.unsqueeze(1) * ratio) * cmask).sum() / cmask.sum().clamp(min=1)
        loss.backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


# --- 3 and 4. evaluation ------------------------------------------------------------------------------------------


def eval_seconds(model, tok, prompts: list[str], batch_size: int) -> float:
    started = time.perf_counter()
    generate_greedy(model, tok, prompts, batch_size, 8)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps (smoke check; noisier)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    _collect_trl_profiling()
    short, long, bare_steps, grpo_steps = (10, 30, 20, 6) if args.quick else (20, 100, 80, 12)
    out: dict = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        }
    }
    with tempfile.TemporaryDirectory(prefix="rewardflow-perf-") as tmp:
        workdir = Path(tmp)
        p = _params(workdir)
        generate_dataset(p.paths, p.task)

        # 1. SFT
        trl_step, runtimes = sft_trl_step(workdir, short, long)
        bare_step = sft_bare_step(workdir, bare_steps, warmup=5)
        out["sft"] = {
            "trl_step_s": trl_step,
            "bare_step_s": bare_step,
            "ratio": trl_step / bare_step,
            "trl_train_runtime_s": runtimes,
        }
        print(
            f"SFT step: TRL {trl_step * 1000:.1f} ms, bare PyTorch {bare_step * 1000:.1f} ms, "
            f"ratio {trl_step / bare_step:.2f} (target <= 1.3)",
            flush=True,
        )

        # 2. GRPO (from the SFT model just trained, `long` steps)
        g = grpo_breakdown(workdir, grpo_steps, p.grpo.prompts_per_step)
        bare_lb = grpo_bare_loss_backward(workdir / "models/sft", g.pop("inputs"), repeats=10)
        lb = g["parts"]["loss + backward"]
        out["grpo"] = {**g, "bare_loss_backward_s": bare_lb, "loss_backward_ratio": lb / bare_lb}
        total = sum(g["parts"].values())
        print(f"GRPO step: {g['wall_per_step'] * 1000:.0f} ms wall")
        for name, seconds in g["parts"].items():
            print(f"  {name:<45} {seconds * 1000:8.1f} ms  {100 * seconds / total:5.1f}%")
        print(f"GRPO loss+backward: TRL {lb * 1000:.1f} ms, bare {bare_lb * 1000:.1f} ms, ratio {lb / bare_lb:.2f}")

        # 3. evaluation: batched vs one at a time, same checkpoint
        model, tok = load_pretrained(workdir / "models/grpo")
        prompts = [r["prompt"] for r in read_jsonl(p.paths.heldout_file)]
        single_n = 50 if args.quick else 100
        single = eval_seconds(model, tok, prompts[:single_n], 1) / single_n
        batched = eval_seconds(model, tok, prompts, p.evaluate.batch_size) / len(prompts)
        out["eval"] = {
            "single_prompts_per_s": 1 / single,
            "batched_prompts_per_s": 1 / batched,
            "speedup": single / batched,
            "batch_size": p.evaluate.batch_size,
        }
        print(
            f"evaluation: batched {1 / batched:.0f} prompts/s, one at a time {1 / single:.0f} prompts/s, "
            f"speedup {single / batched:.1f}x (target >= 5x)"
        )

        # 4. scaling
        n = len(prompts)
        base = [prompts[i % n] + "" for i in range(n)]
        curve = {}
        for factor in (1, 2, 4):
            curve[factor] = eval_seconds(model, tok, (base * factor)[: n * factor], p.evaluate.batch_size)
        out["scaling_eval_s"] = curve
        print(
            "evaluation time at 1x/2x/4x prompts: "
            + ", ".join(f"{k}x {v:.2f}s ({v / curve[1]:.2f})" for k, v in curve.items())
        )
        grpo_curve = {}
        for factor in (1, 2, 4):
            g = grpo_breakdown(workdir, grpo_steps, p.grpo.prompts_per_step * factor)
            grpo_curve[factor] = g["step_time"]
        out["scaling_grpo_step_s"] = grpo_curve
        print(
            "GRPO step time at 1x/2x/4x prompts per step: "
            + ", ".join(f"{k}x {v * 1000:.0f}ms ({v / grpo_curve[1]:.2f})" for k, v in grpo_curve.items())
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "perf.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"\nwrote {RESULTS / 'perf.json'}; rerun: .venv/bin/python benchmarks/perf.py{' --quick' * args.quick}")


if __name__ == "__main__":
    main()
