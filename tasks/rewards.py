"""The reward design of "Designing Reward Functions for GRPO" (shared/seed), made total.

Every function here takes raw model output and never raises or returns NaN/inf, whatever the text.
One documented deviation from the article, which leaves the case undefined: every component returns
0.0 when the predictions are empty or their count differs from the ground truth.

The same functions score GRPO completions (through the TRL adapters at the bottom) and held-out
predictions (tasks/evaluation.py): one scorer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


def _structural_ok(predictions: Sequence[int], ground_truth: Sequence[int]) -> bool:
    return bool(predictions) and len(predictions) == len(ground_truth)


def parse_scores(text: str) -> list[int]:
    """Every integer in the text, in order.

    >>> parse_scores("The answers are: 3 4 -2 5")
    [3, 4, -2, 5]
    """
    if not isinstance(text, str):
        return []
    return [_to_int(m) for m in _INT_RE.findall(text)]


def exact_match_reward(predictions: Sequence[int], ground_truth: Sequence[int]) -> float:
    """Per-answer fraction correct.

    >>> exact_match_reward([3, 4, 2, 5], [3, 4, 3, 5])
    0.75
    """
    if not _structural_ok(predictions, ground_truth):
        return 0.0
    return sum(1 for p, g in zip(predictions, ground_truth, strict=True) if p == g) / len(ground_truth)


def off_by_1_reward(predictions: Sequence[int], ground_truth: Sequence[int], exact_bonus: float = 0.3) -> float:
    """1 + bonus per exact answer, 1 per off-by-one answer, 0 otherwise; divided by the maximum.

    >>> round(off_by_1_reward([3, 4, 2, 5], [3, 4, 3, 5]), 4)  # (1.3 * 3 + 1) / 5.2
    0.9423
    """
    if not _structural_ok(predictions, ground_truth):
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
    if not _structural_ok(predictions, ground_truth) or max_mae <= 0:
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
    if not _structural_ok(predictions, ground_truth) or not isinstance(raw_response, str):
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
    if not _structural_ok(predictions, ground_truth):
        return 0.0
    ok = all(_item_error(p, g) <= tolerance for p, g in zip(predictions, ground_truth, strict=True))
    return 1.0 if ok else 0.0


def perfect_match_reward(predictions: Sequence[int], ground_truth: Sequence[int]) -> float:
    """All-or-nothing exact match: the article's "single-metric trap", kept as the sparse baseline.

    >>> perfect_match_reward([3, 4, 2, 5], [3, 4, 3, 5]), perfect_match_reward([3, 4, 3, 5], [3, 4, 3, 5])
    (0.0, 1.0)
    """
    ok = _structural_ok(predictions, ground_truth) and list(predictions) == list(ground_truth)
    return 1.0 if ok else 0.0


@dataclass(frozen=True)
class RewardConfig:
    """Weights and constants of the combined reward; the article's defaults (params.yaml carries the same)."""

    exact_match_weight: float = 0.3
    off_by_1_weight: float = 0.3
    mae_weight: float = 0.25
    format_weight: float = 0.15
    structural_penalty: float = -0.5
    perfect_bonus: float = 0.1
    exact_bonus: float = 0.3
    max_mae: float = 5.0

    def __post_init__(self) -> None:
        for name in (
            "exact_match_weight",
            "off_by_1_weight",
            "mae_weight",
            "format_weight",
            "structural_penalty",
            "perfect_bonus",
            "exact_bonus",
            "max_mae",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.max_mae <= 0:
            raise ValueError(f"max_mae must be > 0, got {self.max_mae}")
        if self.exact_bonus < 0:
            raise ValueError(f"exact_bonus must be >= 0, got {self.exact_bonus}")


def combined_reward(
    predictions: Sequence[int], ground_truth: Sequence[int], raw_response: str, config: RewardConfig
) -> float:
    """Weighted sum of the four components; the structural penalty on a wrong count; +bonus when perfect.

    >>> round(combined_reward([3, 4, 2, 5], [3, 4, 3, 5], "3 4 2 5", RewardConfig()), 4)
    0.8952
    >>> combined_reward([3, 4], [3, 4, 3, 5], "3 4", RewardConfig())
    -0.5
    """
    if not _structural_ok(predictions, ground_truth):
        return config.structural_penalty
    reward = (
        config.exact_match_weight * exact_match_reward(predictions, ground_truth)
        + config.off_by_1_weight * off_by_1_reward(predictions, ground_truth, config.exact_bonus)
        + config.mae_weight * mae_reward(predictions, ground_truth, config.max_mae)
        + config.format_weight * format_reward(predictions, ground_truth, raw_response)
    )
    if list(predictions) == list(ground_truth):
        reward += config.perfect_bonus
    return reward


def score_completion(text: str, ground_truth: Sequence[int], config: RewardConfig) -> dict[str, Any]:
    """Every component of one completion from a single parse: what GRPO's statistics and held-out metrics use.

    >>> score_completion("3 4 2 5", [3, 4, 3, 5], RewardConfig())["exact_match"]
    0.75
    """
    pred = parse_scores(text)
    truth = list(ground_truth)
    return {
        "prediction": pred,
        "exact_match": exact_match_reward(pred, truth),
        "off_by_1": off_by_1_reward(pred, truth, config.exact_bonus),
        "mae": mae_reward(pred, truth, config.max_mae),
        "format": format_reward(pred, truth, text),
        "combined": combined_reward(pred, truth, text, config),
        "structural_failure": float(not _structural_ok(pred, truth)),
        "perfect": perfect_match_reward(pred, truth),
    }


def compute_advantages(rewards: Sequence[float], eps: float = 1e-8, min_std: float = 0.01) -> list[float]:
    """Group-relative advantages (population std); zeros when there is nothing to learn from.

    >>> [round(a, 6) for a in compute_advantages([1.0, 0.0])]
    [1.0, -1.0]
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
    return ((values - values.mean()) / (std + eps)).tolist()


def check_diversity(completions: Sequence[str], min_unique_ratio: float = 0.5) -> bool:
    """True when at least min_unique_ratio of the completions are distinct.

    >>> check_diversity(["3 4 2 5", "3 4 2 5", "3 4 3 5", "3 3 3 3"]), check_diversity(["1 1 1 1"] * 4)
    (True, False)
    """
    if not completions:
        return False
    return len(set(completions)) / len(completions) >= min_unique_ratio


# --- TRL adapters ------------------------------------------------------------------------------------
# TRL calls each reward function with prompts, completions and every dataset column (here `scores`) as
# keyword lists, and logs each function's raw mean/std as rewards/<__name__>/mean|std. One function per
# component, combined by reward_weights, reproduces combined_reward exactly: the components are 0 on a
# structural failure, and the `structure` function carries the penalty and the perfect bonus.

RewardFunc = Callable[..., list[float]]


def completion_text(completion: object) -> str:
    """The text of a TRL completion: a plain string or a list of chat messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list | tuple) and completion:
        last = completion[-1]
        if isinstance(last, dict):
            content = last.get("content", "")
            return content if isinstance(content, str) else ""
    if isinstance(completion, dict):
        content = completion.get("content", "")
        return content if isinstance(content, str) else ""
    return ""


def _per_completion(score: Callable[[list[int], list[int], str], float], name: str) -> RewardFunc:
    def reward_func(completions: list, scores: list, **kwargs) -> list[float]:
        out = []
        for completion, truth in zip(completions, scores, strict=True):
            text = completion_text(completion)
            out.append(float(score(parse_scores(text), list(truth), text)))
        return out

    reward_func.__name__ = name
    reward_func.__qualname__ = name
    return reward_func


def build_reward_funcs(
    mode: str, config: RewardConfig, binary_tolerance: int = 1
) -> tuple[list[RewardFunc], list[float]]:
    """TRL reward_funcs and reward_weights for a reward mode: "multi", "binary" or "exact"."""
    if mode == "multi":

        def structure(p: list[int], g: list[int], _text: str) -> float:
            if not _structural_ok(p, g):
                return config.structural_penalty
            return config.perfect_bonus if p == g else 0.0

        funcs = [
            _per_completion(lambda p, g, _t: exact_match_reward(p, g), "exact_match"),
            _per_completion(lambda p, g, _t: off_by_1_reward(p, g, config.exact_bonus), "off_by_1"),
            _per_completion(lambda p, g, _t: mae_reward(p, g, config.max_mae), "mae"),
            _per_completion(format_reward, "format"),
            _per_completion(structure, "structure"),
        ]
        weights = [
            config.exact_match_weight,
            config.off_by_1_weight,
            config.mae_weight,
            config.format_weight,
            1.0,
        ]
        return funcs, weights
    if mode == "binary":
        return [_per_completion(lambda p, g, _t: binary_reward(p, g, binary_tolerance), "binary")], [1.0]
    if mode == "exact":
        return [_per_completion(lambda p, g, _t: perfect_match_reward(p, g), "perfect_match")], [1.0]
    raise ValueError(f"unknown reward mode {mode!r}: use one of multi, binary, exact")
