"""The GPU profile on a real accelerator, as far as an offline machine allows: a model with Qwen2.5-0.5B's exact
shape (random weights, since the hub cannot be reached there) goes through the pipeline's own stages with the
profile's settings (LoRA, bf16) and reports step times, peak GPU memory and held-out decoding throughput.

    python benchmarks/gpu_profile.py --params profiles/gpu-qwen2.5-0.5b.yaml --sft-steps 30 --grpo-steps 10

Random weights learn nothing useful in 30 steps; this measures cost (time, memory), not quality. vLLM is not
installed there, so GRPO generation runs through transformers (`grpo.use_vllm` off for this check).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from tasks.config import load_params
from tasks.data import generate_dataset, read_jsonl
from tasks.evaluation import generate_greedy
from tasks.modeling import build_word_tokenizer, load_pretrained, task_vocabulary
from tasks.training import run_grpo, run_sft

# Qwen2.5-0.5B-Instruct's config.json (494M parameters, tied embeddings)
QWEN25_05B = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    vocab_size=151936,
    max_position_embeddings=32768,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)


SMOKE = dict(
    QWEN25_05B,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=1000,
)


def build_stand_in(out: Path, prompts: list[str], shape: dict) -> Path:
    """A randomly initialised Qwen2 of the 0.5B shape with a word tokenizer over the task, saved as a local folder
    the profile's `model.name_or_path` can point at (the pipeline's from_pretrained + LoRA path)."""
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tok = build_word_tokenizer(task_vocabulary(prompts))
    config = Qwen2Config(
        **shape,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id
    )
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="profiles/gpu-qwen2.5-0.5b.yaml")
    parser.add_argument("--sft-steps", type=int, default=30)
    parser.add_argument("--grpo-steps", type=int, default=10)
    parser.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    parser.add_argument("--smoke", action="store_true", help="a tiny model, CPU allowed: checks the script runs")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        raise SystemExit("no CUDA device: this check is for a GPU machine")
    cuda = torch.cuda.is_available()
    results: dict = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="rewardflow-gpu-") as tmp:
        work = Path(tmp)
        paths = [
            f"paths.train_file={work}/data/train.jsonl",
            f"paths.heldout_file={work}/data/heldout.jsonl",
            f"paths.validation_file={work}/data/validation.jsonl",
            f"paths.models_dir={work}/models",
            f"paths.reports_dir={work}/reports",
            "task.n_train=2000",
            "task.n_heldout=200",
        ]
        p = load_params(args.params, paths)
        generate_dataset(p.paths, p.task)
        prompts = [r["prompt"] for r in read_jsonl(p.paths.train_file)]
        base = build_stand_in(work / "base", prompts, SMOKE if args.smoke else QWEN25_05B)
        steps = [f"sft.max_steps={args.sft_steps}", f"grpo.max_steps={args.grpo_steps}", "grpo.use_vllm=false"]
        p = load_params(args.params, [*paths, f"model.name_or_path={base}", *steps])
        n_params = sum(t.numel() for t in load_pretrained(base)[0].parameters())
        results["parameters"] = n_params

        for name, run in (("sft", run_sft), ("grpo", run_grpo)):
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            out = run(p)
            wall = time.perf_counter() - started
            runtime = out["summary"]["train_runtime"]
            results[name] = {
                "steps": out["summary"]["steps"],
                "train_runtime_s": runtime,
                "s_per_step": runtime / out["summary"]["steps"],
                "stage_wall_s": wall,
                "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
            }
            print(name, json.dumps(results[name]), flush=True)

        model, tok = load_pretrained(Path(p.paths.models_dir) / "grpo")
        model = model.to("cuda", dtype=torch.bfloat16) if cuda else model
        heldout = [r["prompt"] for r in read_jsonl(p.paths.heldout_file)]
        generate_greedy(model, tok, heldout[:8], 8, p.evaluate.max_new_tokens)  # warm-up
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        sync()
        started = time.perf_counter()
        generate_greedy(model, tok, heldout, p.evaluate.batch_size, p.evaluate.max_new_tokens)
        sync()
        results["eval_prompts_per_s"] = len(heldout) / (time.perf_counter() - started)
    print(json.dumps(results, indent=2))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_profile.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
