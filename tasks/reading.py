"""Does a model read its prompts? Its metrics against answers that need no reading.

Two reference answers are scored on the same rows as the trained checkpoints (reports/eval.json and
validation_eval.json carry them as entries of their own):
- constant: one answer for every prompt, each item's median score in the train file (the constant that minimises
  the mean absolute error on train). A model whose answers ignore the prompt can at best match it.
- consensus: on the embedded tasks only, the score each item's raters scatter around (the generator knows it).
  No model can be expected to beat it on within_1; it is the ceiling rater noise leaves.

A model is past the constant answer when it beats it on within_1 (higher) and on MAE (lower). The run summary warns
about every checkpoint that is not, and with register.require_reading the promotion gate refuses it.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

CONSTANT, CONSENSUS = "constant", "consensus"
REFERENCES = (CONSTANT, CONSENSUS)
# what "past the constant answer" compares: metric -> higher is better
READING_BAR = {"within_1": True, "mae": False}


def constant_answer(train_rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Each item's median score over the train rows (the lower median on a tie), from the rows with the most
    common number of scores."""
    if not train_rows:
        raise ValueError("no train rows to take the constant answer from")
    counts = statistics.multimode(len(r["scores"]) for r in train_rows)
    n_items = counts[0]
    columns = zip(*(r["scores"] for r in train_rows if len(r["scores"]) == n_items), strict=True)
    return [int(statistics.median_low(column)) for column in columns]


def reference_metrics(p: Any, rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """The held-out metrics of the answers that need no reading, on rows: the constant answer (from p's train
    file) and, when rows are a split of the embedded task p.task describes, the consensus."""
    from tasks.data import completion_for, consensus_labels, read_jsonl
    from tasks.evaluation import score_predictions

    truths = [r["scores"] for r in rows]

    def score(answers: Sequence[Sequence[int]]) -> dict[str, float]:
        texts = [completion_for(a) for a in answers]
        metrics, _ = score_predictions(texts, truths, p.reward.config, p.task.min_score, p.task.max_score)
        return metrics

    constant = constant_answer(read_jsonl(p.paths.train_file))
    out = {CONSTANT: score([constant] * len(rows))}
    consensus = consensus_labels(p.task, rows)
    if consensus is not None:
        out[CONSENSUS] = score(consensus)
    return out


def not_past_constant(metrics: Mapping[str, float], constant: Mapping[str, float]) -> str | None:
    """Why a model's metrics are not past the constant answer's (within_1 higher and MAE lower), or None when they
    are."""
    short = [
        f"{m} {metrics[m]:.3f} vs {constant[m]:.3f}"
        for m, higher in READING_BAR.items()
        if not (metrics[m] > constant[m] if higher else metrics[m] < constant[m])
    ]
    if not short:
        return None
    return (
        f"not past the constant answer ({', '.join(short)}; answer diversity "
        f"{metrics.get('answer_diversity', float('nan')):.3f}, label correlation "
        f"{metrics.get('label_correlation', float('nan')):.3f}): its answers do not depend on the prompt enough to "
        "beat answering each item's median everywhere"
    )


def reading_warnings(table: Mapping[str, Mapping[str, float]], checkpoints: Sequence[str]) -> list[str]:
    """One line for each of the checkpoints in an evaluation table ({entry: metrics}, as in eval.json) that is
    not past the table's constant answer; none when the table has no constant answer."""
    if CONSTANT not in table:
        return []
    out = []
    for name in checkpoints:
        if name in table and (why := not_past_constant(table[name], table[CONSTANT])):
            out.append(f"{name} is {why}")
    return out
