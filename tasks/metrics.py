"""How each held-out metric is computed over the examples; what each one is (its name, direction, whether the gate
may compare it, whether the summary shows it) is tasks/metric_table.py, and a metric is one entry in each.

Most metrics average a per-example value; the reading metrics (answer_diversity, label_correlation) are properties
of the whole set of answers: how much the answers depend on the prompt. Evaluation computes every metric here
(reports/eval.json), the promotion gate compares the one params.yaml names (`register.primary_metric`) in its
direction, and the run summary and the Prefect evaluation artifact show the ones marked shown.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tasks.metric_table import SPECS, MetricSpec

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
    spec: MetricSpec
    # the per-example value this metric averages (a key of every record in reports/predictions_<checkpoint>.jsonl);
    # "" for a metric of the whole set
    example_key: str
    of_example: Callable[[Scored], float] | None
    # a metric of the whole set: f(each example's parsed prediction, each example's truth)
    of_set: Callable[[Sequence[Sequence[int]], Sequence[Sequence[int]]], float] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def higher_is_better(self) -> bool:
        return self.spec.higher_is_better


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


# each metric of tasks/metric_table.py: (the per-example key it averages, its per-example value) or, for a metric
# of the whole set, ("", None, its function of all predictions and truths)
_COMPUTED: dict[str, tuple] = {
    "exact_match": ("exact", _score("perfect"), None),
    "item_accuracy": ("item_accuracy", _score("item_accuracy"), None),
    "within_1": ("within_1", _within_1, None),
    "mae": ("abs_error", _abs_error, None),
    "format_compliance": ("format_ok", lambda s: float(s.scores["format"] == 1.0), None),
    "structural_failure_rate": ("structural_failure", _score("structural_failure"), None),
    "mean_reward": ("reward", _score("combined"), None),
    "answer_diversity": ("", None, answer_diversity),
    "label_correlation": ("", None, label_correlation),
}
if set(_COMPUTED) != set(SPECS):
    raise ImportError(
        f"tasks/metrics.py computes {sorted(set(_COMPUTED) - set(SPECS))} that tasks/metric_table.py lacks, and "
        f"lacks {sorted(set(SPECS) - set(_COMPUTED))} that it declares"
    )
METRICS: dict[str, Metric] = {name: Metric(spec, *_COMPUTED[name]) for name, spec in SPECS.items()}
EXAMPLE_METRICS = {name: m for name, m in METRICS.items() if m.of_set is None}


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
