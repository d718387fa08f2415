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
# what "past the constant answer" compares, each in its direction (tasks.metrics)
READING_BAR = ("within_1", "mae")


def constant_answer(train_rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Each item's median score over the train rows (the lower median on a tie), from the rows with the most
    common number of scores."""
    if not train_rows:
        raise ValueError("no train rows to take the constant answer from")
    counts = statistics.multimode(len(r["scores"]) for r in train_rows)
    n_items = counts[0]
    columns = zip(*(r["scores"] for r in train_rows if len(r["scores"]) == n_items), strict=True)
    return [int(statistics.median_low(column)) for column in columns]


def reference_answers(p: Any, rows: Sequence[Mapping[str, Any]]) -> dict[str, list[list[int]]]:
    """Each row's answer that needs no reading: the constant answer (from p's train file) and, when every row is a
    row of the embedded task p.task describes, the consensus."""
    from tasks.data import consensus_labels, read_jsonl

    out = {CONSTANT: [constant_answer(read_jsonl(p.paths.train_file))] * len(rows)}
    consensus = consensus_labels(p.task, rows)
    if consensus is not None:
        out[CONSENSUS] = consensus
    return out


def reference_metrics(
    p: Any, rows: Sequence[Mapping[str, Any]], answers: Mapping[str, Sequence[Sequence[int]]] | None = None
) -> dict[str, dict[str, float]]:
    """The held-out metrics of the answers that need no reading on rows (`answers`: reference_answers(p, rows),
    computed when not given)."""
    from tasks.data import completion_for
    from tasks.evaluation import score_predictions

    truths = [r["scores"] for r in rows]
    answers = reference_answers(p, rows) if answers is None else answers
    return {
        name: score_predictions(
            [completion_for(a) for a in given], truths, p.reward.config, p.task.min_score, p.task.max_score
        )[0]
        for name, given in answers.items()
    }


def short_of(metrics: Mapping[str, float], other: Mapping[str, float]) -> list[str]:
    """The metrics of READING_BAR on which `metrics` is not better than `other` (none: past it)."""
    from tasks.metric_table import SPECS

    def better(m: str) -> bool:
        return metrics[m] > other[m] if SPECS[m].higher_is_better else metrics[m] < other[m]

    return [m for m in READING_BAR if not better(m)]


def not_past_constant(metrics: Mapping[str, float], constant: Mapping[str, float]) -> str | None:
    """Why a model's metrics are not past the constant answer's (within_1 higher and MAE lower), or None when they
    are."""
    short = [f"{m} {metrics[m]:.3f} vs {constant[m]:.3f}" for m in short_of(metrics, constant)]
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
