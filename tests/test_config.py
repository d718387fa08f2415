"""params.yaml loading: every error path names the file and the key."""

import shutil
from pathlib import Path

import pytest
import yaml

from tasks.config import ParamsError, load_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def params_file(tmp_path):
    path = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", path)
    return path


def _edit(path: Path, change) -> None:
    raw = yaml.safe_load(path.read_text())
    change(raw)
    path.write_text(yaml.safe_dump(raw))


def test_default_params_load():
    p = load_params(ROOT / "params.yaml")
    assert p.model.name_or_path == "builtin:tiny"
    assert p.reward.mode == "multi" and p.grpo.num_generations == 4 and p.grpo.temperature == 0.7
    assert p.sft.lora.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert p.sft.lora.active(p.model) is False  # auto: off for the built-in model


def test_override_changes_one_value():
    p = load_params(ROOT / "params.yaml", ["grpo.temperature=0.8", "reward.mode=binary", "sft.lora.r=4"])
    assert (p.grpo.temperature, p.reward.mode, p.sft.lora.r) == (0.8, "binary", 4)
    # YAML 1.1 reads 3e-4 as a string; a float key takes it as the number it plainly is
    assert load_params(ROOT / "params.yaml", ["grpo.learning_rate=3e-4"]).grpo.learning_rate == 0.0003


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r["grpo"].update(temprature=0.8), r"unknown key grpo\.temprature"),  # a typo
        (lambda r: r.update(extra={}), r"unknown key extra"),  # an unknown section
        (lambda r: r.pop("sft"), r"missing section sft"),  # a missing section
        (lambda r: r["grpo"].pop("beta"), r"missing key grpo\.beta"),  # a missing key
        (
            lambda r: r["grpo"].update(temperature="hot"),
            r"grpo\.temperature must be float, got str",
        ),  # wrong type
        (lambda r: r["sft"].update(max_steps=1.5), r"sft\.max_steps must be int"),  # float for an int
        (lambda r: r["sft"].update(max_steps=True), r"sft\.max_steps must be int"),  # bool is not an int
        (lambda r: r["model"].update(trust_remote_code="yes"), r"model\.trust_remote_code must be bool"),
        (
            lambda r: r["sft"]["lora"].update(target_modules="q_proj"),
            r"sft\.lora\.target_modules must be a list",
        ),
        (
            lambda r: r["grpo"].update(num_generations=1),
            r"grpo\.num_generations must be >= 2",
        ),  # group of one
        (lambda r: r["grpo"].update(temperature=0), r"grpo\.temperature must be > 0"),
        (lambda r: r["grpo"].update(temperature=-0.5), r"grpo\.temperature must be > 0"),
        (lambda r: r["reward"].update(mode="dense"), r"reward\.mode must be one of multi, binary, exact"),
        (lambda r: r["reward"].update(max_mae=0), r"reward\.max_mae must be > 0"),
        (lambda r: r["task"].update(max_score=1), r"task\.max_score must be greater than min_score"),
        (lambda r: r["task"].update(rater_bias=[0.5, 0.5, 0.5]), r"task\.rater_bias must sum to 1"),
        (lambda r: r["task"].update(modifier_rate=1.5), r"task\.modifier_rate must be in \[0, 1\]"),
        (lambda r: r["task"].update(rater_bias=[0.5, 0.5]), r"task\.rater_bias must be three probabilities"),
        (lambda r: r["task"].update(rater_bias=[-0.5, 1.0, 0.5]), r"task\.rater_bias must be three probabilities"),
        (
            lambda r: r["sft"]["lora"].update(enabled="maybe"),
            r"sft\.lora\.enabled must be true, false or auto",
        ),
        (lambda r: r["model"].update(name_or_path="builtin:huge"), r"model\.name_or_path knows one built-in"),
        (lambda r: r.update(paths=["data"]), r"paths must be a mapping"),
    ],
)
def test_bad_params_fail_with_file_and_key(params_file, change, message):
    _edit(params_file, change)
    with pytest.raises(ParamsError, match=message) as err:
        load_params(params_file)
    assert str(params_file) in str(err.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ("grpo.temprature=0.8", r"unknown key grpo\.temprature"),  # typo in an override
        ("nosuch.key=1", r"nosuch is not a section"),
        ("grpo.temperature", r"expected section\.key=value"),
        ("grpo.num_generations=1", r"grpo\.num_generations must be >= 2"),  # same validation as the file
        ("grpo.temperature=[1", r"cannot parse value"),
    ],
)
def test_bad_overrides_fail(override, message):
    with pytest.raises(ParamsError, match=message):
        load_params(ROOT / "params.yaml", [override])


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("seed: [1\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(broken)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ParamsError, match="missing key seed"):
        load_params(empty)


def test_gpu_profile_is_a_valid_params_file():
    """The shipped GPU profile loads with every check of params.yaml: a hub model with LoRA and vLLM generation."""
    p = load_params(Path(__file__).resolve().parents[1] / "profiles" / "gpu-qwen2.5-0.5b.yaml")
    assert p.model.name_or_path == "Qwen/Qwen2.5-0.5B-Instruct" and not p.model.is_builtin
    assert p.sft.lora.active(p.model) and p.grpo.lora.active(p.model)
    assert p.grpo.use_vllm and p.grpo.vllm_mode == "colocate"
