"""Shared-prefix sampling: each distinct prompt's forward pass runs once per group, with the same outputs."""

from pathlib import Path

import pytest
import torch
from project import TINY, overrides, tiny_params

from tasks.data import read_jsonl
from tasks.modeling import load_base_model
from tasks.prompts import PLAIN, prompt_ids
from tasks.sampling import generate_shared_prefix, sample_completions


@pytest.fixture
def model_and_batch(tmp_path):
    p = tiny_params(tmp_path, *overrides(TINY))
    rows = read_jsonl(p.paths.train_file)
    model, tokenizer = load_base_model(p.model, (r["prompt"] for r in rows), p.seed)
    model.eval()
    tokenizer.padding_side = "left"
    # prompts of different lengths, each repeated 3 times: left padding differs inside the batch
    ids = prompt_ids(tokenizer, [r["prompt"] for r in rows[:4]], PLAIN)
    assert len({len(i) for i in ids}) > 1
    enc = tokenizer.pad({"input_ids": [row for row in ids for _ in range(3)]}, padding=True, return_tensors="pt")
    return model, tokenizer, enc


class _Prefills:
    """The batch sizes of the forward passes that take more than one token (prompt passes, not decoding steps)."""

    def __init__(self, model):
        self.sizes: list[int] = []
        self.handle = model.get_input_embeddings().register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        if args[0].shape[1] > 1:
            self.sizes.append(args[0].shape[0])


def test_shared_prefix_generation_gives_generates_outputs(model_and_batch):
    model, tokenizer, enc = model_and_batch
    kwargs = dict(max_new_tokens=6, pad_token_id=tokenizer.pad_token_id, output_scores=True)
    kwargs["return_dict_in_generate"] = True
    with torch.inference_mode():
        plain = model.generate(**enc, do_sample=False, **kwargs)
        prefills = _Prefills(model)
        shared = generate_shared_prefix(model, enc["input_ids"], enc["attention_mask"], 3, do_sample=False, **kwargs)
        prefills.handle.remove()
    assert torch.equal(plain.sequences, shared.sequences)
    assert max((a - b).abs().max().item() for a, b in zip(plain.scores, shared.scores, strict=True)) < 1e-4
    assert prefills.sizes == [4]  # four distinct prompts, not twelve rows
    # sampling with the same seed draws the same completions
    with torch.inference_mode():
        torch.manual_seed(3)
        a = model.generate(**enc, do_sample=True, top_k=0, **kwargs).sequences
        torch.manual_seed(3)
        b = generate_shared_prefix(model, enc["input_ids"], enc["attention_mask"], 3, do_sample=True, top_k=0, **kwargs)
    assert torch.equal(a, b.sequences)


def test_a_batch_that_is_not_grouped_goes_to_generate_unchanged(model_and_batch):
    model, tokenizer, enc = model_and_batch
    shuffled = {k: v[[0, 3, 1, 4, 2, 5, 6, 7, 8, 9, 10, 11]] for k, v in enc.items()}
    prefills = _Prefills(model)
    with torch.inference_mode():
        out = generate_shared_prefix(model, shuffled["input_ids"], shuffled["attention_mask"], 3, max_new_tokens=3)
    prefills.handle.remove()
    assert prefills.sizes == [12] and out.shape[0] == 12


def test_grpo_and_n_sample_decoding_compute_each_prompt_once(tmp_path, model_and_batch):
    """A real GRPO step (2 prompts x 4 completions) prefills 2 rows; sample_completions 4 prompts x 5 samples, 4."""
    from tasks.training import run_grpo, run_sft

    p = tiny_params(tmp_path, *overrides(TINY), "grpo.max_steps=1", "grpo.temperature=1.5")
    run_sft(p)
    sizes: list[int] = []

    def hook(module, args):  # the step's first multi-token forward pass is generation's prompt pass
        if isinstance(module, torch.nn.Embedding) and args[0].dim() == 2 and args[0].shape[1] > 1:
            sizes.append(args[0].shape[0])

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        run_grpo(p)
    finally:
        handle.remove()
    assert p.grpo.prompts_per_step == 2 and p.grpo.num_generations == 4
    assert sizes and sizes[0] == 2, sizes

    model, tokenizer, _ = model_and_batch
    prompts = [r["prompt"] for r in read_jsonl(Path(p.paths.heldout_file))[:4]]
    prefills = _Prefills(model)
    samples = sample_completions(model, tokenizer, prompts, 5, 1.0, 4, PLAIN, batch_size=4)
    prefills.handle.remove()
    assert [len(s) for s in samples] == [5, 5, 5, 5] and prefills.sizes == [4]
