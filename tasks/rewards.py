"""The reward design of the article "Designing Reward Functions for GRPO" (B. Satyarthi, 2026), made total.

Every function here takes raw model output and never raises or returns NaN/inf, whatever the text.
One documented deviation from the article, which leaves the case undefined: every component returns
0.0 when the predictions are empty or their count differs from the ground truth.

The combined reward is a weighted sum over COMPONENTS, the one registry of its named components: a component is
its function here and its weight in params.yaml (`reward.weights.<name>`); the TRL reward functions
(tasks/reward_funcs.py), GRPO's per-component statistics and plots, the dead-component monitor and every check of
the weights derive from it. The same functions score GRPO completions and held-out predictions
(tasks/evaluation.py): one scorer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_INT_RE = re.compile(r"-?\d+")
# "only digits and whitespace", where a minus sign directly before a number belongs to it (negative score ranges)
_CLEAN_RE = re.compile(r"^-?\d+(\s+-?\d+)*$")
# Python refuses int<->str conversions above 4300 digits; long runs are converted in chunks.
_CHUNK = 4000
# 10**_CHUNK, computed once: as a big int it costs ~40 us per evaluation, in the reward hot path
_CHUNK_BASE = 10**_CHUNK
# Per-item errors are capped so that a 5000-digit "score" still gives a finite float MAE.
MAX_ITEM_ERROR = 10**9


def _to_int(digits: str) -> int:
    """int() of a digit run of any length (optional leading minus)."""
    sign = -1 if digits.startswith("-") else 1
    digits = digits.lstrip("-")
    if len(digits) <= _CHUNK:
        return sign * int(digits)
    value = 0
    for start in range(0, len(digits), _CHUNK):
        chunk = digits[start : start + _CHUNK]
        value = value * 10 ** len(chunk) + int(chunk)
    return sign * value


def _to_str(value: int) -> str:
    """str() of an int of any size."""
    if abs(value) < _CHUNK_BASE:
        return str(value)
    sign = "-" if value < 0 else ""
    parts: list[str] = []
    value = abs(value)
    while value:
        value, low = divmod(value, _CHUNK_BASE)
        parts.append(str(low))
    head, *rest = reversed(parts)
    return sign + head + "".join(part.zfill(_CHUNK) for part in rest)


def _item_error(p: int, g: int) -> int:
    return min(abs(p - g), MAX_ITEM_ERROR)


def structural_ok(predictions: Sequence[int], ground_truth: Sequence[int]) -> bool:
    """The answer has the right count of scores (and some): otherwise every component is 0."""
    return bool(predictions) and len(predictions) == len(ground_truth)


def parse_scores(text: str) -> list[int]:
    """Every integer in the text, in order.

    >>> parse_scores("The answers are: 3 4 -2 5")
    [3, 4, -2, 5]
    """
    if not isinstance(text, str):
        return []
    # int() takes the leading minus itself; only runs past its digit limit go through _to_int
    return [int(m) if len(m) <= _CHUNK else _to_int(m) for m in _INT_RE.findall(text)]


def score_spans(text: str) -> list[tuple[int, int]]:
    """The character span of each integer parse_scores reads, in the same order.

    >>> score_spans("3 -4 10")
    [(0, 1), (2, 4), (5, 7)]
    """
    if not isinstance(text, str):
        return []
    return [m.span() for m in _INT_RE.finditer(text)]


def item_accuracy_reward(predictions: Sequence[int], ground_truth: Sequence[int]) -> float:
    """Per-item fraction exactly right (the article's exact_match_reward; "exact match" here means every item).

    >>> item_accuracy_reward([3, 4, 2, 5], [3, 4, 3, 5])
    0.75
    """
    if not structural_ok(predictions, ground_truth):
        return 0.0
    return sum(1 for p, g in zip(predictions, ground_truth, strict=True) if p == g) / len(ground_truth)


def off_by_1_reward(predictions: Sequence[int], ground_truth: Sequence[int], exact_bonus: float = 0.3) -> float:
    """1 + bonus per exact answer, 1 per off-by-one answer, 0 otherwise; divided by the maximum.

    >>> round(off_by_1_reward([3, 4, 2, 5], [3, 4, 3, 5]), 4)  # (1.3 * 3 + 1) / 5.2
    0.9423
    """
    if not structural_ok(predictions, ground_truth):
        return 0.0
    total = 0.0
    for p, g in zip(predictions, ground_truth, strict=True):
        error = _item_error(p, g)
        if error == 0:
            total += 1.0 + exact_bonus
        elif error == 1:
            total += 1.0
    max_possible = len(ground_truth) * (1.0 + exact_bonus)
    return total / max_possible if max_possible > 0 else 0.0


def mae_reward(predictions: Sequence[int], ground_truth: Sequence[int], max_mae: float = 5.0) -> float:
    """max(0, 1 - MAE / max_mae).

    >>> mae_reward([3, 4, 2, 5], [3, 4, 3, 5])  # MAE 0.25
    0.95
    """
    if not structural_ok(predictions, ground_truth) or max_mae <= 0:
        return 0.0
    mae = sum(_item_error(p, g) for p, g in zip(predictions, ground_truth, strict=True)) / len(ground_truth)
    return max(0.0, 1.0 - mae / max_mae)


def format_reward(predictions: Sequence[int], ground_truth: Sequence[int], raw_response: str) -> float:
    """+0.5 right count, +0.3 clean (only digits and whitespace), +0.2 no extra text.

    >>> format_reward([3, 4, 2, 5], [3, 4, 3, 5], "3 4 2 5")
    1.0
    >>> format_reward([3, 4, 2, 5], [3, 4, 3, 5], "The answers are: 3 4 2 5")
    0.5
    >>> format_reward([-3, 0, 2], [-2, 0, 2], "-3 0 2")
    1.0
    """
    if not structural_ok(predictions, ground_truth) or not isinstance(raw_response, str):
        return 0.0
    reward = 0.5
    stripped = raw_response.strip()
    if _CLEAN_RE.match(stripped):
        reward += 0.3
    if stripped == " ".join(_to_str(p) for p in predictions):
        reward += 0.2
    return reward


def binary_reward(predictions: Sequence[int], ground_truth: Sequence[int], tolerance: int = 1) -> float:
    """The article's "start with a binary reward": 1.0 iff the count is right and every answer is within
    tolerance.

    >>> binary_reward([3, 4, 2, 5], [3, 4, 3, 5]), binary_reward([3, 4, 1, 5], [3, 4, 3, 5])
    (1.0, 0.0)
    """
    if not structural_ok(predictions, ground_truth):
        return 0.0
    ok = all(_item_error(p, g) <= tolerance for p, g in zip(predictions, ground_truth, strict=True))
    return 1.0 if ok else 0.0


def perfect_match_reward(predictions: Sequence[int], ground_truth: Sequence[int]) -> float:
    """All-or-nothing exact match: the article's "single-metric trap", kept as the sparse baseline.

    >>> perfect_match_reward([3, 4, 2, 5], [3, 4, 3, 5]), perfect_match_reward([3, 4, 3, 5], [3, 4, 3, 5])
    (0.0, 1.0)
    """
    ok = structural_ok(predictions, ground_truth) and list(predictions) == list(ground_truth)
    return 1.0 if ok else 0.0


# --- the combined reward ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Component:
    """A named, weighted term of the combined reward. The name is everywhere the component shows: its weight
    `reward.weights.<name>`, TRL's `rewards/<name>/mean`, GRPO's `reward_stats/<name>/mean|std`, the plots."""

    name: str
    # the component's value for parsed predictions, the ground truth and the raw text, with the reward constants
    score: Callable[[Sequence[int], Sequence[int], str, RewardConfig], float]
    # the article's weight
    weight: float
    # the sequence value is the mean of the component scored on each item alone (what item-level credit pays each
    # item's tokens: item_rewards)
    per_item: bool = True


# The components of the combined reward, in the order they are summed.
COMPONENTS: dict[str, Component] = {
    c.name: c
    for c in (
        Component("item_accuracy", lambda p, g, _text, _c: item_accuracy_reward(p, g), 0.3),
        Component("off_by_1", lambda p, g, _text, c: off_by_1_reward(p, g, c.exact_bonus), 0.3),
        Component("mae", lambda p, g, _text, c: mae_reward(p, g, c.max_mae), 0.25),
        Component("format", lambda p, g, text, _c: format_reward(p, g, text), 0.15, per_item=False),
    )
}
# what score_completion reports besides the components
SCORE_KEYS = ("prediction", "combined", "structural_failure", "perfect")


def default_weights() -> dict[str, float]:
    """The article's weight of every component."""
    return {name: c.weight for name, c in COMPONENTS.items()}


def _check_finite(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


@dataclass(frozen=True)
class RewardConfig:
    """Weights and constants of the combined reward; the article's defaults (params.yaml carries the same)."""

    # one weight per component of COMPONENTS
    weights: dict[str, float] = field(default_factory=default_weights)
    structural_penalty: float = -0.5
    perfect_bonus: float = 0.1
    exact_bonus: float = 0.3
    max_mae: float = 5.0

    def __post_init__(self) -> None:
        known = ", ".join(COMPONENTS)
        for name in self.weights:
            if name not in COMPONENTS:
                raise ValueError(f"weights.{name} is not a reward component (components: {known})")
            _check_finite(f"weights.{name}", self.weights[name])
        for name in COMPONENTS:
            if name in SCORE_KEYS:
                raise ValueError(f"reward component {name!r}: the name is taken ({', '.join(SCORE_KEYS)})")
            if name not in self.weights:
                raise ValueError(f"weights.{name} is missing: every reward component needs a weight ({known})")
        for name in ("structural_penalty", "perfect_bonus", "exact_bonus", "max_mae"):
            _check_finite(name, getattr(self, name))
        if self.max_mae <= 0:
            raise ValueError(f"max_mae must be > 0, got {self.max_mae}")
        if self.exact_bonus < 0:
            raise ValueError(f"exact_bonus must be >= 0, got {self.exact_bonus}")


def combined_reward(
    predictions: Sequence[int], ground_truth: Sequence[int], raw_response: str, config: RewardConfig
) -> float:
    """Weighted sum of the components; the structural penalty on a wrong count; +bonus when perfect.

    >>> round(combined_reward([3, 4, 2, 5], [3, 4, 3, 5], "3 4 2 5", RewardConfig()), 4)
    0.8952
    >>> combined_reward([3, 4], [3, 4, 3, 5], "3 4", RewardConfig())
    -0.5
    """
    if not structural_ok(predictions, ground_truth):
        return config.structural_penalty
    reward = sum(
        config.weights[name] * c.score(predictions, ground_truth, raw_response, config)
        for name, c in COMPONENTS.items()
    )
    if list(predictions) == list(ground_truth):
        reward += config.perfect_bonus
    return reward


def item_rewards(predictions: Sequence[int], ground_truth: Sequence[int], config: RewardConfig) -> list[float] | None:
    """Each item's share of the combined reward: the weighted per-item components scored on that item alone. Their
    mean is the per-item components' part of combined_reward (exactly, while no item is off by more than max_mae).
    None on a structural failure: there is no item to credit.

    >>> [round(r, 4) for r in item_rewards([3, 4], [3, 5], RewardConfig())]  # 0.3 + 0.3 + 0.25; 0.3 / 1.3 + 0.2
    [0.85, 0.4308]
    """
    if not structural_ok(predictions, ground_truth):
        return None
    item_components = [(config.weights[name], c) for name, c in COMPONENTS.items() if c.per_item]
    return [
        sum(weight * c.score([p], [g], "", config) for weight, c in item_components)
        for p, g in zip(predictions, ground_truth, strict=True)
    ]


def score_completion(text: str, ground_truth: Sequence[int], config: RewardConfig) -> dict[str, Any]:
    """Every component of one completion from a single parse, the combined reward, and whether the answer is a
    structural failure or perfect: what GRPO's statistics and held-out metrics use.

    >>> score_completion("3 4 2 5", [3, 4, 3, 5], RewardConfig())["item_accuracy"]
    0.75
    """
    pred = parse_scores(text)
    truth = list(ground_truth)
    return {
        "prediction": pred,
        **{name: c.score(pred, truth, text, config) for name, c in COMPONENTS.items()},
        "combined": combined_reward(pred, truth, text, config),
        "structural_failure": float(not structural_ok(pred, truth)),
        "perfect": perfect_match_reward(pred, truth),
    }


def compute_advantages(
    rewards: Sequence[float], eps: float = 1e-8, min_std: float = 0.01, scale: bool = True
) -> list[float]:
    """Group-relative advantages: reward minus the group mean, divided by the group's population std when `scale`
    (the article's rule; without it, Dr. GRPO's mean-centred rewards); zeros when there is nothing to learn from.

    >>> [round(a, 6) for a in compute_advantages([1.0, 0.0])]
    [1.0, -1.0]
    >>> [round(a, 6) for a in compute_advantages([1.0, 0.0], scale=False)]
    [0.5, -0.5]
    >>> compute_advantages([0.5, 0.5, 0.5, 0.5])
    [0.0, 0.0, 0.0, 0.0]
    """
    values = np.asarray(rewards, dtype=np.float64)
    # A group of one, or one with a non-finite reward, carries no usable comparison.
    if values.size <= 1 or not np.all(np.isfinite(values)):
        return [0.0] * int(values.size)
    std = float(values.std())
    # std < min_std: all completions scored (nearly) the same; nothing to learn from this group.
    if std < min_std:
        return [0.0] * int(values.size)
    centred = values - values.mean()
    return (centred / (std + eps) if scale else centred).tolist()


def check_diversity(completions: Sequence[str], min_unique_ratio: float = 0.5) -> bool:
    """True when at least min_unique_ratio of the completions are distinct.

    >>> check_diversity(["3 4 2 5", "3 4 2 5", "3 4 3 5", "3 3 3 3"]), check_diversity(["1 1 1 1"] * 4)
    (True, False)
    """
    if not completions:
        return False
    return len(set(completions)) / len(completions) >= min_unique_ratio
