"""The embedded task in ordinary English (task.kind english), for pretrained models.

A review is a few plain sentences about a restaurant, one per rated aspect, in the order the prompt asks for them.
Each aspect has a consensus level from very negative to very positive (-2..+2, drawn uniformly), said with everyday
sentiment words a pretrained model has read many times; 3 sentences in 10 (MODIFIED_SHARE) say it through a
negation or an intensifier instead ("not bad at all", "really good", "hardly worth it"). A level maps
linearly onto the score range (on 1..5: level + 3). Labels keep the raters' disagreement exactly as the synthetic
task does (tasks/data.py: one rater's score, task.rater_bias), so the consensus is known to the generator and the
article's reward still has something to pull towards.
"""

from __future__ import annotations

import random
from typing import Any

# the noun a sentence uses for each aspect a review can rate (tasks.data.ASPECTS)
NOUNS = {
    "food": "the food",
    "service": "the service",
    "price": "the price",
    "ambience": "the atmosphere",
    "location": "the location",
    "cleanliness": "the cleanliness",
    "menu": "the menu",
    "drinks": "the drinks",
}
# plain phrases for each consensus level
PLAIN = {
    -2: ("terrible", "awful", "dreadful", "horrible", "a complete disaster", "the worst I have seen"),
    -1: ("disappointing", "poor", "mediocre", "rather weak", "below average", "not up to much"),
    0: ("okay", "average", "fine, nothing special", "acceptable", "so-so", "neither good nor bad"),
    1: ("good", "nice", "pleasant", "solid", "enjoyable", "better than expected"),
    2: ("excellent", "outstanding", "superb", "wonderful", "fantastic", "perfect"),
}
# the same levels said through a negation or an intensifier
MODIFIED = {
    -2: ("really bad", "extremely poor", "not acceptable at all", "truly awful", "not worth it in any way"),
    -1: ("not good", "not great", "a bit disappointing", "hardly worth it", "not very good"),
    0: ("not bad, not great", "neither here nor there", "not special", "fairly ordinary", "just about fine"),
    1: ("not bad", "quite good", "pretty nice", "not bad at all", "rather pleasant"),
    2: ("really good", "very good indeed", "extremely good", "truly excellent", "absolutely wonderful"),
}
TEMPLATES = (
    "{noun} was {phrase}.",
    "I found {noun} {phrase}.",
    "As for {noun}, it was {phrase}.",
    "{noun} felt {phrase}.",
    "Honestly, {noun} was {phrase}.",
)
LEVELS = tuple(sorted(PLAIN))
# the share of sentences said through a negation or an intensifier (task.modifier_rate is the synthetic task's: the
# two kinds' files differ in task.kind alone, so a run can tell the other kind's files from anyone's)
MODIFIED_SHARE = 0.3


def level_score(level: int, min_score: int, max_score: int) -> int:
    """The consensus score of a level on the task's range: the five levels spread linearly over it."""
    span = max_score - min_score
    return min_score + round((level - LEVELS[0]) * span / (LEVELS[-1] - LEVELS[0]))


def sentence(rng: random.Random, aspect: str, level: int) -> str:
    """One sentence saying the aspect's level."""
    phrases = MODIFIED if rng.random() < MODIFIED_SHARE else PLAIN
    text = rng.choice(TEMPLATES).format(noun=NOUNS[aspect], phrase=rng.choice(phrases[level]))
    return text[0].upper() + text[1:]


def draw(rng: random.Random, aspects: tuple[str, ...], task: Any) -> tuple[str, list[int]]:
    """A prompt and its consensus scores for the aspects."""
    levels = [rng.choice(LEVELS) for _ in aspects]
    review = " ".join(sentence(rng, a, lv) for a, lv in zip(aspects, levels, strict=True))
    prompt = (
        f"Review: {review}\nRate {', '.join(aspects)} from {task.min_score} to {task.max_score}, "
        "in that order, one score each separated by spaces."
    )
    return prompt, [level_score(lv, task.min_score, task.max_score) for lv in levels]
