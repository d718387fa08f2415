"""Models and tokenizers: the built-in tiny Llama, hub/local pretrained models, LoRA, saved artefacts."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tasks.profiles import ParamsError
from tasks.training_params import LoraConfig, ModelConfig

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
DIGITS = tuple(str(i) for i in range(10))
RESOLVED_CONFIG = "rewardflow_config.json"


def task_vocabulary(prompts: Iterable[str]) -> list[str]:
    """The built-in tokenizer's words: every whitespace-separated token of the training prompts, sorted."""
    return sorted({word for prompt in prompts for word in prompt.split()} - set(DIGITS) - set(SPECIAL_TOKENS))


def score_words(min_score: int, max_score: int) -> list[str]:
    """Every score of the task's range as a word, so that `10` or `-3` is one token and never unknown."""
    return [str(s) for s in range(min_score, max_score + 1)]


def build_word_tokenizer(words: Iterable[str], scores: Iterable[str] = ()) -> Any:
    """Word-level fast tokenizer: specials, the digits, the `scores` of the task's range, then `words`; decode
    joins tokens with one space.

    Specials are added tokens, so TRL's `"5<eos>"` (EOS appended with no space) splits into "5", "<eos>".
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for token in (*SPECIAL_TOKENS, *DIGITS, "-", *scores, *words):
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        # True would turn "food ." into "food." and break the round trip.
        clean_up_tokenization_spaces=False,
        padding_side="right",
        model_max_length=4096,
    )


def build_tiny_llama(cfg: ModelConfig, tokenizer: Any, seed: int) -> Any:
    """A randomly initialised Llama with tied embeddings, deterministic for the seed."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_length,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=True,
    )
    # fork_rng: building the model must not move the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return model


def load_pretrained(path: str | Path, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """A causal LM and its tokenizer from a hub id or a local folder; safetensors weights only."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            str(path), trust_remote_code=trust_remote_code, use_safetensors=True
        )
    except OSError as err:
        raise OSError(
            f"cannot load model {path!s}: {err}. Check model.name_or_path in params.yaml (a hub id needs network "
            "access or a populated HF cache; a local folder needs config.json, tokenizer files and .safetensors)"
        ) from err
    if tokenizer.pad_token is None:
        # Causal LMs often ship without a pad token; EOS is the usual stand-in for padding.
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_base_model(
    cfg: ModelConfig, train_prompts: Iterable[str], seed: int, score_range: tuple[int, int] | None = None
) -> tuple[Any, Any]:
    """The starting model of the pipeline: the built-in tiny Llama (its vocabulary: the training prompts' words
    and every score in score_range) or a pretrained model."""
    if cfg.is_builtin:
        scores = score_words(*score_range) if score_range else ()
        tokenizer = build_word_tokenizer(task_vocabulary(train_prompts), scores)
        model = build_tiny_llama(cfg, tokenizer, seed)
        log.info("built-in model: %d parameters, vocabulary %d", model.num_parameters(), len(tokenizer))
        return model, tokenizer
    from tasks.model_sources import resolve_source

    return load_pretrained(resolve_source(cfg.name_or_path), cfg.trust_remote_code)


def check_targets(tokenizer: Any, file: str | Path, targets: Iterable[tuple[int, str]]) -> None:
    """Fail before training when a target completion cannot be learned: it encodes to an unknown token or does not
    decode back to itself, so the model could never emit it. `targets` are (line, completion) pairs of `file`."""
    from tasks.data import DataFileError

    first_line: dict[str, int] = {}
    counts: dict[str, int] = {}
    for line, text in targets:
        first_line.setdefault(text, line)
        counts[text] = counts.get(text, 0) + 1
    unk = tokenizer.unk_token_id
    texts = list(first_line)
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    for text, ids in zip(texts, encoded, strict=True):
        decoded = tokenizer.decode(ids, skip_special_tokens=False)
        if unk is not None and unk in ids:
            words = [w for w in text.split() if unk in tokenizer(w, add_special_tokens=False)["input_ids"]]
            which = f" (for {words[0]!r})" if words else ""
            problem = f"it encodes to the unknown token {tokenizer.unk_token}{which}"
        elif decoded.strip() != text.strip():
            problem = f"it decodes back as {decoded.strip()!r}"
        else:
            continue
        rows = counts[text]
        also = f" ({rows} rows have this target)" if rows > 1 else ""
        raise DataFileError(
            f"{file}:{first_line[text]}: the target completion {text.strip()!r} cannot be represented by the model's "
            f"tokenizer: {problem}{also}, so the model could never learn to emit it. For the built-in model, set "
            "task.min_score and task.max_score to cover every score in the data (it has one token per score); for a "
            "pretrained model, use a tokenizer that covers these characters."
        )


def peft_config_for(lora: LoraConfig, model_cfg: ModelConfig, model: Any, section: str) -> Any | None:
    """A PEFT LoraConfig for the loaded model when LoRA is active for it (params section `section`), else None."""
    if not lora.active(model_cfg):
        return None
    from peft import LoraConfig as PeftLoraConfig

    layers = None
    if lora.last_layers is not None:
        total = model.config.num_hidden_layers
        if lora.last_layers > total:
            raise ParamsError(
                f"params: {section}.lora.last_layers is {lora.last_layers}, but {model_cfg.name_or_path} has "
                f"{total} decoder layers; set it to at most {total}, or null for every layer"
            )
        layers = list(range(total - lora.last_layers, total))
    return PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )


def save_artifact(model: Any, tokenizer: Any, out_dir: str | Path, resolved: dict[str, Any]) -> Path:
    """Save a standalone model (LoRA merged), its tokenizer and the resolved config, atomically.

    The folder is written beside the target and renamed into place, so a crash leaves the previous
    artefact or the new one, never half of one.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / RESOLVED_CONFIG).write_text(json.dumps(resolved, indent=2, sort_keys=True, default=str) + "\n")
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
