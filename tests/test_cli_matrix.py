"""Every command of the real command line against what a user can get wrong: a params file missing, malformed,
with an unknown key or a negative learning rate; a train file with invalid JSON on line 7 or empty; the MLflow
tracking server or the Prefect server down. Each cell: the exit status (2 usage/params, 1 a failed operation),
one message naming the file, line, key or service, and no traceback.

Slow: one `rewardflow` process per cell (~150); the data cells import the data gate (Great Expectations) or the
pipeline's libraries.
"""

import os
import re
import subprocess

import click
import pytest
import typer
from project import ROOT, VENV_BIN, copy_params, free_port, make_repo

from flows.cli import app
from tasks.stages import STAGES

pytestmark = pytest.mark.slow

# the command lines of the matrix, one per command (a group's subcommands each their own)
COMMANDS = {
    "params": ["params"],
    "validate": ["validate"],
    "run": ["run"],
    "retrain": ["retrain"],
    "promote": ["promote", "--version", "1"],
    "rollback": ["rollback"],
    "status": ["status"],
    "lineage": ["lineage", "1"],
    "sweep": ["sweep", "-S", "grpo.temperature=0.8,0.9", "--seeds", "1"],
    "serve": ["serve"],
    "data generate": ["data", "generate"],
    "data split": ["data", "split", "--force"],
    "dvc-deps": ["dvc-deps"],
    **{name: [name] for name in STAGES if name != "validate"},
}
TAKES_NO_PARAMS = {"dvc-deps"}  # it reads dvc.yaml and the sources, never params.yaml
# the commands that read the data files (`data generate` writes them; the others read the registry or nothing)
READ_DATA = {"validate", "run", "retrain", "sweep", "data split", *STAGES}
NEED_MLFLOW = {"run", "retrain", "promote", "rollback", "status", "lineage"}
NEED_PREFECT = {"run", "retrain", "serve", "promote", "rollback"}  # the commands that run flows


def test_the_matrix_names_every_command_of_the_cli():
    group = typer.main.get_command(app)
    ctx = click.Context(group)
    names = set()
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        subcommands = command.list_commands(click.Context(command)) if hasattr(command, "list_commands") else []
        names |= {f"{name} {sub}" for sub in subcommands} or {name}
    assert names == set(COMMANDS)


def _text_with(params: str, old: str, new: str) -> str:
    assert old in params, old
    return params.replace(old, new, 1)


def _params_faults() -> dict:
    """fault -> (params.yaml text or None for a missing file, expected message)"""
    text = (ROOT / "params.yaml").read_text()
    sft = text.index("\nsft:\n")
    rate = re.compile(r"learning_rate: \S+").search(text, sft)
    return {
        "missing": (None, "params.yaml: params file not found (run from the project root or pass --params)"),
        "malformed": (text + "\nsft: [unclosed\n", "params.yaml: not valid YAML: while parsing a flow sequence"),
        "unknown key": (
            _text_with(text, "\nsft:\n", "\nsft:\n  learning_ratee: 0.1\n"),
            "params.yaml: unknown key sft.learning_ratee (known keys: ",
        ),
        "negative learning rate": (
            text[: rate.start()] + "learning_rate: -0.001" + text[rate.end() :],
            "params.yaml: sft.learning_rate must be > 0 (got -0.001)",
        ),
    }


PARAMS_CELLS = [(c, f) for c in COMMANDS if c not in TAKES_NO_PARAMS for f in _params_faults()]


def _run(args, cwd, env):
    result = subprocess.run(["rewardflow", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return result.returncode, result.stdout + result.stderr


def _one_clean_message(output: str, expected: str) -> None:
    assert expected in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]


@pytest.mark.parametrize("command, fault", PARAMS_CELLS, ids=[f"{c}-{f}" for c, f in PARAMS_CELLS])
def test_bad_params(tmp_path, command, fault):
    """Exit 2, the file and key named, before anything else happens."""
    text, expected = _params_faults()[fault]
    copy_params(tmp_path)
    if text is None:
        (tmp_path / "params.yaml").unlink()
    else:
        (tmp_path / "params.yaml").write_text(text)
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}  # it must fail before any server
    code, output = _run(COMMANDS[command], tmp_path, env)
    assert code == 2, output[-3000:]
    _one_clean_message(output, expected)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A git + DVC project with tiny params and the embedded data pinned; the local MLflow store."""
    repo, env = make_repo(tmp_path_factory.mktemp("matrix") / "repo")
    env = {k: v for k, v in env.items() if k != "MLFLOW_TRACKING_URI"}
    return repo, env


DATA_FAULTS = {
    "invalid JSON on line 7": ("line 7", "data/train.jsonl:7: not valid JSON"),
    "empty file": ("empty", "data/train.jsonl: file is empty, expected one JSON object per line"),
}
DATA_CELLS = [(c, f) for c in COMMANDS if c in READ_DATA for f in DATA_FAULTS]


@pytest.mark.parametrize("command, fault", DATA_CELLS, ids=[f"{c}-{f}" for c, f in DATA_CELLS])
def test_bad_data(project, command, fault):
    """Exit 1, the file (and line) named; the data is restored whatever happens."""
    repo, env = project
    train = repo / "data" / "train.jsonl"
    original = train.read_bytes()
    how, expected = DATA_FAULTS[fault]
    lines = original.decode().splitlines(keepends=True)
    broken = lines[:6] + ['{"prompt": "an unterminated string\n'] + lines[7:]
    train.write_text("".join(broken) if how == "line 7" else "")
    try:
        code, output = _run(COMMANDS[command], repo, env)
    finally:
        train.write_bytes(original)
    assert code == 1, output[-3000:]
    _one_clean_message(output, expected)


SERVICE_CELLS = [(c, "MLflow down") for c in COMMANDS if c in NEED_MLFLOW] + [
    (c, "Prefect down") for c in COMMANDS if c in NEED_PREFECT
]


@pytest.mark.parametrize("command, fault", SERVICE_CELLS, ids=[f"{c}-{f}" for c, f in SERVICE_CELLS])
def test_a_service_down(project, command, fault):
    """Nothing listens where MLFLOW_TRACKING_URI or PREFECT_API_URL points: exit 1 naming the server and what to
    do, within seconds, before any flow run or training starts."""
    repo, env = project
    url = f"http://127.0.0.1:{free_port()}"
    if fault == "MLflow down":
        env = {**env, "MLFLOW_TRACKING_URI": url}
        expected = f"MLflow tracking server {url} is unreachable"
    else:
        env = {**env, "PREFECT_API_URL": f"{url}/api"}
        expected = f"Prefect server {url}/api (PREFECT_API_URL) is unreachable"
    code, output = _run(COMMANDS[command], repo, env)
    assert code == 1, output[-3000:]
    _one_clean_message(output, expected)
    assert "Flow run" not in output and not (repo / "models").exists()  # refused before any flow run started
