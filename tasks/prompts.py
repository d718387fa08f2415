"""How a prompt reaches the network, the same way in SFT, GRPO, held-out evaluation and the served scorer.

With a chat template (model.chat_template: auto finds one in the tokenizer, on requires it) a prompt is one user
message and the target one assistant message, in TRL's conversational prompt/completion format: TRL renders them
with the template, so the completion ends with the model's end-of-turn token, where generation stops. Before the
user message goes model.system_prompt as a system message when it is set; unset, the template decides (SmolLM2's
adds its own default system prompt, 16 tokens). Without a chat template, prompts are plain text and the completion
is " " + the scores. The format (PromptFormat) is fixed when SFT trains and saved with every checkpoint
(rewardflow_config.json), so GRPO, evaluation and serving follow the weights, not the params.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.modeling import RESOLVED_CONFIG

# the keys in a checkpoint's resolved config that record its PromptFormat
CHAT_KEY = "chat_template"
SYSTEM_KEY = "system_prompt"


@dataclass(frozen=True)
class PromptFormat:
    """How prompts are fed: plain text (chat False), or through the tokenizer's chat template with the template's
    own system prompt (system None) or the given one ("" an empty system message)."""

    chat: bool = False
    system: str | None = None

    @classmethod
    def resolve(cls, mode: str, system: str | None, tokenizer: Any, source: str) -> PromptFormat:
        """The format model.chat_template (auto|on|off) and model.system_prompt give for this tokenizer."""
        has = bool(getattr(tokenizer, "chat_template", None))
        if mode == "on" and not has:
            raise ValueError(
                f"model.chat_template is on, but the tokenizer of {source} has no chat template; set it to auto or off"
            )
        chat = has if mode == "auto" else mode == "on"
        if system is not None and not chat:
            raise ValueError(
                f"model.system_prompt is set, but prompts to {source} go without a chat template (model.chat_template "
                f"{mode}{'' if has else ', and its tokenizer has none'}): a system prompt needs one; set "
                "model.system_prompt to null or put the instruction in the prompts"
            )
        return cls(chat, system)

    @classmethod
    def of_checkpoint(cls, model_dir: str | Path) -> PromptFormat:
        """The format the checkpoint in model_dir was trained on (plain prompts when its rewardflow_config.json
        records none)."""
        try:
            resolved = json.loads((Path(model_dir) / RESOLVED_CONFIG).read_text())
        except (OSError, ValueError):
            return cls()
        return cls(bool(resolved.get(CHAT_KEY, False)), resolved.get(SYSTEM_KEY))

    def record(self) -> dict[str, Any]:
        """What a checkpoint's rewardflow_config.json records (of_checkpoint reads it back)."""
        return {CHAT_KEY: self.chat, SYSTEM_KEY: self.system}

    def messages(self, prompt: str) -> list[dict[str, str]]:
        user = [{"role": "user", "content": prompt}]
        return user if self.system is None else [{"role": "system", "content": self.system}, *user]


PLAIN = PromptFormat()


def trl_example(prompt: str, completion: str | None, fmt: PromptFormat) -> dict[str, Any]:
    """A dataset row as TRL's trainers take it: conversational with a chat template, plain text otherwise
    (completion None: a prompt-only row, as GRPO takes)."""
    row: dict[str, Any] = {"prompt": fmt.messages(prompt) if fmt.chat else prompt}
    if completion is not None:
        row["completion"] = [{"role": "assistant", "content": completion}] if fmt.chat else " " + completion
    return row


def prompt_ids(tokenizer: Any, prompts: Sequence[str], fmt: PromptFormat) -> list[list[int]]:
    """The token ids the network is fed for each prompt, computed as TRL's SFT and GRPO trainers compute them
    (chat: apply_chat_template with the generation prompt; plain: the tokenizer with its special tokens)."""
    if fmt.chat:
        rendered = tokenizer.apply_chat_template(
            [fmt.messages(p) for p in prompts], add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return [list(ids) for ids in rendered["input_ids"]]
    return [list(ids) for ids in tokenizer(list(prompts))["input_ids"]]


def check_fits(
    tokenizer: Any, file: str | Path, lines: Sequence[tuple[int, str, str]], fmt: PromptFormat, max_length: int
) -> None:
    """Fail before training when a prompt and its target (line, prompt, completion) take more than max_length
    tokens: SFT truncates such an example and cuts its target off. The longest prompts are checked."""
    from tasks.data import DataFileError

    longest = sorted(lines, key=lambda item: len(item[1]) + len(item[2]), reverse=True)[:16]
    for line, prompt, completion in longest:
        example = trl_example(prompt, completion, fmt)
        if fmt.chat:
            messages = example["prompt"] + example["completion"]
            n = len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
        else:
            n = len(tokenizer(prompt + example["completion"])["input_ids"]) + 1  # and the EOS TRL appends
        if n > max_length:
            raise DataFileError(
                f"{file}:{line}: the prompt and its target take {n} tokens"
                f"{' through the chat template' if fmt.chat else ''}, more than model.max_length {max_length}: SFT "
                "would cut the target off. Raise model.max_length (in params.yaml or the profile) or shorten the prompt"
            )
