"""The held-out metrics, one definition each: what it computes over the examples and which direction is better.

Most metrics average a per-example value; the reading metrics (answer_diversity, label_correlation) are properties
of the whole set of answers: how much the answers depend on the prompt. Evaluation computes every metric here
(reports/eval.json), the promotion gate compares the one params.yaml names (`register.primary_metric`, one of the
promotable ones) in its direction, and the run summary and the Prefect evaluation artifact show the ones marked
shown. A new metric is one entry here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# eval.json also carries the number of examples each checkpoint was evaluated on
COUNT = "n"


@dataclass(frozen=True)
class Scored:
    """One completion scored against its ground truth: the reward module's scores (tasks.rewards.score_completion)
    and each item's absolute error, capped at the score span (every item at the span on a structural failure)."""

    scores: dict[str, Any]
    errors: list[int]

    @property
    def structural_ok(self) -> bool:
        return not self.scores["structural_failure"]


@dataclass(frozen=True)
class Metric:
    name: str
    # the per-example value this metric averages (a key of every record in reports/predictions_<checkpoint>.jsonl);
    # "" for a metric of the whole set
    example_key: str
    of_example: Callable[[Scored], float] | None
    higher_is_better: bool
    # may be register.primary_metric
    promotable: bool
    # a column of the run summary (`rewardflow run`) and of the Prefect evaluation artifact
    shown: bool
    # a metric of the whole set: f(each example's parsed prediction, each example's truth)
    of_set: Callable[[Sequence[Sequence[int]], Sequence[Sequence[int]]], float] | None = None


def _within_1(s: Scored) -> float:
    return float(np.mean([e <= 1 for e in s.errors])) if s.structural_ok else 0.0


def _abs_error(s: Scored) -> float:
    return float(np.mean(s.errors)) if s.errors else 0.0


def _score(key: str) -> Callable[[Scored], float]:
    return lambda s: float(s.scores[key])


def answer_diversity(predictions: Sequence[Sequence[int]], truths: Sequence[Sequence[int]]) -> float:
    """Distinct answers per prompt: 1/n for a model that gives every prompt the same answer, 1.0 when no two
    prompts get the same one. Answers with the wrong count of scores count as one answer."""
    if not predictions:
        return 0.0
    answers = {tuple(p) if len(p) == len(t) else None for p, t in zip(predictions, truths, strict=True)}
    return len(answers) / len(predictions)


def label_correlation(predictions: Sequence[Sequence[int]], truths: Sequence[Sequence[int]]) -> float:
    """The mean over items of the Pearson correlation between the predicted and the labelled score, over the
    answers with the right count of scores: 0 for answers that ignore the prompt (an item whose predictions, or
    labels, never vary counts 0), 1 for answers that move exactly with the labels."""
    rows = [(p, t) for p, t in zip(predictions, truths, strict=True) if len(p) == len(t) and t]
    if len(rows) < 2:
        return 0.0
    pred = np.array([p for p, _ in rows], dtype=float)
    true = np.array([t for _, t in rows], dtype=float)
    correlations = []
    for item in range(true.shape[1]):
        x, y = pred[:, item], true[:, item]
        if x.std() == 0 or y.std() == 0:
            correlations.append(0.0)
        else:
            correlations.append(float(np.corrcoef(x, y)[0, 1]))
    return float(np.mean(correlations))


UP, DOWN = True, False  # higher_is_better
METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        # every item of the answer right
        Metric("exact_match", "exact", _score("perfect"), UP, promotable=True, shown=True),
        # the fraction of items exactly right (the reward's item_accuracy component)
        Metric("item_accuracy", "item_accuracy", _score("item_accuracy"), UP, promotable=True, shown=True),
        # the fraction of items within 1 of the truth; 0 for a structural failure
        Metric("within_1", "within_1", _within_1, UP, promotable=True, shown=True),
        # mean absolute error per item, a structural failure counting every item at the score span
        Metric("mae", "abs_error", _abs_error, DOWN, promotable=True, shown=True),
        # the answer is exactly the space-joined scores
        Metric("format_compliance", "format_ok", lambda s: float(s.scores["format"] == 1.0), UP, True, shown=True),
        # no numbers, or the wrong count of them
        Metric("structural_failure_rate", "structural_failure", _score("structural_failure"), DOWN, False, False),
        # the combined reward GRPO optimises in mode multi
        Metric("mean_reward", "reward", _score("combined"), UP, promotable=True, shown=True),
        # reading: how much the answers depend on the prompt (tasks/reading.py compares with answers that need none)
        Metric("answer_diversity", "", None, UP, promotable=False, shown=True, of_set=answer_diversity),
        Metric("label_correlation", "", None, UP, promotable=False, shown=True, of_set=label_correlation),
    )
}
EXAMPLE_METRICS = {name: m for name, m in METRICS.items() if m.of_set is None}
PROMOTABLE = tuple(name for name, m in METRICS.items() if m.promotable)
SHOWN = tuple(name for name, m in METRICS.items() if m.shown)


def aggregate(examples: list[dict[str, Any]], truths: Sequence[Sequence[int]]) -> dict[str, float]:
    """Every metric over per-example records (each with its parsed "prediction") and their ground truths: means of
    the example keys, the set metrics over all predictions; 0.0 for no examples. Plus the count."""
    n = len(examples)
    if len(truths) != n:
        raise ValueError(f"{n} examples for {len(truths)} ground truths")
    predictions = [e["prediction"] for e in examples]

    def value(m: Metric) -> float:
        if not n:
            return 0.0
        if m.of_set is not None:
            return m.of_set(predictions, truths)
        return float(np.mean([e[m.example_key] for e in examples]))

    return {**{name: value(m) for name, m in METRICS.items()}, COUNT: n}
