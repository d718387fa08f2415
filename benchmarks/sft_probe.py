"""Does SFT teach a model to read? One SFT run per setting, scored on held-out prompts beside the answers that need
no reading (the constant answer, the consensus): the measurement behind docs/learning.md's "what was tried" table.
Settings are params overrides; each `--try` is one run from the same base model. With --grpo, GRPO runs after each
SFT and is scored too (on the validation rows with --split validation, for choosing GRPO settings); --sft-from
starts every try's GRPO from one SFT checkpoint instead of training SFT.

    .venv/bin/python benchmarks/sft_probe.py --params profiles/cpu-smollm2-135m.yaml --heldout 200 \\
        --try "sft.max_steps=150" --try "sft.max_steps=150 sft.learning_rate=0.001"
    .venv/bin/python benchmarks/sft_probe.py --params profiles/cpu-smollm2-135m.yaml --split validation --grpo \\
        --sft-from benchmarks/.work/sft_probe/try0/models/sft \\
        --try "grpo.learning_rate=5e-5" --try "grpo.learning_rate=2e-4"

The data files are generated (task.kind and sizes from the params) under --workdir, never the project's data/.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shlex
import shutil
import time
from pathlib import Path

import torch

from tasks.config import load_params
from tasks.data import generate_dataset, read_jsonl
from tasks.evaluation import evaluate_checkpoint
from tasks.reading import not_past_constant, reference_metrics
from tasks.training import run_grpo, run_sft

COLUMNS = ("within_1", "mae", "answer_diversity", "label_correlation", "format_compliance")


def probe(
    params: str, overrides: list[str], workdir: Path, n_rows: int, split: str, grpo: bool, sft_from: Path | None
) -> dict:
    data = [f"paths.{name}_file={workdir}/data/{name}.jsonl" for name in ("train", "heldout", "validation")]
    out = [f"paths.models_dir={workdir}/models", f"paths.reports_dir={workdir}/reports"]
    p = load_params(params, [*data, *out, *overrides])
    generate_dataset(p.paths, p.task)
    rows = read_jsonl(getattr(p.paths, f"{split}_file"))[:n_rows]
    models = Path(p.paths.models_dir)
    result: dict = {}
    started = time.perf_counter()
    if sft_from is None:
        run_sft(p)
        result["sft_s"] = time.perf_counter() - started
    else:
        models.mkdir(parents=True, exist_ok=True)
        shutil.copytree(sft_from, models / "sft", dirs_exist_ok=True)
    result["sft"], records = evaluate_checkpoint(models / "sft", p, rows)
    result["examples"] = [r["completion"] for r in records[:3]]
    if grpo:
        started = time.perf_counter()
        run_grpo(p)
        result["grpo_s"] = time.perf_counter() - started
        result["grpo"], _ = evaluate_checkpoint(models / "grpo", p, rows)
    return {**result, **reference_metrics(p, rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--try", dest="tries", action="append", required=True, help="space-separated overrides")
    parser.add_argument(
        "--set", dest="common", action="append", default=[], help="space-separated overrides for every try"
    )
    parser.add_argument("--heldout", type=int, default=200, help="prompts scored (the first of the split)")
    parser.add_argument("--split", choices=("heldout", "validation"), default="heldout", help="the rows scored")
    parser.add_argument("--grpo", action="store_true", help="run GRPO after SFT and score it too")
    parser.add_argument("--sft-from", type=Path, help="an SFT checkpoint every try starts GRPO from (no SFT)")
    parser.add_argument("--workdir", type=Path, default=Path("benchmarks/.work/sft_probe"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sft_probe.jsonl"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"{args.split} rows 1-{args.heldout}")
    print("| setting | model | " + " | ".join(COLUMNS) + " | constant within_1 / MAE | past constant | train s |")
    print("|---" * (len(COLUMNS) + 5) + "|")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for i, setting in enumerate(args.tries):
        overrides = [*(o for common in args.common for o in shlex.split(common)), *shlex.split(setting)]
        workdir = args.workdir / f"try{i}"
        result = probe(args.params, overrides, workdir, args.heldout, args.split, args.grpo, args.sft_from)
        constant = result["constant"]
        for model in ("sft", "grpo") if args.grpo else ("sft",):
            metrics = result[model]
            verdict = "yes" if not_past_constant(metrics, constant) is None else "no"
            seconds = result.get(f"{model}_s")
            print(
                f"| {setting} | {model} | "
                + " | ".join(f"{metrics[c]:.3f}" for c in COLUMNS)
                + f" | {constant['within_1']:.3f} / {constant['mae']:.3f} | {verdict} | "
                + ("" if seconds is None else f"{seconds:.0f}")
                + " |",
                flush=True,
            )
        with args.out.open("a") as handle:
            handle.write(json.dumps({"params": args.params, "overrides": overrides, **result}) + "\n")
    print(
        "rerun: .venv/bin/python benchmarks/sft_probe.py "
        + " ".join([f"--params {args.params}", f"--heldout {args.heldout}", f"--split {args.split}"])
        + (" --grpo" if args.grpo else "")
        + (f" --sft-from {args.sft_from}" if args.sft_from else "")
        + "".join(f" --set {shlex.quote(c)}" for c in args.common)
        + "".join(f" --try {shlex.quote(t)}" for t in args.tries)
    )


if __name__ == "__main__":
    main()
