"""Does GRPO take the model past the SFT plateau? Held-out metrics over seeds, on the embedded default.

For each seed: base (untrained) model, SFT only, then SFT + GRPO with each reward mode at equal GRPO steps, and
(with mode multi) SFT alone given GRPO's wall time as extra steps (the equal-compute baseline); all evaluated on
the held-out file with the pipeline's own stage functions. Prints a markdown table of mean ± std over seeds and
the wall time of the default train path (SFT -> GRPO multi -> evaluate).

    .venv/bin/python benchmarks/learning.py                       # 3 seeds, modes exact binary multi
    .venv/bin/python benchmarks/learning.py --seeds 1 --set grpo.learning_rate=3e-4
    .venv/bin/python benchmarks/learning.py --params profiles/cpu-smollm2-135m.yaml --seeds 1 2 --modes exact multi

The base model is evaluated zero-shot, through its chat template when it has one (as the pipeline would feed it).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
from pathlib import Path

import torch

from tasks.config import load_params
from tasks.evaluation import evaluate_checkpoint
from tasks.grpo_trainer import STATS_PREFIX
from tasks.modeling import load_base_model, save_artifact
from tasks.prompts import PromptFormat
from tasks.reading import CONSENSUS, REFERENCES, reading_warnings, reference_answers, reference_metrics, short_of
from tasks.training import run_grpo, run_sft

METRICS = (
    "exact_match",
    "item_accuracy",
    "within_1",
    "mae",
    "format_compliance",
    "answer_diversity",
    "label_correlation",
    "consensus_accuracy",
    "tokens_per_prompt",
)


def _with_consensus(metrics: dict, records: list[dict], consensus: dict[str, list[int]] | None) -> dict[str, float]:
    if consensus is not None:
        # item accuracy against the consensus score instead of the one rater's label: did the model learn the
        # centre of the raters, or to imitate the most frequent rater?
        hits = []
        for r in records:
            truth = consensus[r["prompt"]]
            pred = r["prediction"] if len(r["prediction"]) == len(truth) else [None] * len(truth)
            hits += [a == b for a, b in zip(pred, truth, strict=True)]
        metrics["consensus_accuracy"] = sum(hits) / len(hits)
    return metrics


def _eval(model_dir: Path, p, rows, consensus: dict[str, list[int]] | None) -> dict[str, float]:
    metrics, records = evaluate_checkpoint(model_dir, p, rows)
    metrics = _with_consensus(metrics, records, consensus)
    metrics["tokens_per_prompt"] = _tokens(model_dir, [[r["completion"]] for r in records])
    return metrics


def _tokens(model_dir: Path, completions: list[list[str]]) -> float:
    """Generated tokens per prompt: each completion's tokens and its end-of-sequence token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    counts = [sum(len(tokenizer(c, add_special_tokens=False)["input_ids"]) + 1 for c in group) for group in completions]
    return statistics.mean(counts)


def _baselines(model_dir: Path, p, rows, consensus, sizes: list[int]) -> dict[str, dict[str, float]]:
    """MBR, majority and median over N samples of the model at GRPO's sampling temperature, for each N in sizes."""
    from baselines import RULES, choose

    from tasks.evaluation import score_predictions
    from tasks.modeling import load_pretrained
    from tasks.sampling import sample_completions

    model, tokenizer = load_pretrained(model_dir)
    prompts = [r["prompt"] for r in rows]
    samples = sample_completions(
        model,
        tokenizer,
        prompts,
        max(sizes),
        p.grpo.temperature,
        p.evaluate.max_new_tokens,
        PromptFormat.of_checkpoint(model_dir),
        max(1, p.evaluate.batch_size // max(sizes)),
    )
    truths = [r["scores"] for r in rows]
    out = {}
    for n in sizes:
        cost = _tokens(model_dir, [s[:n] for s in samples])
        for rule in RULES:
            texts = [choose(rule, s[:n], p.task.n_items, p.reward.config) for s in samples]
            metrics, records = score_predictions(texts, truths, p.reward.config, p.task.min_score, p.task.max_score)
            records = [{"prompt": q, **r} for q, r in zip(prompts, records, strict=True)]
            out[f"sft_{rule}@{n}"] = {**_with_consensus(metrics, records, consensus), "tokens_per_prompt": cost}
    return out


def run_seed(
    seed: int, workdir: Path, modes: list[str], overrides: list[str], params: str, samples: list[int]
) -> dict[str, dict]:
    from tasks.data import generate_dataset, read_jsonl

    # the embedded task's files are generated under the workdir (data/ may hold another task's); a user's own files
    # come in through --set paths.*_file=..., which replaces these
    data = [f"paths.{split}_file={workdir.parent}/data/{split}.jsonl" for split in ("train", "heldout", "validation")]
    base = [*data, f"seed={seed}", f"paths.models_dir={workdir}/models", f"paths.reports_dir={workdir}/reports"]
    p = load_params(params, [*base, *overrides])
    if Path(p.paths.train_file).parent == workdir.parent / "data":
        generate_dataset(p.paths, p.task)
    heldout = read_jsonl(p.paths.heldout_file)
    # the answers that need no reading (tasks/reading.py), scored on the same prompts
    answers = reference_answers(p, heldout)
    consensus = (
        {r["prompt"]: c for r, c in zip(heldout, answers[CONSENSUS], strict=True)} if CONSENSUS in answers else None
    )
    train_prompts = [r["prompt"] for r in read_jsonl(p.paths.train_file)]
    results: dict[str, dict] = {}
    for name, metrics in reference_metrics(p, heldout, answers).items():
        records = [{"prompt": r["prompt"], "prediction": a} for r, a in zip(heldout, answers[name], strict=True)]
        results[name] = _with_consensus(metrics, records, consensus)

    model, tok = load_base_model(p.model, train_prompts, p.seed, (p.task.min_score, p.task.max_score))
    fmt = PromptFormat.resolve(p.model.chat_template_mode, p.model.system_prompt, tok, p.model.name_or_path)
    results["base"] = _eval(save_artifact(model, tok, workdir / "models/base", fmt.record()), p, heldout, consensus)
    del model

    t0 = time.perf_counter()
    run_sft(p)
    sft_seconds = time.perf_counter() - t0
    results["sft"] = _eval(workdir / "models/sft", p, heldout, consensus)
    if samples:
        t3 = time.perf_counter()
        results.update(_baselines(workdir / "models/sft", p, heldout, consensus, samples))
        results["timing_baselines_s"] = {"seconds": time.perf_counter() - t3}
    for mode in modes:
        pm = load_params(params, [*base, *overrides, f"reward.mode={mode}"])
        t1 = time.perf_counter()
        grpo = run_grpo(pm)
        grpo_seconds = time.perf_counter() - t1
        # GRPO's training reward, first and last logging window: does the policy get better at what it optimises?
        windows = [e[REWARD_LOG] for e in grpo["logs"] if REWARD_LOG in e]
        results[f"training_reward_{mode}"] = {"first": windows[0], "last": windows[-1], "windows": len(windows)}
        t2 = time.perf_counter()
        results[f"grpo_{mode}"] = _eval(workdir / "models/grpo", pm, heldout, consensus)
        eval_seconds = time.perf_counter() - t2
        if mode == "multi":
            # Equal-compute baseline: SFT alone, given the wall time GRPO took as extra SFT steps (from scratch,
            # same schedule), so "GRPO helps" means more than "more training helps".
            extra = round(grpo_seconds / (sft_seconds / p.sft.max_steps))
            steps = p.sft.max_steps + extra
            pe = load_params(
                params, [*base, *overrides, f"paths.models_dir={workdir}/models_eq", f"sft.max_steps={steps}"]
            )
            run_sft(pe)
            results["sft_equal_compute"] = _eval(workdir / "models_eq/sft", pe, heldout, consensus)
            results["sft_equal_compute"]["steps"] = steps
            results["timing"] = {
                "sft_s": sft_seconds,
                "grpo_s": grpo_seconds,
                "evaluate_s": eval_seconds,
                "train_path_s": sft_seconds + grpo_seconds + eval_seconds,
            }
    return results


# what GRPO logs per logging window: the mean combined reward of its sampled completions
REWARD_LOG = f"{STATS_PREFIX}combined/mean"
# the claim: GRPO multi past each of these on within_1 and MAE (MBR over 8 samples when the run has it)
CLAIM_OVER = ("sft", "sft_equal_compute", "sft_mbr@8")


def claim_lines(seed: int, result: dict[str, dict]) -> list[str]:
    """Per seed: is SFT + GRPO multi past SFT, SFT given GRPO's wall time and MBR over 8 samples on within_1 and MAE,
    and did its training reward rise."""
    if "grpo_multi" not in result:
        return []
    g = result["grpo_multi"]
    out = []
    for row in (r for r in CLAIM_OVER if r in result):
        w, m = g["within_1"] - result[row]["within_1"], g["mae"] - result[row]["mae"]
        verdict = "NOT past" if short_of(g, result[row]) else "past"
        out.append(f"seed {seed}: grpo_multi {verdict} {row} (within_1 {w:+.3f}, MAE {m:+.3f})")
    r = result.get("training_reward_multi")
    if r:
        out.append(
            f"seed {seed}: grpo_multi training reward {r['first']:.3f} -> {r['last']:.3f} ({r['windows']} windows)"
        )
    return out


def summarise(per_seed: list[dict[str, dict]], seeds: list[int]) -> str:
    """The table of every model row and reference answer (last), mean ± std over seeds; then, per seed, the
    models that are not past the constant answer."""
    rows = [k for k in per_seed[0] if not k.startswith(("timing", "training_reward")) and k not in REFERENCES]
    rows = [*[r for r in rows if r != "sft_equal_compute"], *[r for r in rows if r == "sft_equal_compute"]]
    references = [k for k in REFERENCES if k in per_seed[0]]
    metrics = [m for m in METRICS if all(m in r[row] for r in per_seed for row in rows)]
    lines = ["| model | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for row in [*rows, *references]:
        cells = []
        for m in metrics:
            if m not in per_seed[0][row]:
                cells.append("")
                continue
            values = [r[row][m] for r in per_seed]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {sd:.3f}")
        name = f"*reference: {row}*" if row in references else row
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    trained = [r for r in rows if r != "base"]
    lines.append("")
    for seed, result in zip(seeds, per_seed, strict=True):
        short = reading_warnings(result, trained)
        lines += [f"seed {seed}: {line}" for line in short] or [f"seed {seed}: every model past the constant answer"]
        lines += claim_lines(seed, result)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="params.yaml or a profile (profiles/*.yaml)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--modes", nargs="+", default=["exact", "binary", "multi"])
    parser.add_argument(
        "--samples", type=int, nargs="*", default=[4, 8, 16], help="N for the inference-time baselines (none: skip)"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="params override")
    parser.add_argument("--workdir", type=Path, default=Path("benchmarks/.work"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/learning.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    started = time.perf_counter()
    per_seed = []
    for seed in args.seeds:
        per_seed.append(
            run_seed(seed, args.workdir / f"seed{seed}", args.modes, args.overrides, args.params, args.samples)
        )
        print(
            f"seed {seed}: "
            + json.dumps(
                {
                    k: {m: round(v[m], 4) for m in METRICS if m in v}
                    if not k.startswith(("timing", "training_reward"))
                    else v
                    for k, v in per_seed[-1].items()
                }
            ),
            flush=True,
        )
    table = summarise(per_seed, args.seeds)
    machine = (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}"
    )
    timings = [r["timing"]["train_path_s"] for r in per_seed if "timing" in r]
    overrides = args.overrides or "none"
    print(f"\n{args.params}: held-out metrics, mean ± std over seeds {args.seeds}; overrides {overrides}")
    print(f"machine: {machine}")
    print(table)
    if timings:
        print(
            f"\ndefault train path (SFT -> GRPO multi -> evaluate) wall: "
            f"{statistics.mean(timings):.0f} s mean over {len(timings)} seeds"
        )
    print(f"total benchmark wall: {time.perf_counter() - started:.0f} s")
    print(
        "rerun: .venv/bin/python benchmarks/learning.py "
        + " ".join(
            [f"--params {args.params}", f"--seeds {' '.join(map(str, args.seeds))}", f"--modes {' '.join(args.modes)}"]
            + [f"--samples {' '.join(map(str, args.samples))}"]
            + [f"--set {o}" for o in args.overrides]
        )
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "params": args.params,
                "seeds": args.seeds,
                "overrides": args.overrides,
                "per_seed": per_seed,
                "table": table,
                "machine": machine,
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
