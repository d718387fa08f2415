"""Does SFT alone teach a model to read? One SFT run per setting, scored on held-out prompts beside the answers that
need no reading (the constant answer, the consensus): the measurement behind docs/learning.md's "what was tried"
table. Settings are params overrides; each `--try` is one run from the same base model.

    .venv/bin/python benchmarks/sft_probe.py --params profiles/cpu-smollm2-135m.yaml --heldout 200 \\
        --try "sft.max_steps=150" --try "sft.max_steps=150 sft.learning_rate=0.001"

The data files are generated (task.kind and sizes from the params) under --workdir, never the project's data/.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shlex
import time
from pathlib import Path

import torch

from tasks.config import load_params
from tasks.data import generate_dataset, read_jsonl
from tasks.evaluation import evaluate_checkpoint
from tasks.reading import not_past_constant, reference_metrics
from tasks.training import run_sft

COLUMNS = ("within_1", "mae", "answer_diversity", "label_correlation", "format_compliance")


def probe(params: str, overrides: list[str], workdir: Path, n_heldout: int) -> dict:
    data = [f"paths.{split}_file={workdir}/data/{split}.jsonl" for split in ("train", "heldout", "validation")]
    out = [f"paths.models_dir={workdir}/models", f"paths.reports_dir={workdir}/reports"]
    p = load_params(params, [*data, *out, *overrides])
    generate_dataset(p.paths, p.task)
    rows = read_jsonl(p.paths.heldout_file)[:n_heldout]
    started = time.perf_counter()
    run_sft(p)
    seconds = time.perf_counter() - started
    metrics, records = evaluate_checkpoint(Path(p.paths.models_dir) / "sft", p, rows)
    refs = reference_metrics(p, rows)
    examples = [r["completion"] for r in records[:3]]
    return {"sft": metrics, **refs, "sft_s": seconds, "examples": examples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--try", dest="tries", action="append", required=True, help="space-separated overrides")
    parser.add_argument("--set", dest="common", action="append", default=[], help="an override for every try")
    parser.add_argument("--heldout", type=int, default=200, help="held-out prompts scored")
    parser.add_argument("--workdir", type=Path, default=Path("benchmarks/.work/sft_probe"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sft_probe.jsonl"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print("| setting | " + " | ".join(COLUMNS) + " | constant within_1 / MAE | past constant | SFT s |")
    print("|---" * (len(COLUMNS) + 4) + "|")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for i, setting in enumerate(args.tries):
        overrides = [*args.common, *shlex.split(setting)]
        result = probe(args.params, overrides, args.workdir / f"try{i}", args.heldout)
        sft, constant = result["sft"], result["constant"]
        verdict = "yes" if not_past_constant(sft, constant) is None else "no"
        print(
            f"| {setting} | "
            + " | ".join(f"{sft[c]:.3f}" for c in COLUMNS)
            + f" | {constant['within_1']:.3f} / {constant['mae']:.3f} | {verdict} | {result['sft_s']:.0f} |",
            flush=True,
        )
        with args.out.open("a") as handle:
            handle.write(json.dumps({"params": args.params, "overrides": overrides, **result}) + "\n")
    print(
        "rerun: .venv/bin/python benchmarks/sft_probe.py "
        + " ".join([f"--params {args.params}", f"--heldout {args.heldout}"])
        + "".join(f" --set {c}" for c in args.common)
        + "".join(f" --try {shlex.quote(t)}" for t in args.tries)
    )


if __name__ == "__main__":
    main()
