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

from tasks.config import LoraConfig, ModelConfig

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
DIGITS = tuple(str(i) for i in range(10))
RESOLVED_CONFIG = "rewardflow_config.json"


def task_vocabulary(prompts: Iterable[str]) -> list[str]:
    """The built-in tokenizer's words: every whitespace-separated token of the training prompts, sorted."""
    return sorted({word for prompt in prompts for word in prompt.split()} - set(DIGITS) - set(SPECIAL_TOKENS))


def build_word_tokenizer(words: Iterable[str]) -> Any:
    """Word-level fast tokenizer: specials, the digits, then `words`; decode joins tokens with one space.

    Specials are added tokens, so TRL's `"5<eos>"` (EOS appended with no space) splits into "5", "<eos>".
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for token in (*SPECIAL_TOKENS, *DIGITS, "-", *words):
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


def load_base_model(cfg: ModelConfig, train_prompts: Iterable[str], seed: int) -> tuple[Any, Any]:
    """The starting model of the pipeline: the built-in tiny Llama or a pretrained model."""
    if cfg.is_builtin:
        tokenizer = build_word_tokenizer(task_vocabulary(train_prompts))
        model = build_tiny_llama(cfg, tokenizer, seed)
        log.info("built-in model: %d parameters, vocabulary %d", model.num_parameters(), len(tokenizer))
        return model, tokenizer
    return load_pretrained(cfg.name_or_path, cfg.trust_remote_code)


def peft_config_for(lora: LoraConfig, model_cfg: ModelConfig) -> Any | None:
    """A PEFT LoraConfig when LoRA is active for this model, else None."""
    if not lora.active(model_cfg):
        return None
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
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
