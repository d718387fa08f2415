"""Speed where compute dominates: SmolLM2-135M-Instruct (profiles/cpu-smollm2-135m.yaml) on this CPU, against the
machine's own fp32 matrix-multiply peak measured in the same run.

    .venv/bin/python benchmarks/perf_pretrained.py          # ~15 min on 2 cores -> results/perf_pretrained.json
    .venv/bin/python benchmarks/perf_pretrained.py --quick  # fewer steps

1. Peak: torch.mm on 2048 x 2048 fp32 matrices (3 warm-ups, mean of 10), in FLOP/s.
2. SFT step through run_sft (LoRA, the profile's batch): seconds (difference of two run lengths, so start-up cancels),
   tokens/s, and achieved FLOP/s as a fraction of the peak, the FLOPs counted as the kernels do them
   (perf.training_flops: the non-embedding weights on every token computed, the output head on the labelled
   positions only, attention's own products).
3. GRPO step breakdown from TRL's profiling spans (generation / scoring / loss + backward) and the loss + backward's
   FLOP/s by the same count, for the pass the trainer ran (grpo.shared_prefix auto: the shared-prefix one).
4. Held-out evaluation of every held-out prompt at several batch sizes, against the SFT stage's training time.
5. GRPO's loss + backward with each group's prompt computed once (grpo.shared_prefix) and row-wise (TRL's pass), in
   the same run, at group sizes 4, 8 and 16 on the profile's prompts and LoRA; then whole GRPO steps with the switch
   on and off. `--shared-prefix` runs this part alone (~5 min), from the untrained weights (the timing does not
   depend on them).
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
from perf import RESULTS, SPANS, _collect_trl_profiling, _params, grpo_breakdown, sft_trl_step, training_flops

from tasks.data import completion_for, generate_dataset, read_jsonl
from tasks.evaluation import generate_greedy
from tasks.modeling import load_base_model, load_pretrained
from tasks.prompts import PromptFormat, prompt_ids

PROFILE = "profiles/cpu-smollm2-135m.yaml"
# the profile's prompt format: SmolLM2's chat template with the template's own system prompt
CHAT = PromptFormat(chat=True)


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


def sft_step_shape(tokenizer, rows: list[dict], batch_size: int, samples: int = 2000) -> dict[str, float]:
    """An average SFT batch as the kernels see it: real tokens (prompt through the chat template, the target and its
    end-of-turn), tokens computed (the batch's longest sequence times the batch size), labelled positions (the
    target's tokens: what the head projects) and attention pairs (each padded sequence's length squared)."""
    import random

    lengths, targets = [], []
    for ids, row in zip(prompt_ids(tokenizer, [r["prompt"] for r in rows], CHAT), rows, strict=True):
        target = tokenizer(completion_for(row["scores"]) + "<|im_end|>\n", add_special_tokens=False)["input_ids"]
        lengths.append(len(ids) + len(target))
        targets.append(len(target))
    rng = random.Random(0)
    batches = [rng.sample(range(len(rows)), batch_size) for _ in range(samples)]
    longest = [max(lengths[i] for i in batch) for batch in batches]
    return {
        "tokens": statistics.mean(lengths) * batch_size,
        "computed": statistics.mean(n * batch_size for n in longest),
        "labelled": statistics.mean(targets) * batch_size,
        "attention_pairs": statistics.mean(n * n * batch_size for n in longest),
    }


def grpo_pass_shape(inputs: dict, shared: bool) -> dict[str, float]:
    """GRPO's loss pass on TRL's batch as the kernels see it: row-wise, every row's prompt and completion; shared,
    one packed sequence per prompt (its prompt once, then its completions' real tokens) padded to the longest."""
    from tasks.sampling import prompt_groups

    rows, width = inputs["prompt_ids"].size(0), inputs["prompt_ids"].size(1) + inputs["completion_ids"].size(1)
    labelled = float(inputs["completion_mask"].sum())
    if not shared:
        return {"computed": rows * width, "labelled": labelled, "attention_pairs": rows * width * width}
    lengths = [
        int(inputs["prompt_mask"][group[0]].sum()) + int(inputs["completion_mask"][group].sum())
        for group in prompt_groups(inputs["prompt_ids"], inputs["prompt_mask"])
    ]
    longest = max(lengths)
    return {"computed": len(lengths) * longest, "labelled": labelled, "attention_pairs": len(lengths) * longest**2}


def shared_prefix_batch(tokenizer, rows: list[dict], prompts: int, group: int, seed: int = 0) -> dict:
    """A GRPO batch as TRL's loss receives it: `prompts` chat-formatted prompts of the profile's task, each `group`
    times, left-padded; completions the task's answers (other rows' scores, so the lengths differ) with the
    end-of-turn, right-padded."""
    import random

    rng = random.Random(seed)
    chosen = rng.sample(rows, prompts)
    encoded = prompt_ids(tokenizer, [r["prompt"] for r in chosen], CHAT)
    answers = [
        tokenizer(completion_for(rng.choice(rows)["scores"]) + "<|im_end|>", add_special_tokens=False)["input_ids"]
        for _ in range(prompts * group)
    ]
    width, completion_width = max(map(len, encoded)), max(map(len, answers))
    n = prompts * group
    batch = {
        "prompt_ids": torch.full((n, width), tokenizer.pad_token_id),
        "prompt_mask": torch.zeros(n, width, dtype=torch.long),
        "completion_ids": torch.full((n, completion_width), tokenizer.pad_token_id),
        "completion_mask": torch.zeros(n, completion_width, dtype=torch.long),
    }
    for row in range(n):
        ids, answer = encoded[row // group], answers[row]
        batch["prompt_ids"][row, width - len(ids) :] = torch.tensor(ids)
        batch["prompt_mask"][row, width - len(ids) :] = 1
        batch["completion_ids"][row, : len(answer)] = torch.tensor(answer)
        batch["completion_mask"][row, : len(answer)] = 1
    return batch


def _row_wise(model, ids, mask, width: int, temperature: float):
    """TRL's GRPO log-probs: every row through the model, the fused head on the completion's labels."""
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :-width] = -100
    return model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True).log_probs[:, -width:]


def _shared(model, ids, mask, width: int, temperature: float):
    from tasks.sampling import shared_prefix_logps

    return shared_prefix_logps(model, ids, mask, width, temperature, compute_entropy=True)[0]


def shared_prefix_timing(p, groups=(4, 8, 16), repeats: int = 3) -> dict:
    """Seconds of GRPO's loss + backward per step, row-wise (TRL's fused-head pass, as the trainer calls it) and
    with the shared prefix (tasks.sampling.shared_prefix_logps), on the profile's model with its GRPO LoRA; the
    median of `repeats` after one warm-up, both measured here, one after the other."""
    from peft import get_peft_model
    from trl.trainer.utils import add_fused_lm_head

    from tasks.modeling import peft_config_for
    from tasks.trainer_setup import score_labelled_positions_only

    score_labelled_positions_only()
    model, tokenizer = load_base_model(p.model, [], p.seed)
    add_fused_lm_head(model, temperature=p.grpo.temperature, outputs=("log_probs", "entropy"))
    model = get_peft_model(model, peft_config_for(p.grpo.lora, p.model, model, "grpo"))
    model.train()
    rows = read_jsonl(p.paths.train_file)
    out = {}
    for group in groups:
        batch = shared_prefix_batch(tokenizer, rows, p.grpo.prompts_per_step, group)
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
        width = batch["completion_ids"].size(1)
        completion_mask = batch["completion_mask"].bool()
        advantages = torch.randn(ids.size(0), 1, generator=torch.Generator().manual_seed(0))

        seconds = {}
        for name, logps_of in (("row_wise", _row_wise), ("shared_prefix", _shared), ("row_wise_again", _row_wise)):
            times = []
            for _ in range(repeats + 1):
                model.zero_grad()
                started = time.perf_counter()
                logps = logps_of(model, ids, mask, width, p.grpo.temperature)
                loss = -(logps * advantages * completion_mask).sum() / completion_mask.sum()
                loss.backward()
                times.append(time.perf_counter() - started)
            seconds[name] = statistics.median(times[1:])
        tokens = {"prompt": int(batch["prompt_mask"].sum()), "completion": int(completion_mask.sum())}
        row_wise_s = min(seconds["row_wise"], seconds["row_wise_again"])
        out[group] = {**seconds, "speedup": row_wise_s / seconds["shared_prefix"], "tokens": tokens}
        print(
            f"loss + backward, {p.grpo.prompts_per_step} prompts x {group} completions "
            f"({tokens['prompt']} prompt + {tokens['completion']} completion tokens): row-wise "
            f"{seconds['row_wise']:.2f} / {seconds['row_wise_again']:.2f} s, shared prefix "
            f"{seconds['shared_prefix']:.2f} s -> {out[group]['speedup']:.2f}x",
            flush=True,
        )
    return out


def shared_prefix_steps(workdir: Path, p, steps: int) -> dict:
    """Whole GRPO steps through run_grpo with grpo.shared_prefix true and false (TRL's step_time, the first step
    left out), from the untrained weights saved as the SFT checkpoint."""
    from tasks.modeling import save_artifact

    model, tokenizer = load_base_model(p.model, [], p.seed)
    save_artifact(model, tokenizer, workdir / "models" / "sft", {"chat_template": True})
    del model
    out = {}
    for switch in ("false", "true"):
        SPANS.clear()
        g = grpo_breakdown(workdir, steps, p.grpo.prompts_per_step, f"grpo.shared_prefix={switch}", params_file=PROFILE)
        out[switch] = {"step_s": g["step_time"], "loss_backward_s": g["parts"]["loss + backward"]}
    print(
        f"GRPO step ({p.grpo.prompts_per_step} x {p.grpo.num_generations}): TRL's pass {out['false']['step_s']:.2f} s "
        f"(loss + backward {out['false']['loss_backward_s']:.2f} s), shared prefix {out['true']['step_s']:.2f} s "
        f"(loss + backward {out['true']['loss_backward_s']:.2f} s)",
        flush=True,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--eval-batch-sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--shared-prefix", action="store_true", help="only part 5: the shared-prefix training pass")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    _collect_trl_profiling()
    if args.shared_prefix:
        with tempfile.TemporaryDirectory(prefix="rewardflow-perf-shared-prefix-") as tmp:
            p = _params(Path(tmp), params_file=PROFILE)
            generate_dataset(p.paths, p.task)
            out = {"loss_backward": shared_prefix_timing(p), "grpo_step": shared_prefix_steps(Path(tmp), p, 4)}
        out["machine"] = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "perf_shared_prefix.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
        print("\nrerun: .venv/bin/python benchmarks/perf_pretrained.py --shared-prefix")
        return
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
        config = model.config
        del model
        rows = read_jsonl(p.paths.train_file)

        # 2. SFT
        shape = sft_step_shape(tokenizer, rows, p.sft.batch_size)
        step, runtimes = sft_trl_step(workdir, short, long, params_file=PROFILE)
        flops = training_flops(config, shape["computed"], shape["labelled"], shape["attention_pairs"]) / step
        out["sft"] = {
            "step_s": step,
            "train_runtime_s": runtimes,
            **shape,
            "tokens_per_s": shape["tokens"] / step,
            "flops": flops,
            "fraction_of_peak": flops / peak,
        }
        print(
            f"SFT step (batch {p.sft.batch_size}, LoRA r {p.sft.lora.r}): {step:.2f} s, "
            f"{shape['tokens'] / step:.0f} tokens/s, {flops / 1e9:.0f} GFLOP/s = {flops / peak:.0%} of peak",
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
        out["grpo"]["tokens"] = {"completions": completions, "prompt": prompt_tokens, "completion": completion_tokens}
        print(f"GRPO step ({completions} completions): {g['wall_per_step']:.2f} s wall")
        for name, seconds in g["parts"].items():
            print(f"  {name:<45} {seconds:7.2f} s  {100 * seconds / total:5.1f}%")
        pass_shape = grpo_pass_shape(inputs, p.grpo.shared_prefix is not False)
        loss_flops = training_flops(
            config, pass_shape["computed"], pass_shape["labelled"], pass_shape["attention_pairs"]
        )
        achieved = loss_flops / g["parts"]["loss + backward"]
        print(f"  loss + backward: {achieved / 1e9:.0f} GFLOP/s = {achieved / peak:.0%} of peak", flush=True)
        out["grpo"]["loss_backward_fraction_of_peak"] = achieved / peak

        # 4. evaluation
        model, tokenizer = load_pretrained(workdir / "models" / "grpo")
        prompts = [r["prompt"] for r in read_jsonl(p.paths.heldout_file)]
        timings = {}
        for batch_size in args.eval_batch_sizes:
            started = time.perf_counter()
            generate_greedy(model, tokenizer, prompts, batch_size, p.evaluate.max_new_tokens, CHAT)
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
