"""Several completions per prompt without recomputing the prompt: GRPO's groups and n-sample decoding.

`model.generate` on a batch that repeats each prompt n times (TRL's GRPO batches; num_return_sequences, which
expands the prompts before the forward pass) runs the prompt's forward pass n times. For the short completions here
the prompt is nearly all of the tokens, so that is nearly all of the generation cost. `generate_shared_prefix`
runs each distinct prompt's forward pass once, repeats its KV cache n times and lets `generate` sample from there:
the same distribution, with the prompt computed once per group.

GRPO's training pass has the same waste: the loss and its backward run over every (prompt, completion) row, so each
prompt is encoded and back-propagated through once per completion. `shared_prefix_logps` packs each group into one
sequence, the prompt once and then every completion, with an attention mask that lets each completion see the
prompt and itself only (the Prefix Grouper method, arXiv 2506.05433): the same per-token log-probs and gradients
(the prompt's gradient is the sum of its completions', as in the row-wise pass) from about a quarter of the tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasks.prompts import PromptFormat

# Architectures tested equal to the row-wise pass (tests/test_shared_prefix.py: the built-in model, SmolLM2). Others
# that take position ids and a custom 4D mask may well work (Mistral, Qwen2/3) but fall back to TRL's pass until
# tested: a sliding attention window, for one, is part of the mask transformers builds and not of this one.
SHARED_PREFIX_MODEL_TYPES = frozenset({"llama"})
# attention implementations that apply a 4D mask as given (flash attention ignores it)
SHARED_PREFIX_ATTENTION = frozenset({"eager", "sdpa"})


def shared_prefix_unsupported(model: Any) -> str | None:
    """Why the shared-prefix training pass cannot run on this model, or None when it can."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SHARED_PREFIX_MODEL_TYPES:
        return f"model type {model_type!r} is not one of {', '.join(sorted(SHARED_PREFIX_MODEL_TYPES))}"
    attention = getattr(config, "_attn_implementation", None)
    if attention not in SHARED_PREFIX_ATTENTION:
        return f"attention implementation {attention!r} is not one of {', '.join(sorted(SHARED_PREFIX_ATTENTION))}"
    return None


def prompt_groups(prompt_ids: Any, prompt_mask: Any) -> list[list[int]]:
    """The batch's rows grouped by prompt (equal ids and padding), groups in order of first appearance: the rows of
    one group need not be adjacent (TRL shuffles a generation batch before training on it)."""
    groups: dict[tuple[tuple[int, ...], tuple[int, ...]], list[int]] = {}
    for row in range(prompt_ids.size(0)):
        key = (tuple(prompt_ids[row].tolist()), tuple(prompt_mask[row].tolist()))
        groups.setdefault(key, []).append(row)
    return list(groups.values())


def shared_prefix_logps(
    model: Any,
    input_ids: Any,
    attention_mask: Any,
    logits_to_keep: int,
    temperature: float = 1.0,
    compute_entropy: bool = False,
) -> tuple[Any, Any]:
    """Per-token log-probs (and entropies) of the last `logits_to_keep` tokens of each row, as TRL's GRPO computes
    them (rows = a left-padded prompt, then a right-padded completion; logits divided by temperature; 0 at the
    completion's padding), with each distinct prompt computed once: one packed sequence per group of rows sharing a
    prompt, [prompt, completion 1, completion 2, ...], each completion attending to the prompt and to itself only.
    The prompt keeps the positions of its columns (the row-wise pass passes no position ids) and each completion
    follows the prompt's last token: on TRL's left-padded prompts every position is the row-wise pass's; a prompt
    padded on the right is scored as if unpadded (the row-wise pass would predict the first completion token from a
    padding position)."""
    import torch

    width = logits_to_keep
    prompt_len = input_ids.size(1) - width
    prompt_ids, prompt_mask = input_ids[:, :prompt_len], attention_mask[:, :prompt_len]
    completion_ids, completion_mask = input_ids[:, prompt_len:], attention_mask[:, prompt_len:]
    device = input_ids.device
    groups = prompt_groups(prompt_ids, prompt_mask)
    lengths = completion_mask.sum(dim=1).tolist()

    # one packed sequence per group: its tokens, positions, which earlier tokens each token sees, and for each
    # completion token the packed position whose logits predict it
    packed: list[Any] = []
    for rows in groups:
        columns = prompt_mask[rows[0]].nonzero().flatten()
        n_prompt = columns.numel()
        tokens, positions, segment = [prompt_ids[rows[0], columns]], [columns], [0] * n_prompt
        predictors, start = [], n_prompt
        for k, row in enumerate(rows, start=1):
            n = int(lengths[row])
            tokens.append(completion_ids[row, :n])
            positions.append(torch.arange(columns[-1] + 1, columns[-1] + 1 + n, device=device))
            segment += [k] * n
            # token 0 is predicted by the prompt's last token, token i by the completion's token i - 1
            predictors.append([n_prompt - 1, *range(start, start + n - 1)] if n else [])
            start += n
        packed.append((torch.cat(tokens), torch.cat(positions), torch.tensor(segment, device=device), predictors))

    length = max(ids.numel() for ids, _, _, _ in packed)
    dtype = next(model.parameters()).dtype
    batch_ids = torch.zeros(len(packed), length, dtype=input_ids.dtype, device=device)
    batch_positions = torch.zeros(len(packed), length, dtype=torch.long, device=device)
    allowed = torch.zeros(len(packed), 1, length, length, dtype=torch.bool, device=device)
    keep = torch.zeros(len(packed), length, dtype=torch.bool, device=device)
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    for g, (ids, positions, segment, predictors) in enumerate(packed):
        n = ids.numel()
        batch_ids[g, :n], batch_positions[g, :n] = ids, positions
        # a token sees the earlier tokens of its own segment and the whole prompt (segment 0)
        same = (segment[:, None] == segment[None, :]) | (segment[None, :] == 0)
        allowed[g, 0, :n, :n] = same & causal[:n, :n]
        allowed[g, 0, n:, n:] = torch.eye(length - n, dtype=torch.bool, device=device)  # padding sees itself
        for predictor in predictors:
            keep[g, predictor] = True
    additive = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)

    out = model(
        input_ids=batch_ids,
        attention_mask=additive,
        position_ids=batch_positions,
        logits_to_keep=keep,
        use_cache=False,
    )
    # the kept positions' logits, flattened in (group, position) order; where each packed position landed
    logits = out.logits.reshape(-1, out.logits.size(-1)).float() / temperature
    landed = keep.flatten().long().cumsum(0).reshape(keep.shape) - 1
    log_probs = torch.log_softmax(logits, dim=-1)

    logps = torch.zeros(input_ids.size(0), width, dtype=log_probs.dtype, device=device)
    entropies = torch.zeros_like(logps) if compute_entropy else None
    for g, rows in enumerate(groups):
        for row, predictor in zip(rows, packed[g][3], strict=True):
            if not predictor:
                continue
            at = landed[g, predictor]
            n = len(predictor)
            logps[row, :n] = log_probs[at].gather(-1, completion_ids[row, :n, None]).squeeze(-1)
            if entropies is not None:
                entropies[row, :n] = -(log_probs[at].exp() * log_probs[at]).sum(-1)
    return logps, entropies


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
    fmt: PromptFormat,
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
            ids = prompt_ids(tokenizer, prompts[start : start + batch_size], fmt)
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
