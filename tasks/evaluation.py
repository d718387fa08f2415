"""Evaluation of the checkpoints: batched greedy decoding, scored with the reward module's own functions.

Two stages use it: evaluate on the held-out file (reports/eval.json: the reported numbers and the promotion gate's)
and validation_eval on the validation file (reports/validation_eval.json: what sweeps tune on).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.config import Params
from tasks.data import read_jsonl, write_jsonl
from tasks.metrics import COUNT, EXAMPLE_METRICS, METRICS, Scored, aggregate
from tasks.rewards import RewardConfig, score_completion

if TYPE_CHECKING:
    from tasks.prompts import PromptFormat

log = logging.getLogger(__name__)

METRIC_KEYS = (*METRICS, COUNT)
# the trained checkpoints the evaluation stages score (models/<name>), beside tasks.reading's reference answers
TRAINED = ("sft", "grpo")
# the metrics files of the two evaluation stages under paths.reports_dir (dvc.yaml declares the same)
EVAL_REPORT = "eval.json"
VALIDATION_REPORT = "validation_eval.json"


def in_table_order(table: dict[str, Any]) -> dict[str, Any]:
    """An evaluation table's entries ({name: metrics}, eval.json sorts them by name) in the order a reader compares
    them: the trained checkpoints, any other model (a champion), then the answers that need no reading."""
    from tasks.reading import REFERENCES

    def rank(name: str) -> tuple[int, int]:
        if name in TRAINED:
            return 0, TRAINED.index(name)
        return (2, REFERENCES.index(name)) if name in REFERENCES else (1, 0)

    return dict(sorted(table.items(), key=lambda item: rank(item[0])))


def score_example(text: str, truth: Sequence[int], config: RewardConfig, score_span: int) -> dict[str, Any]:
    """Per-example values of one completion: what each held-out metric (tasks.metrics) averages."""
    scores = score_completion(text, truth, config)
    pred, truth = scores["prediction"], list(truth)
    if scores["structural_failure"]:
        # A structural failure counts every item at the worst in-range error.
        errors = [score_span] * len(truth)
    else:
        errors = [min(abs(p - g), score_span) for p, g in zip(pred, truth, strict=True)]
    scored = Scored(scores, errors)
    return {"prediction": pred, **{m.example_key: m.of_example(scored) for m in EXAMPLE_METRICS.values()}}


def score_predictions(
    texts: Sequence[str],
    truths: Sequence[Sequence[int]],
    config: RewardConfig,
    min_score: int,
    max_score: int,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Held-out metrics and per-example records for completions against their ground truth.

    MAE counts a structurally failed answer at the worst in-range error (max_score - min_score) per item,
    and caps any item's error there, so one absurd number cannot swamp the mean.
    """
    if len(texts) != len(truths):
        raise ValueError(f"{len(texts)} completions for {len(truths)} ground truths")
    span = max_score - min_score
    examples = [score_example(t, g, config, span) for t, g in zip(texts, truths, strict=True)]
    return aggregate(examples, truths), examples


def generate_greedy(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    batch_size: int,
    max_new_tokens: int,
    fmt: PromptFormat | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Greedy completions for prompts, fed as training fed them (tasks.prompts.prompt_ids), decoded in left-padded
    batches with the KV cache; generation stops at the tokenizer's EOS (the end-of-turn token of a chat model)."""
    import torch

    from tasks.prompts import PLAIN, prompt_ids

    model.eval()
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outputs: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            ids = prompt_ids(tokenizer, prompts[start : start + batch_size], fmt or PLAIN)
            enc = tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
            enc = {k: v.to(model.device) for k, v in enc.items()}
            with torch.inference_mode():
                out = model.generate(
                    **enc,
                    do_sample=False,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    use_cache=True,
                )
            new_tokens = out[:, enc["input_ids"].shape[1] :]
            outputs += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            if progress:
                progress(len(outputs), len(prompts))
    finally:
        tokenizer.padding_side = padding_side
    return outputs


def evaluate_checkpoint(model_dir: str | Path, p: Params, rows: list[dict[str, Any]]) -> tuple[dict, list]:
    """Held-out metrics and per-example records of one saved checkpoint."""
    import torch

    from tasks.modeling import load_pretrained
    from tasks.prompts import PromptFormat

    model, tokenizer = load_pretrained(model_dir, p.model.trust_remote_code)
    if torch.cuda.is_available():
        # from_pretrained loads on the CPU; decoding belongs on the GPU when there is one
        model = model.to("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else None)
    prompts = [r["prompt"] for r in rows]

    def progress(done: int, total: int) -> None:
        log.info("evaluate %s: %d/%d prompts", Path(model_dir).name, done, total)

    fmt = PromptFormat.of_checkpoint(model_dir)
    batch, max_new = p.evaluate.batch_size, p.evaluate.max_new_tokens
    texts = generate_greedy(model, tokenizer, prompts, batch, max_new, fmt, progress)
    metrics, examples = score_predictions(
        texts, [r["scores"] for r in rows], p.reward.config, p.task.min_score, p.task.max_score
    )
    records = [
        {"prompt": r["prompt"], "scores": r["scores"], "completion": t, **e}
        for r, t, e in zip(rows, texts, examples, strict=True)
    ]
    return metrics, records


def evaluate_file(
    p: Params,
    rows_file: str | Path,
    report: str,
    predictions: str | None,
    checkpoints: Sequence[str] = TRAINED,
) -> dict[str, dict[str, float]]:
    """Evaluate the checkpoints side by side on the rows of rows_file, with the answers that need no reading
    (tasks.reading: the constant answer, the consensus on the embedded tasks); write paths.reports_dir/<report> as
    {checkpoint or reference: metrics} and, when `predictions` is a pattern such as "predictions_{}.jsonl", each
    checkpoint's per-example records there. A checkpoint not past the constant answer is logged as a warning."""
    # accelerate's set_seed seeds what transformers' does (random, numpy, torch); transformers' lives in a module
    # that imports peft, 2.4 s of a stage command that trains nothing
    from accelerate.utils import set_seed

    from tasks.reading import reading_warnings, reference_metrics

    set_seed(p.seed)
    rows = read_jsonl(rows_file)
    reports = Path(p.paths.reports_dir)
    results: dict[str, dict[str, float]] = {}
    for name in checkpoints:
        model_dir = Path(p.paths.models_dir) / name
        if not (model_dir / "config.json").exists():
            raise FileNotFoundError(f"{model_dir}: no {name} checkpoint to evaluate; run the {name} stage first")
        metrics, records = evaluate_checkpoint(model_dir, p, rows)
        if predictions is not None:
            write_jsonl(reports / predictions.format(name), records)
        results[name] = metrics
        log.info("%s %s: %s", report, name, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    results.update(reference_metrics(p, rows))
    for line in reading_warnings(results, checkpoints):
        log.warning("%s: %s", report, line)
    reports.mkdir(parents=True, exist_ok=True)
    tmp = reports / f".{report}.tmp"
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    tmp.replace(reports / report)
    return results


def run_evaluate(p: Params, checkpoints: Sequence[str] = TRAINED) -> dict[str, dict[str, float]]:
    """The evaluate stage: the SFT and GRPO checkpoints on the held-out file -> reports/eval.json (what the summary
    shows and the promotion gate compares) and reports/predictions_<checkpoint>.jsonl."""
    return evaluate_file(p, p.paths.heldout_file, EVAL_REPORT, "predictions_{}.jsonl", checkpoints)


def run_validation_eval(p: Params, checkpoints: Sequence[str] = TRAINED) -> dict[str, dict[str, float]]:
    """The validation_eval stage: the same metrics on the validation file -> reports/validation_eval.json, what
    sweeps select on; it never reads the held-out file."""
    return evaluate_file(p, p.paths.validation_file, VALIDATION_REPORT, None, checkpoints)
