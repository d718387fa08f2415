"""Held-out metrics on canned completions, checked against hand-computed values."""

import math

import pytest

from tasks.evaluation import METRIC_KEYS, score_predictions
from tasks.rewards import RewardConfig

TRUTHS = [[3, 4, 3, 5], [1, 2, 3, 4], [5, 5, 5, 5]]
TEXTS = [
    "3 4 3 5",  # perfect: combined reward 1.0 + bonus 0.1
    "1 2 4",  # wrong count: structural failure, every item at the worst in-range error 4
    "The answers are: 5 4 5 5",  # one item off by one, wrapped in text: format 0.5
]
# third example's combined reward: 0.3*0.75 + 0.3*(3*1.3+1)/5.2 + 0.25*(1-0.25/5) + 0.15*0.5
R3 = 0.3 * 0.75 + 0.3 * 4.9 / 5.2 + 0.25 * 0.95 + 0.15 * 0.5


def test_metrics_match_hand_computed_values():
    metrics, examples = score_predictions(TEXTS, TRUTHS, RewardConfig(), min_score=1, max_score=5)
    assert tuple(metrics) == METRIC_KEYS
    assert metrics["n"] == 3
    assert metrics["exact_match"] == pytest.approx(1 / 3)
    assert metrics["item_accuracy"] == pytest.approx((1 + 0 + 0.75) / 3)
    assert metrics["within_1"] == pytest.approx((1 + 0 + 1) / 3)
    assert metrics["mae"] == pytest.approx((0 + 4 + 0.25) / 3)
    assert metrics["format_compliance"] == pytest.approx(1 / 3)
    assert metrics["structural_failure_rate"] == pytest.approx(1 / 3)
    assert metrics["mean_reward"] == pytest.approx((1.1 - 0.5 + R3) / 3)
    assert [e["prediction"] for e in examples] == [[3, 4, 3, 5], [1, 2, 4], [5, 4, 5, 5]]


def test_absurd_numbers_are_capped_at_the_score_span():
    metrics, _ = score_predictions(["3 4 3 " + "9" * 5000], [[3, 4, 3, 5]], RewardConfig(), 1, 5)
    assert metrics["mae"] == pytest.approx(4 / 4)  # one item at the span (4), three exact
    assert all(math.isfinite(v) for v in metrics.values())


def test_empty_and_mismatched_inputs():
    metrics, _ = score_predictions([], [], RewardConfig(), 1, 5)
    assert metrics["n"] == 0 and metrics["mae"] == 0.0
    with pytest.raises(ValueError, match="2 completions for 1 ground truths"):
        score_predictions(["1", "2"], [[1]], RewardConfig(), 1, 5)
