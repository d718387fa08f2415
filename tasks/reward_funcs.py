"""The combined reward as TRL reward functions, for each reward mode GRPO can optimise.

TRL calls each reward function with prompts, completions and every dataset column (here `scores`) as keyword
lists, and logs each function's raw mean/std as rewards/<__name__>/mean|std. In mode multi there is one function
per component of tasks.rewards.COMPONENTS, combined by reward_weights, which reproduces combined_reward exactly:
the components are 0 on a structural failure, and the `structure` function carries the penalty and the perfect
bonus.
"""

from __future__ import annotations

from collections.abc import Callable

from tasks.rewards import (
    COMPONENTS,
    RewardConfig,
    binary_reward,
    parse_scores,
    perfect_match_reward,
    structural_ok,
)

RewardFunc = Callable[..., list[float]]
Built = tuple[list[RewardFunc], list[float]]


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


def _multi(config: RewardConfig, binary_tolerance: int) -> Built:
    """One function per component, weighted as params.yaml says, and `structure` (weight 1)."""

    def structure(p: list[int], g: list[int], _text: str) -> float:
        if not structural_ok(p, g):
            return config.structural_penalty
        return config.perfect_bonus if p == g else 0.0

    funcs = [
        _per_completion(lambda p, g, text, c=c: c.score(p, g, text, config), name) for name, c in COMPONENTS.items()
    ]
    weights = [config.weights[name] for name in COMPONENTS]
    return [*funcs, _per_completion(structure, "structure")], [*weights, 1.0]


def _binary(config: RewardConfig, binary_tolerance: int) -> Built:
    """The article's "start with a binary reward"."""
    return [_per_completion(lambda p, g, _t: binary_reward(p, g, binary_tolerance), "binary")], [1.0]


def _exact(config: RewardConfig, binary_tolerance: int) -> Built:
    """All-or-nothing: the article's sparse "single-metric trap"."""
    return [_per_completion(lambda p, g, _t: perfect_match_reward(p, g), "perfect_match")], [1.0]


# What `reward.mode` can name.
MODES: dict[str, Callable[[RewardConfig, int], Built]] = {"multi": _multi, "binary": _binary, "exact": _exact}


def build_reward_funcs(mode: str, config: RewardConfig, binary_tolerance: int = 1) -> Built:
    """TRL reward_funcs and reward_weights for a reward mode (MODES: multi, binary or exact)."""
    if mode not in MODES:
        raise ValueError(f"unknown reward mode {mode!r}: use one of {', '.join(MODES)}")
    return MODES[mode](config, binary_tolerance)
