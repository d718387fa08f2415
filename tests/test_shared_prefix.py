"""GRPO's shared-prefix training pass (tasks.sampling.shared_prefix_logps, grpo.shared_prefix): the pipeline's trainer
gives the same per-token log-probs, entropies, loss and gradients with each group's prompt computed once as with
TRL's own row-wise pass, on batches shaped as TRL hands them over (groups of 2, 4 and 8 completions of unequal
lengths, an empty one among them, rows shuffled, prompts padded on the left or on the right)."""

from pathlib import Path

import pytest
import torch
from project import TINY, assert_equal_passes, both_passes, grpo_batch, make_trainer, overrides, tiny_params

from tasks.data import read_jsonl
from tasks.modeling import load_base_model
from tasks.sampling import prompt_groups, shared_prefix_unsupported


@pytest.fixture(scope="module")
def builtin(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shared-prefix")
    p = tiny_params(folder, *overrides(TINY), "model.hidden_size=64", "model.num_layers=2")
    rows = read_jsonl(p.paths.train_file)
    model, tokenizer = load_base_model(p.model, (r["prompt"] for r in rows), p.seed)
    return p, model, tokenizer, [r["prompt"] for r in rows]


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("group", [2, 4, 8])
def test_the_shared_prefix_pass_equals_trls_on_the_built_in_model(builtin, tmp_path, group, padding_side):
    """Left: TRL's own layout, compared with TRL's pass on the same batch. Right: the same rows with the prompts
    padded on the right, compared with TRL's pass on the left-padded batch (TRL's pass itself needs left padding:
    on the right it predicts each first completion token from a padding position)."""
    p, model, tokenizer, prompts = builtin
    trainer = make_trainer(
        model, tokenizer, p.paths.train_file, tmp_path, "auto", num_generations=group, per_device_train_batch_size=group
    )
    assert trainer.shared_prefix is True  # auto: a Llama with sdpa attention
    batch = grpo_batch(tokenizer, prompts[:3], group, padding_side, len(tokenizer))
    out, mask = both_passes(trainer, batch, grpo_batch(tokenizer, prompts[:3], group, "left", len(tokenizer)))
    assert_equal_passes(out, mask)


def test_prompt_groups_follow_equal_prompts_wherever_the_rows_are():
    ids = torch.tensor([[0, 5, 6], [7, 8, 9], [0, 5, 6], [0, 0, 6], [7, 8, 9]])
    mask = (ids != 0).long()
    assert prompt_groups(ids, mask) == [[0, 2], [1, 4], [3]]


def test_auto_false_and_true_on_what_the_pass_does_not_support(builtin, tmp_path, caplog):
    p, model, tokenizer, _ = builtin
    assert make_trainer(model, tokenizer, p.paths.train_file, tmp_path, False).shared_prefix is False
    with pytest.raises(ValueError, match="grpo.shared_prefix is true, but cast_lm_head_to_fp32 is set"):
        make_trainer(model, tokenizer, p.paths.train_file, tmp_path, True, cast_lm_head_to_fp32=True)
    with caplog.at_level("INFO", logger="tasks.grpo_trainer"):
        trainer = make_trainer(model, tokenizer, p.paths.train_file, tmp_path, "auto", cast_lm_head_to_fp32=True)
    assert trainer.shared_prefix is False and "shared-prefix training pass off (cast_lm_head_to_fp32" in caplog.text


def test_architectures_outside_the_supported_ones_are_named():
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=11))
    assert shared_prefix_unsupported(gpt2).startswith("model type 'gpt2' is not one of llama")
    llama = LlamaForCausalLM(
        LlamaConfig(num_hidden_layers=1, hidden_size=8, intermediate_size=8, num_attention_heads=2, vocab_size=11)
    )
    assert shared_prefix_unsupported(llama) is None
    llama.config._attn_implementation = "flash_attention_2"
    assert "attention implementation 'flash_attention_2'" in shared_prefix_unsupported(llama)


def test_a_grpo_stage_with_the_shared_prefix_on_and_off_gives_the_same_model(tmp_path):
    """The grpo stage from one SFT checkpoint and seed, grpo.shared_prefix true then false: the same training
    rewards at every step, weights equal within fp32 noise, the same held-out metrics to the third decimal."""
    import shutil

    from tasks.evaluation import run_evaluate
    from tasks.modeling import load_pretrained
    from tasks.training import run_grpo, run_sft

    settings = ("sft.max_steps=30", "sft.learning_rate=0.005", "grpo.temperature=1.5", "grpo.max_steps=4")
    p = tiny_params(tmp_path, *overrides(TINY), *settings, "grpo.prompts_per_step=4", "grpo.shared_prefix=true")
    run_sft(p)
    runs = {}
    for switch in ("true", "false"):
        p = tiny_params(
            tmp_path, *overrides(TINY), *settings, "grpo.prompts_per_step=4", f"grpo.shared_prefix={switch}"
        )
        shutil.rmtree(Path(p.paths.models_dir) / ".checkpoints", ignore_errors=True)
        logs = run_grpo(p)["logs"]
        model, _ = load_pretrained(Path(p.paths.models_dir) / "grpo")
        runs[switch] = (
            [e["reward_stats/combined/mean"] for e in logs if "reward_stats/combined/mean" in e],
            {k: v.clone() for k, v in model.state_dict().items()},
            run_evaluate(p, ("grpo",))["grpo"],
        )
    (rewards_on, weights_on, metrics_on), (rewards_off, weights_off, metrics_off) = runs["true"], runs["false"]
    assert len(rewards_on) == 4 and rewards_on == pytest.approx(rewards_off, abs=1e-9)
    moved = max((weights_on[k] - weights_off[k]).abs().max().item() for k in weights_on)
    assert moved < 1e-4, moved
    assert {k: round(v, 3) for k, v in metrics_on.items()} == {k: round(v, 3) for k, v in metrics_off.items()}
