"""Several completions per prompt without recomputing the prompt: GRPO's groups and n-sample decoding.

`model.generate` on a batch that repeats each prompt n times (TRL's GRPO batches; num_return_sequences, which
expands the prompts before the forward pass) runs the prompt's forward pass n times. For the short completions here
the prompt is nearly all of the tokens, so that is nearly all of the generation cost. `generate_shared_prefix`
runs each distinct prompt's forward pass once, repeats its KV cache n times and lets `generate` sample from there:
the same distribution, with the prompt computed once per group.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any


def _position_ids(attention_mask: Any) -> Any:
    """Positions as `generate` derives them from a left-padded attention mask (padding at 0)."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


def generate_shared_prefix(
    model: Any, input_ids: Any, attention_mask: Any, group: int, generate: Any = None, **generate_kwargs: Any
) -> Any:
    """model.generate(input_ids, attention_mask, **generate_kwargs) for a left-padded batch whose rows come in runs
    of `group` identical prompts; any other batch goes to generate unchanged. `generate` is model.generate unless
    given (the original, when model.generate itself has been routed here)."""
    import torch

    generate = generate or model.generate
    unique_ids, unique_mask = input_ids[::group], attention_mask[::group]
    repeated = group > 1 and input_ids.size(0) % group == 0 and input_ids.size(1) > 1
    if not repeated or not torch.equal(input_ids, unique_ids.repeat_interleave(group, dim=0)):
        return generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)
    # every prompt token but the last: generate feeds that one itself and continues from the cache
    with torch.no_grad():
        out = model(
            input_ids=unique_ids[:, :-1],
            attention_mask=unique_mask[:, :-1],
            position_ids=_position_ids(unique_mask)[:, :-1],
            use_cache=True,
        )
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    cache.batch_repeat_interleave(group)
    return generate(input_ids=input_ids, attention_mask=attention_mask, cache=cache, **generate_kwargs)


@contextlib.contextmanager
def shared_prefix_generation(model: Any, group: int) -> Iterator[None]:
    """Within the block, model.generate(input_ids=..., attention_mask=..., ...) runs generate_shared_prefix with
    this group size (for code that calls model.generate itself, as TRL's GRPO trainer does)."""
    own = model.__dict__.get("generate")
    original = model.generate

    def generate(*args: Any, input_ids: Any = None, attention_mask: Any = None, **kwargs: Any) -> Any:
        if args or input_ids is None or attention_mask is None:
            return original(*args, input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        return generate_shared_prefix(model, input_ids, attention_mask, group, generate=original, **kwargs)

    model.generate = generate
    try:
        yield
    finally:
        if own is None:
            del model.generate
        else:
            model.generate = own


def sample_completions(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    n: int,
    temperature: float,
    max_new_tokens: int,
    chat: bool,
    batch_size: int,
) -> list[list[str]]:
    """n sampled completions per prompt (top-k and top-p off, as GRPO samples), prompts fed as training fed them."""
    import torch

    from tasks.prompts import prompt_ids

    model.eval()
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[list[str]] = []
    try:
        for start in range(0, len(prompts), batch_size):
            ids = prompt_ids(tokenizer, prompts[start : start + batch_size], chat)
            repeated = [row for row in ids for _ in range(n)]
            enc = tokenizer.pad({"input_ids": repeated}, padding=True, return_tensors="pt")
            with torch.inference_mode():
                generated = generate_shared_prefix(
                    model,
                    enc["input_ids"].to(model.device),
                    enc["attention_mask"].to(model.device),
                    n,
                    do_sample=True,
                    temperature=temperature,
                    top_k=0,
                    top_p=1.0,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            texts = tokenizer.batch_decode(generated[:, enc["input_ids"].size(1) :], skip_special_tokens=True)
            out += [texts[i : i + n] for i in range(0, len(texts), n)]
    finally:
        tokenizer.padding_side = padding_side
    return out
