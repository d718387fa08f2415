"""params.yaml loading: every error path names the file and the key."""

from pathlib import Path

import pytest
import yaml
from project import copy_params

from tasks.config import ParamsError, load_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def params_file(tmp_path):
    """A copy of the project's params.yaml with the profiles it can select."""
    return copy_params(tmp_path)


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
        (lambda r: r["grpo"]["lora"].update(last_layers=0), r"grpo\.lora\.last_layers must be null \(every layer\)"),
        (lambda r: r["model"].update(name_or_path="builtin:huge"), r"model\.name_or_path knows one built-in"),
        (lambda r: r.update(paths=["data"]), r"paths must be a mapping"),
        (lambda r: r["task"].update(n_validation=0), r"task\.n_validation must be >= 1"),
        (
            lambda r: r["task"].update(validation_seed=r["task"]["heldout_seed"]),
            r"task\.validation_seed must differ from train_seed and heldout_seed",
        ),
        (
            lambda r: r["task"].update(validation_seed=r["task"]["train_seed"]),
            r"task\.validation_seed must differ from train_seed and heldout_seed",
        ),
        (lambda r: r["paths"].pop("validation_file"), r"missing key paths\.validation_file"),
        (
            lambda r: r["paths"].update(validation_file="data/heldout.jsonl"),
            r"paths\.validation_file must differ from heldout_file",
        ),
        (
            lambda r: r["paths"].update(validation_file="./data/train.jsonl"),
            r"paths\.validation_file must differ from train_file",
        ),
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
        ("grpo.credit=token", r"grpo\.credit must be one of sequence, item \(got 'token'\)"),
        ("model.system_prompt=3", r"--set model\.system_prompt: model\.system_prompt must be str \| None, got 3"),
    ],
)
def test_bad_overrides_fail(override, message):
    with pytest.raises(ParamsError, match=message):
        load_params(ROOT / "params.yaml", [override])


def test_item_credit_needs_a_reward_that_is_a_mean_over_items():
    """grpo.credit item splits the reward by item: mode multi's is a mean over items, binary's and exact's are not."""
    assert load_params(ROOT / "params.yaml", ["grpo.credit=item"]).grpo.credit == "item"
    for mode in ("binary", "exact"):
        with pytest.raises(ParamsError, match=rf"grpo\.credit item needs reward\.mode multi.*is {mode}"):
            load_params(ROOT / "params.yaml", ["grpo.credit=item", f"reward.mode={mode}"])


def test_system_prompt_is_null_or_text():
    """model.system_prompt: null (the chat template's own), any text, or "" (an empty system message)."""
    assert load_params(ROOT / "params.yaml").model.system_prompt is None
    assert load_params(ROOT / "params.yaml", ["model.system_prompt=Rate it."]).model.system_prompt == "Rate it."
    assert load_params(ROOT / "params.yaml", ["model.system_prompt=''"]).model.system_prompt == ""


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    broken = tmp_path / "broken" / "params.yaml"
    broken.parent.mkdir()
    broken.write_text("seed: [1\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(broken)
    empty = tmp_path / "params.yaml"
    empty.write_text("")
    with pytest.raises(ParamsError, match="missing key seed"):
        load_params(empty)


def test_gpu_profile_is_a_valid_params_file():
    """The shipped GPU profile, an overlay, loads with every check of params.yaml: a hub model with LoRA (auto: on for
    a pretrained model), the chat template when the tokenizer has one, and vLLM generation."""
    p = load_params(ROOT / "profiles" / "gpu-qwen2.5-0.5b.yaml")
    assert p.model.name_or_path == "Qwen/Qwen2.5-0.5B-Instruct" and not p.model.is_builtin
    assert p.sft.lora.active(p.model) and p.grpo.lora.active(p.model)
    assert p.grpo.use_vllm and p.grpo.vllm_mode == "colocate"
    assert p.profile == "profiles/gpu-qwen2.5-0.5b.yaml" and p.model.chat_template_mode == "auto"


def test_a_profile_holds_only_what_it_changes(params_file):
    """A profile is merged over params.yaml key by key: what it sets wins, everything else is params.yaml's."""
    base = load_params(params_file)
    assert base.profile == "profiles/builtin-tiny.yaml"  # params.yaml's default, which changes nothing
    overlay = params_file.parent / "profiles" / "small.yaml"
    overlay.write_text("sft:\n  max_steps: 7\n  lora:\n    r: 4\nmodel:\n  chat_template: off\n")
    p = load_params(overlay)
    assert (p.sft.max_steps, p.sft.lora.r, p.model.chat_template_mode) == (7, 4, "off")
    assert p.sft.lora.alpha == base.sft.lora.alpha and p.sft.learning_rate == base.sft.learning_rate
    assert p.grpo == base.grpo and p.profile == "profiles/small.yaml"
    # the same profile selected in params.yaml, or with --set profile=...
    _edit(params_file, lambda r: r.update(profile="profiles/small.yaml"))
    assert load_params(params_file) == p
    _edit(params_file, lambda r: r.update(profile="profiles/builtin-tiny.yaml"))
    assert load_params(params_file, ["profile=profiles/small.yaml"]) == p
    # overrides apply over the profile
    assert load_params(overlay, ["sft.max_steps=9"]).sft.max_steps == 9


@pytest.mark.parametrize(
    "overlay, message",
    [
        ("sft:\n  max_stepz: 7\n", r"small\.yaml: unknown key sft\.max_stepz"),  # a typo names the profile
        ("nosuch:\n  a: 1\n", r"small\.yaml: unknown key nosuch"),
        ("sft: 3\n", r"small\.yaml: sft must be a mapping"),
        ("profile: profiles/builtin-tiny.yaml\n", r"small\.yaml: a profile cannot select another profile"),
        ("sft:\n  max_steps: 0\n", r"small\.yaml: sft\.max_steps must be >= 1"),
        ("[1, 2]\n", r"small\.yaml: must be a mapping of sections"),
    ],
)
def test_a_bad_profile_is_rejected_naming_the_profile(params_file, overlay, message):
    path = params_file.parent / "profiles" / "small.yaml"
    path.write_text(overlay)
    with pytest.raises(ParamsError, match=message):
        load_params(path)


def test_a_bad_value_is_named_with_the_file_or_override_that_sets_it(params_file):
    """Under a profile, a value params.yaml sets is params.yaml's fault, one the profile sets the profile's, one a
    --set gives the override's."""
    profile = params_file.parent / "profiles" / "small.yaml"
    profile.write_text("sft:\n  max_steps: 5\n  learning_rate: 0.001\n")
    _edit(params_file, lambda r: r["grpo"].update(learning_rate=-1.0))
    with pytest.raises(ParamsError, match=r"^\S*params\.yaml: grpo\.learning_rate must be > 0"):
        load_params(profile)
    _edit(params_file, lambda r: r["grpo"].update(learning_rate=0.001))
    profile.write_text("sft:\n  max_steps: 5\n  learning_rate: -0.5\n")
    with pytest.raises(ParamsError, match=r"^\S*small\.yaml: sft\.learning_rate must be > 0"):
        load_params(profile)
    with pytest.raises(ParamsError, match=r"^--set sft\.max_steps: sft\.max_steps must be >= 1"):
        load_params(params_file, ["sft.max_steps=0"])


def test_a_missing_profile_or_one_outside_a_project_fails_clearly(params_file, tmp_path_factory):
    _edit(params_file, lambda r: r.update(profile="profiles/nope.yaml"))
    with pytest.raises(ParamsError, match=r"params\.yaml: profile 'profiles/nope\.yaml' is not a file"):
        load_params(params_file)
    stray = tmp_path_factory.mktemp("elsewhere") / "profile.yaml"
    stray.write_text("sft:\n  max_steps: 7\n")
    with pytest.raises(ParamsError, match=r"a profile is merged over the project's params\.yaml, and none was found"):
        load_params(stray)


def test_dvc_records_a_run_only_with_the_profile_params_yaml_selects(params_file, monkeypatch):
    from tasks.lineage import Lineage

    (params_file.parent / ".dvc").mkdir()
    (params_file.parent / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(params_file.parent)
    assert Lineage.for_params("params.yaml").active
    assert Lineage.for_params("profiles/builtin-tiny.yaml").active  # the selected one, named explicitly
    assert not Lineage.for_params("profiles/cpu-smollm2-135m.yaml").active
    assert not Lineage.for_params("params.yaml", ["sft.max_steps=3"]).active
    _edit(params_file, lambda r: r.update(profile="profiles/cpu-smollm2-135m.yaml"))
    assert Lineage.for_params("params.yaml").active and Lineage.for_params("profiles/cpu-smollm2-135m.yaml").active
