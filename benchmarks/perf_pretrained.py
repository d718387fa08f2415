"""Speed where compute dominates: SmolLM2-135M-Instruct (profiles/cpu-smollm2-135m.yaml) on this CPU, against the
machine's own fp32 matrix-multiply peak measured in the same run.

    .venv/bin/python benchmarks/perf_pretrained.py          # ~15 min on 2 cores -> results/perf_pretrained.json
    .venv/bin/python benchmarks/perf_pretrained.py --quick  # fewer steps

1. Peak: torch.mm on 2048 x 2048 fp32 matrices (3 warm-ups, mean of 10), in FLOP/s.
2. SFT step through run_sft (LoRA, the profile's batch): seconds (difference of two run lengths, so start-up cancels),
   tokens/s, and achieved FLOP/s = 4 x N x tokens / step time, N = the model's parameters (every one of them is a
   matrix-multiply weight, the tied embedding as the output head): 2NT forward, 2NT backward through the frozen
   weights to reach the adapters; the adapters' own work is under 1 %. As a fraction of the peak.
3. GRPO step breakdown from TRL's profiling spans (generation / scoring / loss + backward) and each part's FLOP/s.
4. Held-out evaluation of every held-out prompt at several batch sizes, against the SFT stage's training time.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from perf import RESULTS, SPANS, _collect_trl_profiling, _params, grpo_breakdown, sft_trl_step

from tasks.data import completion_for, generate_dataset, read_jsonl
from tasks.evaluation import generate_greedy
from tasks.modeling import load_base_model, load_pretrained
from tasks.prompts import prompt_ids

PROFILE = "profiles/cpu-smollm2-135m.yaml"


def matmul_peak(size: int = 2048, warmups: int = 3, repeats: int = 10) -> float:
    """FLOP/s of torch.mm on size x size fp32 matrices with this process's threads."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(warmups):
        a @ b
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 2 * size**3 / statistics.mean(times)


def sft_tokens_per_step(tokenizer, rows: list[dict], batch_size: int, samples: int = 2000) -> tuple[float, float]:
    """(real tokens, padded tokens) of an average SFT batch: prompt through the chat template plus the target and
    its end-of-turn; padded = the batch's longest sequence times the batch size (what the kernels compute)."""
    import random

    lengths = []
    for ids, row in zip(prompt_ids(tokenizer, [r["prompt"] for r in rows], True), rows, strict=True):
        target = tokenizer(completion_for(row["scores"]) + "<|im_end|>\n", add_special_tokens=False)["input_ids"]
        lengths.append(len(ids) + len(target))
    rng = random.Random(0)
    padded = statistics.mean(max(rng.sample(lengths, batch_size)) * batch_size for _ in range(samples))
    return statistics.mean(lengths) * batch_size, padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--eval-batch-sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    _collect_trl_profiling()
    short, long, grpo_steps = (2, 5, 3) if args.quick else (3, 13, 6)
    out: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}}
    out["machine"]["torch"] = torch.__version__

    peak = matmul_peak()
    out["matmul_peak_flops"] = peak
    threads = torch.get_num_threads()
    print(f"fp32 matmul peak (torch.mm 2048^2, {threads} threads): {peak / 1e9:.0f} GFLOP/s", flush=True)

    with tempfile.TemporaryDirectory(prefix="rewardflow-perf-135m-") as tmp:
        workdir = Path(tmp)
        p = _params(workdir, params_file=PROFILE)
        generate_dataset(p.paths, p.task)
        model, tokenizer = load_base_model(p.model, [], p.seed)
        n_params = model.num_parameters()
        del model
        rows = read_jsonl(p.paths.train_file)

        # 2. SFT
        real, padded = sft_tokens_per_step(tokenizer, rows, p.sft.batch_size)
        step, runtimes = sft_trl_step(workdir, short, long, params_file=PROFILE)
        flops = 4 * n_params * real / step
        out["sft"] = {
            "step_s": step,
            "train_runtime_s": runtimes,
            "tokens_per_step": real,
            "padded_tokens_per_step": padded,
            "tokens_per_s": real / step,
            "flops": flops,
            "fraction_of_peak": flops / peak,
            "fraction_of_peak_padded": 4 * n_params * padded / step / peak,
        }
        print(
            f"SFT step (batch {p.sft.batch_size}, LoRA r {p.sft.lora.r}): {step:.2f} s, {real / step:.0f} tokens/s, "
            f"{flops / 1e9:.0f} GFLOP/s = {flops / peak:.0%} of peak ({4 * n_params * padded / step / peak:.0%} "
            "counting padding)",
            flush=True,
        )

        # 3. GRPO from the SFT model just trained
        SPANS.clear()
        g = grpo_breakdown(workdir, grpo_steps, p.grpo.prompts_per_step, params_file=PROFILE)
        inputs = g.pop("inputs")
        out["grpo"] = g
        total = sum(g["parts"].values())
        completions = inputs["completion_ids"].size(0)
        prompt_tokens = int(inputs["prompt_mask"].sum())
        completion_tokens = int(inputs["completion_mask"].sum())
        loss_flops = 4 * n_params * (prompt_tokens + completion_tokens)
        out["grpo"]["tokens"] = {"completions": completions, "prompt": prompt_tokens, "completion": completion_tokens}
        print(f"GRPO step ({completions} completions): {g['wall_per_step']:.2f} s wall")
        for name, seconds in g["parts"].items():
            print(f"  {name:<45} {seconds:7.2f} s  {100 * seconds / total:5.1f}%")
        lb = g["parts"]["loss + backward"]
        achieved = loss_flops / lb
        print(f"  loss + backward: {achieved / 1e9:.0f} GFLOP/s = {achieved / peak:.0%} of peak", flush=True)
        out["grpo"]["loss_backward_fraction_of_peak"] = loss_flops / lb / peak

        # 4. evaluation
        model, tokenizer = load_pretrained(workdir / "models" / "grpo")
        prompts = [r["prompt"] for r in read_jsonl(p.paths.heldout_file)]
        timings = {}
        for batch_size in args.eval_batch_sizes:
            started = time.perf_counter()
            generate_greedy(model, tokenizer, prompts, batch_size, p.evaluate.max_new_tokens, True)
            timings[batch_size] = time.perf_counter() - started
            seconds = timings[batch_size]
            print(f"evaluation of {len(prompts)} prompts at batch {batch_size}: {seconds:.1f} s", flush=True)
        sft_stage = step * p.sft.max_steps
        best = min(timings, key=timings.get)
        out["eval"] = {"seconds_by_batch": timings, "best_batch": best, "sft_training_s": sft_stage}
        print(
            f"evaluation (both checkpoints, batch {best}): {2 * timings[best]:.0f} s vs SFT training "
            f"({p.sft.max_steps} steps) {sft_stage:.0f} s"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "perf_pretrained.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"\nrerun: .venv/bin/python benchmarks/perf_pretrained.py{' --quick' * args.quick}")


if __name__ == "__main__":
    main()
