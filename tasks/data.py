"""The embedded scoring tasks and the JSONL data format.

A row is `{"prompt": str, "scores": [int, ...]}` — the schema users bring their own data in.

Two embedded tasks (task.kind): english (tasks/english_task.py: plain English reviews, for pretrained models) and
synthetic, described here and built for a model learning from nothing: a short synthetic restaurant review covering
`n_items` aspects. Each aspect has a consensus score, its sentiment (+1 per positive word, -1 per negative word;
"very" doubles and "not" flips the next one when task.modifier_rate puts modifiers in) around a neutral midpoint,
clipped to the score range. Each label is one rater's score: task.rater_bias gives the probabilities that the rater
scores one point below, at, or one point above the consensus. With the default [0.35, 0.3, 0.35] the most frequent
label of a review is one of the two off-by-one scores, not the consensus: a likelihood-trained model that decodes
greedily imitates the most frequent rater, while the consensus is what is within 1 of every rater (the reward's
within-1 and MAE terms pay for that).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import random
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tasks import english_task
from tasks.config import DATA_SPLITS, PathsConfig, TaskConfig

ASPECTS = ("food", "service", "price", "ambience", "location", "cleanliness", "menu", "drinks")
POSITIVE = ("great", "tasty", "fresh", "friendly", "cheap", "cozy", "lovely", "quick", "superb", "clean")
NEGATIVE = ("bland", "slow", "rude", "pricey", "noisy", "dirty", "stale", "cold", "awful", "cramped")
FILLERS = ("okay", "fine", "average", "usual", "decent")
JOINERS = ("and", "but", "yet", "also")
MODIFIERS = ("very", "not")
# how a modifier splits between "very" and "not"
MODIFIER_SPLIT = (0.625, 0.375)


class DataFileError(ValueError):
    """A data file that cannot be read as JSONL rows; the message names the file and line."""


def phrase_sentiment(words: Iterable[str]) -> int:
    """The embedded task's rule for one aspect: +1 per positive word, -1 per negative word; "very" doubles the
    next sentiment word, "not" flips it."""
    total, modifier = 0, 1
    for word in words:
        if word == "very":
            modifier = 2
        elif word == "not":
            modifier = -1
        elif word in POSITIVE or word in NEGATIVE:
            total += modifier * (1 if word in POSITIVE else -1)
            modifier = 1
        else:
            modifier = 1
    return total


def label_for(sentiment: int, min_score: int, max_score: int) -> int:
    """An aspect's score: the neutral midpoint plus its sentiment, clipped to the range."""
    neutral = (min_score + max_score) // 2
    return max(min_score, min(max_score, neutral + sentiment))


def _aspect_phrase(rng: random.Random, aspect: str, max_words: int, modifier_rate: float) -> tuple[str, int]:
    n_pos, n_neg = rng.randint(0, max_words), rng.randint(0, max_words)
    words = rng.sample(POSITIVE, n_pos) + rng.sample(NEGATIVE, n_neg)
    if not words:
        words = [rng.choice(FILLERS)]
    rng.shuffle(words)
    # Modifiers make the count context-dependent (and much slower for a small model to learn).
    weights = (1 - modifier_rate, modifier_rate * MODIFIER_SPLIT[0], modifier_rate * MODIFIER_SPLIT[1])
    words = [f"{rng.choices(('', *MODIFIERS), weights)[0]} {w}".strip() for w in words]
    joined = [words[0]]
    for word in words[1:]:
        joined += [rng.choice(JOINERS), word]
    text = " ".join(joined)
    return f"{aspect} : {text} .", phrase_sentiment(text.split())


def _draw_synthetic(rng: random.Random, aspects: tuple[str, ...], task: TaskConfig) -> tuple[str, list[int]]:
    """A prompt of the synthetic task and its consensus scores."""
    min_score, max_score = task.min_score, task.max_score
    # Enough sentiment words per aspect to reach both ends of the score range from the midpoint (as far as the
    # word lists allow: on a range wider than 2 * len(POSITIVE) the extremes are never the consensus).
    max_words = min((max_score - min_score) // 2, len(POSITIVE), len(NEGATIVE))
    phrases, scores = [], []
    for aspect in aspects:
        phrase, sentiment = _aspect_phrase(rng, aspect, max_words, task.modifier_rate)
        phrases.append(phrase)
        scores.append(label_for(sentiment, min_score, max_score))
    return f"review : {' '.join(phrases)} rate {' '.join(aspects)} from {min_score} to {max_score} :", scores


# task.kind -> how a prompt and its consensus scores are drawn
DRAW = {"synthetic": _draw_synthetic, "english": english_task.draw}
TASK_KINDS = tuple(DRAW)


def generate_rows(n: int, seed: int, task: TaskConfig, exclude: Iterable[str] = ()) -> list[dict[str, Any]]:
    """n distinct rows of the embedded task described by `task` (params.yaml's task section: its kind, n_items,
    score range, rater_bias and modifier_rate; n and seed are given here), none of whose prompts is in `exclude`.
    The same arguments always give the same rows.

    Each row's scores are one rater's: with probabilities task.rater_bias = (below, at, above) the rater scores an
    aspect one point below, at, or one point above its consensus score (clipped to the range). The prompts do
    not depend on rater_bias: the raters draw from their own seeded stream. task.modifier_rate is the probability
    that a synthetic task's sentiment word carries a negation or an intensifier.
    """
    n_items, min_score, max_score = task.n_items, task.min_score, task.max_score
    if not 1 <= n_items <= len(ASPECTS):
        raise ValueError(f"the embedded task supports 1..{len(ASPECTS)} items (task.n_items), got {n_items}")
    draw = DRAW[task.kind]
    rng = random.Random(seed)
    raters = random.Random(f"raters-{seed}")
    aspects = ASPECTS[:n_items]
    seen = set(exclude)
    rows: list[dict[str, Any]] = []
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"cannot draw {n} distinct prompts for this task size; lower task.n_train/n_heldout")
        prompt, scores = draw(rng, aspects, task)
        if prompt in seen:
            continue
        seen.add(prompt)
        offsets = raters.choices((-1, 0, 1), weights=task.rater_bias, k=len(scores))
        scores = [max(min_score, min(max_score, s + o)) for s, o in zip(scores, offsets, strict=True)]
        rows.append({"prompt": prompt, "scores": scores})
    return rows


def jsonl_line(row: dict[str, Any]) -> str:
    """One row as the project writes it: compact-spaced JSON, UTF-8 as is, one line."""
    return json.dumps(row, ensure_ascii=False) + "\n"


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows as JSONL atomically: readers see the old file or the whole new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            for row in rows:
                handle.write(jsonl_line(row))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def embedded_splits(task: TaskConfig) -> dict[str, list[dict[str, Any]]]:
    """The embedded task's rows by split (tasks.config.DATA_SPLITS): train, then held-out without train's prompts,
    then validation without either's. Each split draws from its own seed, so adding a later split never changes
    an earlier one's rows."""
    train = generate_rows(task.n_train, task.train_seed, task)
    heldout = generate_rows(task.n_heldout, task.heldout_seed, task, exclude=(r["prompt"] for r in train))
    taken = [r["prompt"] for r in (*train, *heldout)]
    validation = generate_rows(task.n_validation, task.validation_seed, task, exclude=taken)
    splits = {"train": train, "heldout": heldout, "validation": validation}
    return {split: splits[split] for split in DATA_SPLITS}


@functools.lru_cache(maxsize=2)
def _consensus_by_prompt(task: TaskConfig) -> dict[str, list[int]]:
    """Every prompt of the embedded task `task` describes (all splits) -> its consensus scores; kept, because both
    evaluation stages of one run ask for it."""
    consensus = embedded_splits(dataclasses.replace(task, rater_bias=(0.0, 1.0, 0.0)))
    return {r["prompt"]: r["scores"] for split in consensus.values() for r in split}


def consensus_labels(task: TaskConfig, rows: Sequence[dict[str, Any]]) -> list[list[int]] | None:
    """The consensus scores of rows (the scores before the raters' noise, in row order) when every row is a row of
    the embedded task `task` describes (any of its splits, any subset), else None."""
    consensus = _consensus_by_prompt(task)
    if not rows or any(r["prompt"] not in consensus for r in rows):
        return None
    return [list(consensus[r["prompt"]]) for r in rows]


def generate_dataset(paths: PathsConfig, task: TaskConfig) -> dict[str, Path]:
    """Write the embedded task's files (paths.train_file, heldout_file, validation_file): pairwise disjoint in
    prompts, byte-identical for the same task params. Returns the written files by split."""
    files = paths.data_files()
    return {split: write_jsonl(files[split], rows) for split, rows in embedded_splits(task).items()}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def read_jsonl_lines(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) pairs of a JSONL file; anything that is not JSONL of objects fails with the file and
    line. Blank lines, CRLF endings and a UTF-8 BOM are tolerated."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataFileError(
            f"{path}: file not found (the embedded task: `rewardflow data generate`; your data: point paths.* in "
            "params.yaml at your files, or carve a validation split from train with `rewardflow data split`)"
        ) from None
    except IsADirectoryError:
        raise DataFileError(f"{path}: is a directory, expected a .jsonl file") from None
    if not raw.strip():
        raise DataFileError(f"{path}: file is empty, expected one JSON object per line")
    lines = raw.split(b"\n")
    complete = lines[-1] == b""
    if complete:
        lines.pop()
    rows: list[tuple[int, dict[str, Any]]] = []
    for lineno, line in enumerate(lines, start=1):
        line = line.removesuffix(b"\r")
        if lineno == 1:
            line = line.removeprefix(b"\xef\xbb\xbf")
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataFileError(f"{path}:{lineno}: not UTF-8 (byte {err.start}); re-encode the file as UTF-8") from None
        try:
            row = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys)
        except json.JSONDecodeError as err:
            hint = " (truncated last line?)" if lineno == len(lines) and not complete else ""
            raise DataFileError(f"{path}:{lineno}: not valid JSON{hint}: {err.msg} at column {err.colno}") from None
        except ValueError as err:
            raise DataFileError(f"{path}:{lineno}: not valid JSON: {err}") from None
        if not isinstance(row, dict):
            raise DataFileError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append((lineno, row))
    return rows


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file (see read_jsonl_lines for the errors)."""
    return [row for _, row in read_jsonl_lines(path)]


def completion_for(scores: Iterable[int]) -> str:
    """The target completion for a row: the scores, space-separated."""
    return " ".join(str(s) for s in scores)
