"""Inference-time baselines for the learning benchmark: pick one of N sampled completions per prompt, no RL.

- MBR: the sample with the highest mean combined reward against the other samples taken as pseudo-references
  (minimum Bayes risk decoding with the reward as utility; no label is used).
- majority: the most frequent parsed answer among the samples.
- median: the per-item median of the parsed samples.

GRPO's value, in this frame, is reaching MBR-level quality with one greedy decode instead of N samples.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence

from tasks.data import completion_for
from tasks.rewards import RewardConfig, combined_reward, parse_scores

RULES = ("mbr", "majority", "median")


def _valid(samples: Sequence[str], n_items: int) -> list[tuple[int, list[int]]]:
    """(index, parsed scores) of the samples that parse to exactly n_items scores."""
    parsed = [(i, parse_scores(s)) for i, s in enumerate(samples)]
    return [(i, p) for i, p in parsed if len(p) == n_items]


def mbr(samples: Sequence[str], n_items: int, config: RewardConfig) -> str:
    """The sample with the highest mean reward against the other well-formed samples as references.

    >>> mbr(["3 4 2 5", "3 4 3 5", "3 4 3 5", "1 1 1 1"], 4, RewardConfig())
    '3 4 3 5'
    """
    valid = _valid(samples, n_items)
    if len(valid) < 2:
        return samples[valid[0][0]] if valid else samples[0]

    def utility(i: int, prediction: list[int]) -> float:
        refs = [ref for j, ref in valid if j != i]
        return statistics.mean(combined_reward(prediction, ref, samples[i], config) for ref in refs)

    best, _ = max(valid, key=lambda item: utility(*item))
    return samples[best]


def majority(samples: Sequence[str], n_items: int) -> str:
    """The most frequent well-formed answer (the first seen among equals).

    >>> majority(["3 4 2 5", "3 4 3 5", "3 4 3 5", "1 1 1 1"], 4)
    '3 4 3 5'
    """
    valid = _valid(samples, n_items)
    if not valid:
        return samples[0]
    # most_common keeps first-seen order among equal counts
    return completion_for(Counter(tuple(p) for _, p in valid).most_common(1)[0][0])


def median(samples: Sequence[str], n_items: int) -> str:
    """Per item, the (lower) median of the well-formed answers.

    >>> median(["3 4 2 5", "3 4 3 5", "4 5 3 5"], 4)
    '3 4 3 5'
    """
    valid = _valid(samples, n_items)
    if not valid:
        return samples[0]
    return completion_for([statistics.median_low(p[k] for _, p in valid) for k in range(n_items)])


def choose(rule: str, samples: Sequence[str], n_items: int, config: RewardConfig) -> str:
    if rule == "mbr":
        return mbr(samples, n_items, config)
    if rule == "majority":
        return majority(samples, n_items)
    if rule == "median":
        return median(samples, n_items)
    raise ValueError(f"unknown rule {rule!r} (one of {', '.join(RULES)})")
