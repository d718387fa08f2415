"""Reliability and security checks that need no temporary repository: the checkpoint bookkeeping, non-finite
rewards in a real GRPO step, params that must fail before any work, models that must not run code, servers on
127.0.0.1, credentials kept out of what is printed. docs/RELIABILITY.md lists each fault and its test."""

import errno
import json
import logging
import math
import os
import pickle
import re
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from project import VENV_BIN, copy_params, grpo_step, tiny_params

from tasks import tracking
from tasks.checkpoints import COMPLETE_MARKER, FINGERPRINT_FILE, Checkpoints, SaveFailed, stage_fingerprint
from tasks.config import Params, ParamsError, load_params
from tasks.data import read_jsonl
from tasks.modeling import build_word_tokenizer, load_base_model, load_pretrained

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny(tmp_path):
    """Params for a tiny project in tmp_path, with its data generated."""
    return lambda *extra: tiny_params(tmp_path, *extra)


# --- which checkpoint a run resumes from ------------------------------------------------------------------


def _checkpoint(folder: Path, step: int, marker: dict | None) -> None:
    """A checkpoint-<step> folder as the Trainer leaves it; marker None: it was never completed."""
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"\0" * 16)
    if marker is not None:
        (path / COMPLETE_MARKER).write_text(json.dumps(marker))


@pytest.mark.parametrize(
    "folder_fp, found, resumed, left, logged",
    [
        # nothing yet: start from step 0
        (None, [], None, [], None),
        # two complete checkpoints: the newest
        ("fp", [(10, "fp"), (20, "fp")], 20, [10, 20], None),
        # the newest was cut short (no marker): skipped, removed, and the one before resumed
        ("fp", [(10, "fp"), (20, None)], 10, [10], "skipping checkpoint-20: incomplete"),
        # only a half-written one: start from step 0
        ("fp", [(10, None)], None, [], "skipping checkpoint-10: incomplete"),
        # a marker that names another step (copied from elsewhere): not complete
        ("fp", [(10, {"step": 5, "fingerprint": "fp"})], None, [], "skipping checkpoint-10"),
        # a marker from other params in this folder: not complete
        ("fp", [(10, "other")], None, [], "skipping checkpoint-10"),
        # the folder holds checkpoints of other params or data: all removed, start from step 0
        ("other", [(10, "other"), (20, "other")], None, [], "not resuming from"),
    ],
)
def test_resume_point(tmp_path, caplog, folder_fp, found, resumed, left, logged):
    caplog.set_level(logging.INFO, logger="tasks.checkpoints")
    ckpts = Checkpoints(tmp_path / "models", "sft", "fp", max_steps=100)
    if folder_fp is not None:
        ckpts.dir.mkdir(parents=True)
        (ckpts.dir / FINGERPRINT_FILE).write_text(json.dumps({"fingerprint": folder_fp}))
    for step, marker in found:
        _checkpoint(ckpts.dir, step, {"step": step, "fingerprint": marker} if isinstance(marker, str) else marker)

    point = ckpts.resume_point()
    assert point == (None if resumed is None else ckpts.dir / f"checkpoint-{resumed}")
    assert sorted(int(d.name.split("-")[1]) for d in ckpts.dir.glob("checkpoint-*")) == left
    assert json.loads((ckpts.dir / FINGERPRINT_FILE).read_text())["fingerprint"] == "fp"
    if logged:
        assert logged in caplog.text
    if resumed is not None:
        assert f"sft: resuming from checkpoint-{resumed} (step {resumed} of 100)" in caplog.text


@pytest.mark.parametrize(
    "stage, change, same",
    [
        ("sft", "sft.learning_rate=0.0031", False),  # the stage's own section
        ("sft", "model.hidden_size=64", False),  # a section dvc.yaml gives the stage (read from dvc.yaml)
        ("sft", "seed=7", False),  # the seed
        ("sft", "grpo.temperature=0.9", True),  # another stage's section
        ("sft", "evaluate.batch_size=3", True),  # another stage's section
        ("grpo", "reward.mode=binary", False),  # the reward GRPO optimises
        ("grpo", "model.trust_remote_code=true", False),  # GRPO loads the SFT model with the model section
        ("grpo", "launcher.num_processes=2", False),  # how many processes share each batch
        ("grpo", "sft.max_steps=7", True),  # SFT's params reach GRPO only through the SFT model's bytes
    ],
)
def test_checkpoints_are_tied_to_the_stage_params_and_inputs(tiny, stage, change, same):
    p = tiny()
    inputs = [p.paths.train_file]
    assert (stage_fingerprint(tiny(change), stage, inputs) == stage_fingerprint(p, stage, inputs)) is same
    # and to the input files' bytes
    other = Path(p.paths.train_file).with_name("other.jsonl")
    other.write_text(Path(p.paths.train_file).read_text().replace("5]", "4]", 1))
    assert stage_fingerprint(p, stage, [other]) != stage_fingerprint(p, stage, inputs)


# --- NaN and inf in the reward path --------------------------------------------------------------------------


def test_non_finite_rewards_in_a_real_grpo_step_are_counted_and_their_groups_get_zero_advantage(tiny, caplog):
    """A reward function that returns NaN for one completion and -inf for another, in a real GRPO step of three
    groups: both are counted and logged, their groups get zero advantage, the third group learns, nothing in the
    update is NaN."""
    caplog.set_level(logging.WARNING, logger="tasks.grpo_trainer")
    # per completion, by position in the step: group 1 has a NaN, group 2 a -inf, group 3 plain 1/0 rewards
    values = [math.nan, 1, 0, 1] + [0, 1, -math.inf, 1] + [1, 0, 1, 0]

    def nan_inf(completions, **kwargs):
        return values[: len(completions)]

    # min_unique_ratio 0: this test is about rewards, not diversity
    step = grpo_step(tiny("grpo.prompts_per_step=3"), nan_inf, group=4, prompts=3, min_unique_ratio=0.0)

    assert all(math.isfinite(a) for a in step["used"])
    assert step["used"][:8] == [0.0] * 8  # the groups with a NaN and a -inf
    assert step["used"][8:] == pytest.approx([1.0, -1.0, 1.0, -1.0], abs=1e-6)  # the third group still learns
    logged = step["log"]
    assert logged["reward_stats/non_finite_rewards"] == 2.0
    assert math.isfinite(logged["loss"]) and math.isfinite(logged["grad_norm"]) and logged["grad_norm"] > 0
    assert "grpo step 1: 2 completion(s) got a non-finite reward (from nan_inf)" in caplog.text
    assert step["finite"] and step["moved"]


# --- params fail before any work ------------------------------------------------------------------------------

BAD_PARAMS = [
    # top level: numpy's seed range; a profile that is not a file
    ("seed=-1", r"seed must be in \[0, 2\*\*32\)"),
    ("profile=profiles/nope.yaml", r"profile 'profiles/nope\.yaml' is not a file"),
    # model: a chat-template mode that does not exist
    ("model.chat_template=sometimes", r"model\.chat_template must be auto, on or off"),
    # paths: an empty path would write into the project root
    ("paths.models_dir=' '", r"paths\.models_dir must not be empty"),
    # task: scores out of order
    ("task.min_score=5", r"task\.max_score must be greater than min_score"),
    # model: a shape the attention cannot split
    ("model.hidden_size=30", r"model\.hidden_size must be a multiple of num_heads"),
    # model: a credential in a URL (params are committed and logged)
    ("model.name_or_path=https://user:pw@example.org/m", r"model\.name_or_path holds a URL with a password"),
    # reward: an unknown mode
    ("reward.mode=dense", r"reward\.mode must be one of multi, binary, exact"),
    # reward: a negative weight rewards worse answers
    ("reward.weights.mae=-0.25", r"reward\.weights\.mae must be >= 0"),
    # reward: a positive "penalty" rewards broken output
    ("reward.structural_penalty=0.5", r"reward\.structural_penalty must be <= 0"),
    # reward: NaN passes every "<" check, so it is refused by type
    ("reward.max_mae=.nan", r"reward\.max_mae must be a finite number"),
    # validate: a fraction above 1
    ("validate.max_unseen_score_fraction=1.5", r"validate\.max_unseen_score_fraction must be in \[0, 1\]"),
    # sft: no checkpoints at all would be step 0
    ("sft.save_steps=0", r"sft\.save_steps must be >= 1"),
    # sft: a scheduler transformers does not know, or needs arguments for
    ("sft.lr_scheduler=cosine_with_min_lr", r"sft\.lr_scheduler must be one of linear, cosine"),
    # sft: infinity passes "> 0"
    ("sft.learning_rate=.inf", r"sft\.learning_rate must be a finite number"),
    # sft.lora: a zero scale
    ("sft.lora.alpha=0", r"sft\.lora\.alpha must be >= 1"),
    # grpo: a group of one has no relative advantage
    ("grpo.num_generations=1", r"grpo\.num_generations must be >= 2"),
    ("grpo.save_steps=-5", r"grpo\.save_steps must be >= 1"),
    ("grpo.lora.dropout=1.0", r"grpo\.lora\.dropout must be in \[0, 1\)"),
    # evaluate
    ("evaluate.max_new_tokens=0", r"evaluate\.max_new_tokens must be >= 1"),
    # tracking
    ("tracking.experiment_name=' '", r"tracking\.experiment_name must not be empty"),
    # register: a metric evaluate does not compute, and a negative margin
    ("register.primary_metric=loss", r"register\.primary_metric must be one of"),
    ("register.min_improvement=-0.1", r"register\.min_improvement must be >= 0"),
    # launcher: a process count that does not divide the global batch, or a missing accelerate config
    ("launcher.num_processes=3", r"sft\.batch_size must be divisible by launcher\.num_processes \(3\)"),
    ("launcher.config_file=configs/accelerate/none.yaml", r"launcher\.config_file .* is not a file"),
    # grpo's collapse guard and vLLM settings
    ("grpo.collapse_low_diversity_frac=0", r"grpo\.collapse_low_diversity_frac must be in \(0, 1\]"),
    ("grpo.vllm_mode=remote", r"grpo\.vllm_mode must be colocate or server"),
    # data: what to do with unpinned data is pin or refuse, nothing else
    ("data.pin=ignore", r"data\.pin must be one of pin, refuse"),
    # notify: a block is named <type-slug>/<name>
    ("notify.block=my-slack", r"notify\.block must be <block-type-slug>/<block-name>"),
]


@pytest.mark.parametrize("override, message", BAD_PARAMS)
def test_invalid_params_fail_with_the_key(override, message):
    with pytest.raises(ParamsError, match=message):
        load_params(ROOT / "params.yaml", [override])


def test_every_params_section_has_a_bad_value_case():
    sections = {f.name for f in Params.__dataclass_fields__.values()}
    covered = {override.split("=")[0].split(".")[0] for override, _ in BAD_PARAMS}
    assert covered == sections


def test_bad_params_stop_the_pipeline_before_any_work(tmp_path):
    """`rewardflow run` with an out-of-range value: exit 2, the key named, and nothing created (no data, no
    checkpoint, no MLflow store), no Prefect server started: Prefect, MLflow and torch are not even imported."""
    copy_params(tmp_path)
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PREFECT_API_URL", None)  # as on a fresh machine: a run would start Prefect's temporary server
    # Prefect creates its home folder when imported; every import is listed on stderr
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PYTHONPROFILEIMPORTTIME": "1"}
    started = time.perf_counter()
    result = subprocess.run(
        ["rewardflow", "run", "--set", "grpo.save_steps=0"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "grpo.save_steps must be >= 1" in result.stderr
    # no data, store or Prefect home
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "profiles"]
    imported = re.findall(r"^import time:.*\|\s+(\S+)$", result.stderr, flags=re.M)
    assert "tasks.config" in imported  # the listing is real
    assert not [m for m in imported if m.split(".")[0] in ("prefect", "mlflow", "torch")]  # no server, no store
    assert time.perf_counter() - started < 60


def test_a_retraining_firing_before_the_data_exists_goes_on_to_the_pipeline(tmp_path, monkeypatch):
    """On a fresh clone the data files are not there yet (the pipeline writes the embedded ones, as `rewardflow
    run` does): the firing's check for new data says there is something to train on, instead of failing to hash a
    missing file."""
    from flows.retrain import nothing_new

    copy_params(tmp_path)
    monkeypatch.chdir(tmp_path)
    p = load_params(tmp_path / "params.yaml")
    assert not any(Path(f).exists() for f in p.paths.data_files().values())
    assert nothing_new(p) is None


# --- models never run code they bring -----------------------------------------------------------------------


def test_a_pickled_checkpoint_is_never_unpickled(tmp_path):
    """A model folder with pytorch_model.bin (a pickle that would create a file when loaded) and no safetensors:
    loading refuses it, and the payload never runs."""
    from transformers import LlamaConfig

    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    folder = tmp_path / "pickled"
    build_word_tokenizer(["a", "b"]).save_pretrained(folder)
    LlamaConfig(
        vocab_size=20, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2
    ).save_pretrained(folder)
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"weight": Payload()}))
    with pytest.raises(OSError, match=r"cannot load model .*no file named model\.safetensors"):
        load_pretrained(folder)
    assert not marker.exists()


def test_remote_code_is_off_unless_params_turn_it_on(tmp_path):
    """A model folder whose config points at Python files of its own (auto_map): with the default params the code
    is not imported and loading says trust_remote_code is needed."""
    assert load_params(ROOT / "params.yaml").model.trust_remote_code is False
    marker = tmp_path / "remote-code-ran"
    folder = tmp_path / "custom"
    build_word_tokenizer(["a", "b"]).save_pretrained(folder)
    auto_map = {"AutoConfig": "configuration_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps({"model_type": "evilcustom", "auto_map": auto_map}))
    for module in ("configuration_evil", "modeling_evil"):
        (folder / f"{module}.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        load_pretrained(folder, trust_remote_code=load_params(ROOT / "params.yaml").model.trust_remote_code)
    assert not marker.exists()


# --- servers bind to 127.0.0.1 -------------------------------------------------------------------------------


def test_servers_the_project_starts_default_to_localhost():
    """`make ui` passes --host 127.0.0.1 to MLflow, and `prefect server start` (README) binds Prefect's default
    host, 127.0.0.1. Started for real and their sockets read back: the temporary Prefect server of `rewardflow run`
    (test_reliability_pipeline.py) and `mlflow server --host 127.0.0.1` (test_reliability_registry.py)."""
    from prefect.settings import get_current_settings

    command = subprocess.run(["make", "-n", "ui"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    ui = next(line for line in command.splitlines() if " ui " in line).split()
    assert ui[ui.index("--host") + 1] == "127.0.0.1"
    assert get_current_settings().server.api.host == "127.0.0.1"


# --- disk full while saving the model ------------------------------------------------------------------------


def test_disk_full_while_saving_the_model_keeps_the_previous_one(tiny):
    """The stage's final save hits a file-size limit (EFBIG, as a full disk gives ENOSPC) halfway through the
    weights: the previous model is byte for byte intact, no temporary folder is left, the complete checkpoint is
    kept for the re-run, and the message says so."""
    p = tiny()
    model, tokenizer = load_base_model(p.model, (r["prompt"] for r in read_jsonl(p.paths.train_file)), p.seed)
    ckpts = Checkpoints(p.paths.models_dir, "sft", "fp", max_steps=7)
    ckpts.save(model, tokenizer, {"version": 1})
    before = {f.name: f.read_bytes() for f in ckpts.artefact.iterdir()}
    _checkpoint(ckpts.dir, 7, {"step": 7, "fingerprint": "fp"})
    with torch.no_grad():
        for tensor in model.parameters():
            tensor.mul_(2)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, hard))  # the weights are ~50 kB
    try:
        with pytest.raises(SaveFailed) as err:
            ckpts.save(model, tokenizer, {"version": 2})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    message = str(err.value)
    assert message.startswith(f"sft: could not write {ckpts.artefact}: ") and "File too large" in message
    assert f"the previous {ckpts.artefact} is unchanged" in message
    assert "the last complete checkpoint, checkpoint-7, is kept and a re-run resumes from it" in message
    assert {f.name: f.read_bytes() for f in ckpts.artefact.iterdir()} == before
    assert sorted(d.name for d in ckpts.artefact.parent.iterdir()) == [".checkpoints", "sft"]  # no temporary left
    assert ckpts.complete() == [ckpts.dir / "checkpoint-7"]


@pytest.mark.parametrize(
    "error, cause, todo",
    [
        # a full disk: the free space is stated
        (OSError(errno.ENOSPC, "No space left on device"), r"\(the disk is full: \d+ MiB free there\)", "Free some"),
        # safetensors wraps the OS error in its own exception type, with the errno in the message
        (
            RuntimeError('Error while serializing: IoError(Os { code: 122, kind: QuotaExceeded, message: "x" })'),
            r"\(the disk quota is exceeded: \d+ MiB free there\)",
            "raise the quota",
        ),
        # a read-only file system: nothing about space at all
        (OSError(errno.EROFS, "Read-only file system"), r"\(the file system is read-only\)", "writable folder"),
        (PermissionError(errno.EACCES, "Permission denied"), r"\(no permission to write there\)", "writable"),
        # an error that is no I/O error: named as what it is
        (TypeError("cannot pickle 'generator' object"), r"cannot pickle 'generator' object \(TypeError\)", "Fix"),
    ],
)
def test_a_failed_write_is_reported_as_what_happened(tmp_path, error, cause, todo):
    ckpts = Checkpoints(tmp_path / "models", "grpo", "fp", max_steps=7)
    message = str(ckpts.save_failed(error, ckpts.dir / "checkpoint-5"))
    assert re.search(cause, message), message
    assert todo in message and ("disk" in message) == ("disk" in cause)  # a full disk only when it is one
    assert "no complete checkpoint exists yet, so a re-run starts from step 0" in message


# --- credentials stay out of what is printed -------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri, shown, plain",
    [
        # the example
        ("http://user:secret@host:5000", "http://user:***@host:5000", "http://host:5000"),
        # a password with an (unescaped) @ and a path
        (
            "https://u:p@ss@mlflow.example.org/api",
            "https://u:***@mlflow.example.org/api",
            "https://mlflow.example.org/api",
        ),
        # a token in the query string is hidden when shown
        ("https://host/?token=abc&x=1", "https://host/?token=***&x=1", "https://host/?token=abc&x=1"),
        # nothing to hide
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("sqlite:////work/mlflow.db", "sqlite:////work/mlflow.db", "sqlite:////work/mlflow.db"),
    ],
)
def test_tracking_uris_are_shown_without_passwords(uri, shown, plain, monkeypatch):
    assert tracking.redact(uri) == shown
    assert tracking.redact(f"cannot reach {uri} (refused)") == f"cannot reach {shown} (refused)"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert tracking.tracking_uri() == plain  # what the run summary prints


def test_no_credentials_in_the_committed_params():
    text = (ROOT / "params.yaml").read_text()
    assert not re.search(r"(?i)(password|secret|token)\s*:", text)
    assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text)
    raw = yaml.safe_load(text)
    assert "uri" not in json.dumps(raw["tracking"]).lower()  # the tracking URI lives in the environment only
