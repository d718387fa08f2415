"""README's "Your own data" and "Reproduce on another machine" blocks, run literally on generated data that is not
the embedded task (another prompt style, 3 items, scores 0..10), with tiny params. Tests in this module run in
order on one project: the walk-through trains it, then candidate files are checked beside it, then a clone at
another path pulls it and has nothing to re-run. (That re-running every stage at another path gives the same bytes
is tests/test_retraining.py's rebuild from a version's tags.)"""

import hashlib
import json
import random
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from project import ROOT, make_repo, set_params, sh

from tasks.stages import STAGES

pytestmark = [pytest.mark.slow, pytest.mark.ordered]

STAGE_NAMES = tuple(STAGES)
# words for scores 0..10, in order: the prompt says each item's score in words
WORDS = ("zero", "awful", "bad", "poor", "weak", "fair", "okay", "good", "great", "superb", "perfect")
ITEMS = ("speed", "tone", "fix")
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@t",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t",
}


def readme_block(name: str) -> str:
    """The fenced block right after the README's `<!-- walkthrough: name -->` marker."""
    match = re.search(rf"<!-- walkthrough: {name} -->\n```\w*\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert match, f"README.md has no block marked walkthrough: {name}"
    return match.group(1)


def run_block(block: str, cwd: Path, env: dict) -> list[tuple[str, str]]:
    """Run a README bash block as one script (a `cd` carries over, the first failing command stops it) and return
    (command, its output) for each command line."""
    marker = "@@@ "
    script = ["set -euo pipefail"]
    for line in block.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            script += [f"printf '\\n{marker}%s\\n' {shlex.quote(line)}", line]
    result = subprocess.run(
        ["bash", "-c", "\n".join(script)], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert result.returncode == 0, f"README block failed ({result.returncode}):\n{result.stdout[-6000:]}"
    chunks = result.stdout.split(f"\n{marker}")[1:]
    return [(chunk.partition("\n")[0], chunk.partition("\n")[2]) for chunk in chunks]


def outputs(steps: list[tuple[str, str]], command: str) -> list[str]:
    """The outputs of every run of a command (its line in the block starts with it), in order."""
    return [output for line, output in steps if line.startswith(command)]


def stage_statuses(output: str) -> dict[str, str]:
    """{stage: ran|skipped} from the summary table `rewardflow run` prints."""
    rows = (line.split() for line in output.splitlines())
    return {row[0]: row[1] for row in rows if len(row) >= 2 and row[0] in STAGE_NAMES and row[1] in ("ran", "skipped")}


def write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def own_data(folder: Path, n_train: int = 96, n_heldout: int = 24) -> Path:
    """Support-ticket grades, unlike the embedded reviews: train, held-out, and a held-out v2 with one label fixed."""
    rng = random.Random(7)
    rows = []
    for case in range(n_train + n_heldout):
        scores = [rng.randint(0, 10) for _ in ITEMS]
        said = " ; ".join(f"{item} {WORDS[score]}" for item, score in zip(ITEMS, scores, strict=True))
        rows.append({"prompt": f"ticket {case} : {said} . grade {' '.join(ITEMS)} 0 to 10 :", "scores": scores})
    rows[0]["scores"][0] = 10  # the top score occurs in train
    folder.mkdir(parents=True)
    write_rows(folder / "train.jsonl", rows[:n_train])
    write_rows(folder / "heldout.jsonl", rows[n_train:])
    fixed = [dict(row) for row in rows[n_train:]]
    fixed[3] = {**fixed[3], "scores": [(fixed[3]["scores"][0] + 1) % 11, *fixed[3]["scores"][1:]]}
    write_rows(folder / "heldout-v2.jsonl", fixed)
    return folder


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory):
    """A fresh clone of the project (tiny params, the embedded data pinned but absent) where the README's own-data
    walk-through ran: (repo, env, [(command, output)]).

    Slow: the README block runs as written: nine commands, two of them whole pipelines.
    """
    base = tmp_path_factory.mktemp("own-data")
    repo, env = make_repo(base / "repo", generate=False)
    env = {**env, **GIT_IDENTITY, "MY_DATA": str(own_data(base / "my-data"))}
    env.pop("MLFLOW_TRACKING_URI", None)  # the project's own store, mlflow.db
    set_params(repo, yaml.safe_load(readme_block("params")))
    sh(["git", "commit", "-qam", "tiny params"], repo, env)
    return repo, env, run_block(readme_block("own-data"), repo, env)


def test_own_data_walkthrough(walkthrough):
    """Files in place, task.* set, dvc add, run -> champion; retrain skips on unchanged data; one corrected
    held-out label re-runs only validate and evaluate."""
    repo, env, steps = walkthrough
    [check] = outputs(steps, "rewardflow validate")
    first, second = outputs(steps, "rewardflow run")
    [status], [retrain] = outputs(steps, "rewardflow status"), outputs(steps, "rewardflow retrain")
    assert "data validation passed" in check
    assert stage_statuses(first) == dict.fromkeys(STAGE_NAMES, "ran")
    assert "version 1 registered -> champion" in first
    assert "champion: version 1" in status and "data_hash=" in status
    assert "skipped: data unchanged: data hash" in retrain and "what version 1 was trained on (promoted)" in retrain
    assert stage_statuses(second) == {
        "validate": "ran",
        "sft": "skipped",
        "grpo": "skipped",
        "evaluate": "ran",
        "validation_eval": "skipped",  # it never reads the held-out file
    }
    assert "already registered as version 1" in second
    # the run used the README's task and the user's files, not the embedded task
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    task = lock["stages"]["validate"]["params"]["params.yaml"]["task"]
    assert (task["n_items"], task["min_score"], task["max_score"]) == (3, 0, 10)
    assert (repo / "data" / "heldout.jsonl").read_bytes() == (Path(env["MY_DATA"]) / "heldout-v2.jsonl").read_bytes()
    report = json.loads((repo / "reports" / "eval.json").read_text())
    assert report["grpo"]["n"] == 24
    # `data split` carved the validation split out of the user's train file: the rows its prompt hash picks
    [split] = outputs(steps, "rewardflow data split")
    mine = [json.loads(line) for line in (Path(env["MY_DATA"]) / "train.jsonl").read_text().splitlines()]
    picked = [r for r in mine if int(hashlib.sha256(r["prompt"].encode()).hexdigest()[:16], 16) < 0.1 * 2**64]
    validation = [json.loads(line) for line in (repo / "data" / "validation.jsonl").read_text().splitlines()]
    assert validation == picked and f"moved {len(picked)} of 96 rows" in split
    assert len((repo / "data" / "train.jsonl").read_text().splitlines()) == 96 - len(picked)
    assert json.loads((repo / "reports" / "validation_eval.json").read_text())["grpo"]["n"] == len(picked)
    # the built-in tokenizer spells every score of 0..10, the top one included, as one token
    tokenizer = json.loads((repo / "models" / "grpo" / "tokenizer.json").read_text())["model"]["vocab"]
    assert {str(score) for score in range(11)} <= set(tokenizer)
    assert json.loads(sh(["dvc", "status", "--json"], repo, env).stdout) == {}


def test_checking_candidate_files_leaves_the_pipeline_untouched(walkthrough, tmp_path):
    """`rewardflow validate FILE...` on a bad and a good side file: the verdicts are right, nothing the pipeline
    tracks changes, and the next run trains nothing."""
    repo, env, _ = walkthrough
    tracked = {path: md5(path) for path in (repo / "reports").rglob("*") if path.is_file()}
    lines = (Path(env["MY_DATA"]) / "train.jsonl").read_text().splitlines()
    bad = tmp_path / "candidate.jsonl"
    bad.write_text("\n".join([*lines[:4], lines[4].replace("[", "[11, ", 1), *lines[5:]]) + "\n")
    result = sh(["rewardflow", "validate", str(bad)], repo, env, check=False)
    assert result.returncode == 1
    assert f"{bad}:5" in result.stdout and "scores_count" in result.stdout
    candidate = ["rewardflow", "validate", str(Path(env["MY_DATA"]) / "train.jsonl"), "--out", str(tmp_path / "check")]
    good = sh(candidate, repo, env)
    assert "data validation passed" in good.stdout
    assert json.loads((tmp_path / "check" / "validation.json").read_text())["passed"] is True

    assert {path: md5(path) for path in (repo / "reports").rglob("*") if path.is_file()} == tracked
    assert json.loads(sh(["dvc", "status", "--json"], repo, env).stdout) == {}
    again = sh(["rewardflow", "run"], repo, env).stdout
    assert stage_statuses(again) == dict.fromkeys(STAGE_NAMES, "skipped")
    assert "already registered as version 1 (nothing changed" in again


@pytest.fixture(scope="module")
def teammate(walkthrough, tmp_path_factory):
    """The README's reproduce-elsewhere blocks: the first machine pushes to a DVC remote, a clone at another path
    pulls. The team's tracking server is the first project's MLflow store. (clone, env, [(command, output)])."""
    repo, env, _ = walkthrough
    elsewhere = tmp_path_factory.mktemp("second-machine")
    first_env = {**env, "DVC_REMOTE": str(elsewhere.parent / "team-dvc-remote")}
    run_block(readme_block("first-machine"), repo, first_env)
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    second_env = {**env, "REPO_URL": str(repo), "MLFLOW_TRACKING_URI": uri}
    steps = run_block(readme_block("second-machine"), elsewhere, second_env)
    return elsewhere / "rewardflow", second_env, steps


def test_a_clone_elsewhere_pulls_and_has_nothing_to_rerun(walkthrough, teammate):
    repo, env, _ = walkthrough
    clone, _, steps = teammate
    [repro], [run], [status] = (outputs(steps, c) for c in ("dvc repro", "rewardflow run", "rewardflow status"))
    assert "Running stage" not in repro and "Data and pipelines are up to date" in repro
    assert stage_statuses(run) == dict.fromkeys(STAGE_NAMES, "skipped")
    assert "already registered as version 1 (nothing changed" in run
    here = sh(["rewardflow", "status"], repo, env).stdout
    assert "champion: version 1" in here
    assert status.split("\n\nchallenger")[0] == here.split("\n\nchallenger")[0]
    assert clone.resolve() != repo.resolve() and (clone / "models" / "grpo" / "model.safetensors").is_file()
