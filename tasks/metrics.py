"""The held-out metrics, one definition each: what it averages over the examples and which direction is better.

Evaluation computes every metric here (reports/eval.json), the promotion gate compares the one params.yaml names
(`register.primary_metric`, one of the promotable ones) in its direction, and the run summary and the Prefect
evaluation artifact show the ones marked shown. A new metric is one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
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
    # the per-example value this metric averages (a key of every record in reports/predictions_<checkpoint>.jsonl)
    example_key: str
    of_example: Callable[[Scored], float]
    higher_is_better: bool
    # may be register.primary_metric
    promotable: bool
    # a column of the run summary (`rewardflow run`) and of the Prefect evaluation artifact
    shown: bool


def _within_1(s: Scored) -> float:
    return float(np.mean([e <= 1 for e in s.errors])) if s.structural_ok else 0.0


def _abs_error(s: Scored) -> float:
    return float(np.mean(s.errors)) if s.errors else 0.0


def _score(key: str) -> Callable[[Scored], float]:
    return lambda s: float(s.scores[key])


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
    )
}
PROMOTABLE = tuple(name for name, m in METRICS.items() if m.promotable)
SHOWN = tuple(name for name, m in METRICS.items() if m.shown)


def aggregate(examples: list[dict[str, Any]]) -> dict[str, float]:
    """Every metric over per-example records (means of their example keys; 0.0 for no examples) and the count."""
    n = len(examples)
    values = {name: float(np.mean([e[m.example_key] for e in examples])) if n else 0.0 for name, m in METRICS.items()}
    return {**values, COUNT: n}
