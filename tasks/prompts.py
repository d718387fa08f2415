"""How a prompt reaches the network, the same way in SFT, GRPO, held-out evaluation and the served scorer.

With a chat template (model.chat_template: auto finds one in the tokenizer, on requires it) a prompt is one user
message and the target one assistant message, in TRL's conversational prompt/completion format: TRL renders them
with the template, so the completion ends with the model's end-of-turn token, where generation stops. Without one,
prompts are plain text and the completion is " " + the scores. The choice is made when SFT trains and is saved
with every checkpoint (rewardflow_config.json), so GRPO, evaluation and serving follow the weights, not the params.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tasks.modeling import RESOLVED_CONFIG

# the key in a checkpoint's resolved config that records the choice
CHAT_KEY = "chat_template"


def uses_chat_template(mode: str, tokenizer: Any, source: str) -> bool:
    """Resolve model.chat_template (auto|on|off) for this tokenizer."""
    has = bool(getattr(tokenizer, "chat_template", None))
    if mode == "on" and not has:
        raise ValueError(
            f"model.chat_template is on, but the tokenizer of {source} has no chat template; set it to auto or off"
        )
    return has if mode == "auto" else mode == "on"


def checkpoint_uses_chat_template(model_dir: str | Path) -> bool:
    """Whether the checkpoint in model_dir was trained on chat-formatted prompts (False when its
    rewardflow_config.json records no choice: plain prompts)."""
    try:
        resolved = json.loads((Path(model_dir) / RESOLVED_CONFIG).read_text())
    except (OSError, ValueError):
        return False
    return bool(resolved.get(CHAT_KEY, False))


def _messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def trl_example(prompt: str, completion: str | None, chat: bool) -> dict[str, Any]:
    """A dataset row as TRL's trainers take it: conversational with a chat template, plain text otherwise
    (completion None: a prompt-only row, as GRPO takes)."""
    row: dict[str, Any] = {"prompt": _messages(prompt) if chat else prompt}
    if completion is not None:
        row["completion"] = [{"role": "assistant", "content": completion}] if chat else " " + completion
    return row


def prompt_ids(tokenizer: Any, prompts: Sequence[str], chat: bool) -> list[list[int]]:
    """The token ids the network is fed for each prompt, computed as TRL's SFT and GRPO trainers compute them
    (chat: apply_chat_template with the generation prompt; plain: the tokenizer with its special tokens)."""
    if chat:
        rendered = tokenizer.apply_chat_template(
            [_messages(p) for p in prompts], add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return [list(ids) for ids in rendered["input_ids"]]
    return [list(ids) for ids in tokenizer(list(prompts))["input_ids"]]


def check_fits(
    tokenizer: Any, file: str | Path, lines: Sequence[tuple[int, str, str]], chat: bool, max_length: int
) -> None:
    """Fail before training when a prompt and its target (line, prompt, completion) take more than max_length
    tokens: SFT truncates such an example and cuts its target off. The longest prompts are checked."""
    from tasks.data import DataFileError

    longest = sorted(lines, key=lambda item: len(item[1]) + len(item[2]), reverse=True)[:16]
    for line, prompt, completion in longest:
        example = trl_example(prompt, completion, chat)
        if chat:
            messages = example["prompt"] + example["completion"]
            n = len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
        else:
            n = len(tokenizer(prompt + example["completion"])["input_ids"]) + 1  # and the EOS TRL appends
        if n > max_length:
            raise DataFileError(
                f"{file}:{line}: the prompt and its target take {n} tokens"
                f"{' through the chat template' if chat else ''}, more than model.max_length {max_length}: SFT "
                "would cut the target off. Raise model.max_length (in params.yaml or the profile) or shorten the prompt"
            )
