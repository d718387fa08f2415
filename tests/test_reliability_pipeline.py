"""Crashes and bad input against the real pipeline, in a temporary git + DVC copy of the project with tiny params:
a pipeline run on bad data, `kill -9` of `dvc repro` during SFT and of GRPO, a disk that refuses the checkpoint.
Tests in this module run in order on one project."""

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from project import make_repo, set_params, sh
from safetensors.numpy import load_file

from tasks.checkpoints import COMPLETE_MARKER
from tasks.config import load_params

pytestmark = [pytest.mark.slow, pytest.mark.ordered]

SFT_STEPS, SFT_SAVE = 150, 10
GRPO_STEPS, GRPO_SAVE = 12, 3


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    repo, env = make_repo(tmp_path_factory.mktemp("reliability") / "repo")
    # enough steps that a kill lands mid-training, and a checkpoint every few of them
    set_params(
        repo,
        {
            "sft": {"max_steps": SFT_STEPS, "save_steps": SFT_SAVE, "logging_steps": SFT_SAVE},
            "grpo": {"max_steps": GRPO_STEPS, "save_steps": GRPO_SAVE},
        },
    )
    env = {k: v for k, v in env.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")}
    return repo, env


def _tree_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            digest.update(str(f.relative_to(folder)).encode() + f.read_bytes())
    return digest.hexdigest()


def _kill_at_first_checkpoint(command, repo, env, stage) -> tuple[int, int]:
    """Start command, SIGKILL its whole process group once a checkpoint of stage is complete; (pid, that step)."""
    folder = repo / "models" / ".checkpoints" / stage
    process = subprocess.Popen(
        command, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while not list(folder.glob(f"checkpoint-*/{COMPLETE_MARKER}")):
        assert process.poll() is None, f"{command} ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    steps = [int(m.parent.name.split("-")[1]) for m in folder.glob(f"checkpoint-*/{COMPLETE_MARKER}")]
    return process.pid, max(steps)


def _plant_half_written(repo, stage, complete_step, step) -> None:
    """checkpoint-<step>, newer than the last complete one, as a kill during its write leaves it: the weights cut
    off halfway, no optimizer state, no completion marker."""
    folder = repo / "models" / ".checkpoints" / stage
    weights = (folder / f"checkpoint-{complete_step}" / "model.safetensors").read_bytes()
    (folder / f"checkpoint-{step}").mkdir()
    (folder / f"checkpoint-{step}" / "model.safetensors").write_bytes(weights[: len(weights) // 2])


def _logged_steps(report: Path) -> list[int]:
    return [e["step"] for e in json.loads(report.read_text())["logs"] if "loss" in e]


def _same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return x.keys() == y.keys() and all((x[k] == y[k]).all() for k in x)


def _reference(repo, stage, tmp_path):
    """The same stage, uninterrupted, in-process, with its outputs elsewhere."""
    from tasks.training import run_grpo, run_sft

    models, reports = tmp_path / "models", tmp_path / "reports"
    if stage == "grpo":
        shutil.copytree(repo / "models" / "sft", models / "sft")
    p = load_params(
        repo / "params.yaml",
        [
            f"paths.train_file={repo}/data/train.jsonl",
            f"paths.heldout_file={repo}/data/heldout.jsonl",
            f"paths.models_dir={models}",
            f"paths.reports_dir={reports}",
        ],
    )
    (run_sft if stage == "sft" else run_grpo)(p)
    return models / stage


def _dvc_record(repo) -> dict[str, bytes]:
    """data.dvc and every file of the DVC cache and of the default remote (../rewardflow-dvc-storage), by path."""
    remote = repo.parent / "rewardflow-dvc-storage"
    files = {"data.dvc": (repo / "data.dvc").read_bytes()}
    for folder in (repo / ".dvc" / "cache", remote):
        files |= {str(f): f.read_bytes() for f in folder.rglob("*") if f.is_file()}
    return files


def test_a_run_on_bad_data_leaves_no_trace(project):
    """`rewardflow run` on a train file with an out-of-range score: exit 1 naming the row, and afterwards no
    checkpoint (not even a partial one), no model version, and data.dvc, dvc.lock, the DVC cache and the remote
    byte for byte as before (the data gate runs before the changed file is pinned). The temporary Prefect server
    the run started listened on 127.0.0.1 only.

    Slow: the run starts Prefect's temporary server and the data gate before it fails, while the test lists the
    run's listening sockets every 0.2 s.
    """
    repo, env = project
    train = repo / "data" / "train.jsonl"
    good = train.read_bytes()
    rows = good.decode().splitlines()
    row = json.loads(rows[1])
    row["scores"] = [0, 0, 0, 0]
    rows[1] = json.dumps(row)
    train.write_text("\n".join(rows) + "\n")
    lock = (repo / "dvc.lock").read_bytes()
    record = _dvc_record(repo)
    try:
        run = subprocess.Popen(
            ["rewardflow", "run"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        listening = set()
        while run.poll() is None:  # watch the sockets of the run's temporary Prefect server
            try:
                for child in psutil.Process(run.pid).children(recursive=True):
                    listening |= {c.laddr.ip for c in child.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
            except psutil.Error:
                pass
            time.sleep(0.2)
        out, err = run.communicate()
    finally:
        train.write_bytes(good)
    assert run.returncode == 1, out + err
    assert "pipeline failed" in err and "train.jsonl:2" in err and "scores_min" in err, err[-3000:]
    assert "Traceback" not in out + err, err[-3000:]  # one message: Prefect's engines log none for bad data
    assert not (repo / "models").exists()  # no checkpoint, no half-written one
    assert (repo / "dvc.lock").read_bytes() == lock
    assert _dvc_record(repo) == record  # data.dvc, every file of the DVC cache and of the remote
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}", f"sqlite:///{repo / 'mlflow.db'}")
    assert client.search_registered_models() == []  # no model version (and no registry lock left either)
    assert listening == {"127.0.0.1"}


def test_kill_9_of_dvc_repro_during_sft_then_repro_resumes(project, tmp_path):
    """SIGKILL to `dvc repro sft` (DVC and the training process under it) once a checkpoint is complete; a newer,
    half-written checkpoint on top. The next `dvc repro` gets past DVC's stale lock, skips the half-written
    checkpoint, resumes from the complete one and ends with every step, bit-identical to an uninterrupted run."""
    repo, env = project
    pid, step = _kill_at_first_checkpoint(["dvc", "repro", "sft"], repo, env, "sft")
    assert step < SFT_STEPS
    assert not (repo / "models" / "sft").exists()
    # what the killed DVC left behind: its process still registered as the holder of the stage's outputs
    rwlock = json.loads((repo / ".dvc" / "tmp" / "rwlock").read_text())
    assert {entry["pid"] for entry in rwlock["write"].values()} == {pid}
    _plant_half_written(repo, "sft", step, step + SFT_SAVE)

    rerun = sh(["dvc", "repro", "sft"], repo, env)
    output = rerun.stdout + rerun.stderr
    assert f"sft: skipping checkpoint-{step + SFT_SAVE}: incomplete" in output
    assert f"sft: resuming from checkpoint-{step} (step {step} of {SFT_STEPS})" in output
    report = repo / "reports" / "sft_logs.json"
    summary = json.loads(report.read_text())["summary"]
    assert (summary["resumed_from_step"], summary["steps"]) == (step, SFT_STEPS)
    assert _logged_steps(report) == list(range(SFT_SAVE, SFT_STEPS + 1, SFT_SAVE))  # each step once, none lost
    assert not (repo / "models" / ".checkpoints" / "sft").exists()  # cleaned up after the model was saved
    assert "sft" not in json.loads(sh(["dvc", "status", "--json"], repo, env).stdout)
    assert _same_weights(repo / "models" / "sft", _reference(repo, "sft", tmp_path))


def test_kill_9_of_grpo_then_rerun_resumes(project, tmp_path):
    repo, env = project
    _, step = _kill_at_first_checkpoint(["rewardflow", "grpo"], repo, env, "grpo")
    assert step < GRPO_STEPS
    _plant_half_written(repo, "grpo", step, step + GRPO_SAVE)

    rerun = sh(["rewardflow", "grpo"], repo, env)
    assert f"grpo: skipping checkpoint-{step + GRPO_SAVE}: incomplete" in rerun.stderr
    assert f"grpo: resuming from checkpoint-{step} (step {step} of {GRPO_STEPS})" in rerun.stderr
    report = repo / "reports" / "grpo_logs.json"
    summary = json.loads(report.read_text())["summary"]
    assert (summary["resumed_from_step"], summary["steps"]) == (step, GRPO_STEPS)
    assert _logged_steps(report) == list(range(1, GRPO_STEPS + 1))
    assert not (repo / "models" / ".checkpoints").exists()
    assert _same_weights(repo / "models" / "grpo", _reference(repo, "grpo", tmp_path))


def _file_size_limit(limit: int):
    """In the child: writes past `limit` bytes fail with EFBIG, as a full disk fails them with ENOSPC."""

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return apply


def _sft_under_20_kb(cwd, env) -> subprocess.CompletedProcess:
    """`rewardflow sft` in cwd with a 20 kB file-size limit: the kernel cuts off any file written past it."""
    return subprocess.run(
        ["rewardflow", "sft"], cwd=cwd, env=env, capture_output=True, text=True, preexec_fn=_file_size_limit(20_000)
    )


def test_disk_full_while_writing_a_checkpoint(project, tmp_path):
    """The kernel refuses to write the first checkpoint past 20 kB: the stage fails with a message that says what
    failed, what is intact and what to do; the previous models/sft is untouched; the cut-off checkpoint has no
    marker, so no run will ever resume from it.

    In a copy of the project without DVC (params, data, models): in a DVC project the stage first checks the data
    pin, and DVC's own state files (SQLite, 30-140 kB) are cut off by the same limit before any checkpoint is."""
    repo, env = project
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy2(repo / "params.yaml", plain)
    for folder in ("profiles", "data", "models"):
        shutil.copytree(repo / folder, plain / folder)
    before = _tree_hash(repo / "models" / "sft")
    assert _tree_hash(plain / "models" / "sft") == before
    run = _sft_under_20_kb(plain, env)
    assert run.returncode == 1, run.stderr[-3000:]
    message = run.stderr
    assert f"error in stage sft: sft: could not write models/.checkpoints/sft/checkpoint-{SFT_SAVE}" in message
    # what happened, from the error: the file-size limit, not a guess at a full disk
    assert "File too large" in message and "(the file-size limit (`ulimit -f`) was reached: 20000 bytes)" in message
    assert "disk" not in message and message.rstrip().endswith("Raise the limit and re-run.")
    assert "the previous models/sft is unchanged" in message and "a re-run starts from step 0" in message
    assert _tree_hash(plain / "models" / "sft") == before  # the output DVC records, byte for byte
    cut = plain / "models" / ".checkpoints" / "sft" / f"checkpoint-{SFT_SAVE}"
    assert cut.is_dir() and not (cut / COMPLETE_MARKER).exists()


def test_disk_full_while_dvc_checks_the_data_pin(project):
    """The same 20 kB limit in the DVC project: DVC's own state files (SQLite) are cut off while the stage compares
    the data with data.dvc. One message naming DVC and what to do, exit 1, no traceback, nothing trained."""
    repo, env = project
    before = _tree_hash(repo / "models" / "sft")
    run = _sft_under_20_kb(repo, env)
    assert run.returncode == 1, run.stderr[-3000:]
    assert "error in stage sft: could not compare the data files with their DVC pin: DVC failed (" in run.stderr
    assert "free space or remove the damaged state, then run again" in run.stderr, run.stderr[-3000:]
    assert "Traceback" not in run.stderr and _tree_hash(repo / "models" / "sft") == before
