"""One pin guard for every way to train (tasks/pinning.stage_guard): a stage command run by hand and the stages
`dvc repro` runs see the pipeline's answer to "are the data files what data.dvc pins", with real DVC and git."""

import json

import pytest
import yaml
from project import copy_params, make_repo, set_params, sh, tool_env

pytestmark = pytest.mark.slow


def _pin(repo) -> str:
    return yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"]


def _change_row(path, index, scores=None):
    lines = path.read_text().splitlines()
    row = json.loads(lines[index])
    row["scores"] = scores or [s % 5 + 1 for s in row["scores"]]
    lines[index] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")


def _cache(repo) -> set[str]:
    return {str(f.relative_to(repo)) for f in (repo / ".dvc" / "cache").rglob("*") if f.is_file()}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_repo(tmp_path_factory.mktemp("pinguard"))


def test_a_stage_run_by_hand_refuses_pins_or_gates_as_the_pipeline_does(repo):
    """`rewardflow sft` on a changed row: data.pin refuse → refused with the pipeline's message, nothing trained;
    a bad row with data.pin pin → the data gate's failure, data.dvc and the cache as they were; the good row with
    pin → pinned (data.dvc names the new content, `dvc status` clean), then trained."""
    repo, env = repo
    before, cache = (repo / "data.dvc").read_bytes(), _cache(repo)
    train = repo / "data" / "train.jsonl"
    _change_row(train, 0)

    set_params(repo, {"data": {"pin": "refuse"}})
    refused = sh(["rewardflow", "sft"], repo, env, check=False)
    assert refused.returncode == 1, refused.stderr
    assert "error in stage sft: data/train.jsonl changed since data.dvc pinned data (md5 " in refused.stderr
    assert "and data.pin is refuse: nothing was trained or registered" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr and not (repo / "models" / "sft").exists()

    set_params(repo, {"data": {"pin": "pin"}})
    original = train.read_text()
    _change_row(train, 3, scores=[9, 9, 9, 9])
    bad = sh(["rewardflow", "sft"], repo, env, check=False)
    assert bad.returncode == 1 and "scores_max" in bad.stderr and "train.jsonl:4" in bad.stderr, bad.stderr
    assert (repo / "data.dvc").read_bytes() == before and _cache(repo) == cache
    assert not (repo / "models" / "sft").exists()

    train.write_text(original)  # the first change only: valid
    pinned = sh(["rewardflow", "sft"], repo, env)
    assert "data/train.jsonl): pinned as md5 " in pinned.stderr, pinned.stderr
    assert _pin(repo) != yaml.safe_load(before)["outs"][0]["md5"] and _cache(repo) > cache
    assert json.loads(sh(["dvc", "status", "--json", "data.dvc"], repo, env).stdout) == {}
    assert (repo / "models" / "sft" / "config.json").is_file()


def test_dvc_repro_pins_changed_data_itself_and_a_stage_refuses_what_the_policy_refuses(repo):
    """`dvc repro` pins a changed row itself before its first stage (DVC's data-source check), unchecked: with
    data.pin refuse the first stage refuses the pin that differs from git's, before any training; a stage `dvc repro
    --single-item` runs on data that differs from data.dvc refuses, naming `dvc add`; with data.pin pin, the stages
    run on what DVC pinned."""
    repo, env = repo
    sh(["git", "add", "-A"], repo, env)
    # what the steps before left pinned (the first test's pin, or nothing when this test runs first) is committed
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "--allow-empty", "-qm", "pins"], repo, env)
    committed = (repo / "data.dvc").read_bytes()

    set_params(repo, {"data": {"pin": "refuse"}})
    _change_row(repo / "data" / "train.jsonl", 5)
    refused = sh(["dvc", "repro"], repo, env, check=False)
    out = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "Running stage 'sft'" not in out, out
    assert "Verifying data sources in stage: 'data.dvc'" in out and (repo / "data.dvc").read_bytes() != committed
    assert "error in stage validate: data.dvc (md5 " in out, out
    assert "differs from its committed version, and data.pin is refuse: nothing was trained" in out, out
    assert "`git checkout data.dvc && dvc checkout data.dvc`" in out, out
    assert "Traceback" not in out

    sh(["git", "checkout", "-q", "--", "data.dvc"], repo, env)  # the committed pin, and the changed row stays
    set_params(repo, {"data": {"pin": "pin"}})
    single = sh(["dvc", "repro", "--single-item", "validate"], repo, env, check=False)
    out = single.stdout + single.stderr
    assert single.returncode != 0 and (repo / "data.dvc").read_bytes() == committed, out
    assert "error in stage validate: data/train.jsonl changed since data.dvc pinned data (md5 " in out, out
    assert "a stage that `dvc repro` or `dvc exp run` runs cannot pin it" in out and "`dvc add data`" in out, out

    pinned = sh(["dvc", "repro", "validate"], repo, env)
    assert "Running stage 'validate'" in pinned.stdout and (repo / "data.dvc").read_bytes() != committed
    assert json.loads(sh(["dvc", "status", "--json", "data.dvc"], repo, env).stdout) == {}


def test_outside_a_dvc_project_refuse_means_refuse(tmp_path):
    """No DVC project, data.pin refuse: nothing pins the files, so a stage refuses to train, naming `dvc init`."""
    env = tool_env()
    copy_params(tmp_path)
    set_params(tmp_path, {"data": {"pin": "refuse"}})
    sh(["rewardflow", "data", "generate"], tmp_path, env)
    refused = sh(["rewardflow", "sft"], tmp_path, env, check=False)
    assert refused.returncode == 1, refused.stderr
    assert "is not a DVC project and data.pin is refuse: nothing pins the data files" in refused.stderr
    assert "`dvc init`" in refused.stderr and not (tmp_path / "models").exists()


def test_changed_files_are_not_taken_for_the_pin_when_the_cache_lacks_it(tmp_path, monkeypatch):
    """On a fresh clone (or with a cleared cache) DVC's status says only "not in cache" for the pinned data, whatever
    the files hold. Files as pinned are cached under the old md5; changed files stay changed: refuse refuses, and pin
    runs the data gate first (a failing gate leaves data.dvc and the cache as they were) and pins the new content
    under its own md5, never the old one."""
    import shutil

    from tasks.config import load_params
    from tasks.pinning import DataNotPinned, check_data

    repo, _env = make_repo(tmp_path)
    monkeypatch.chdir(repo)
    paths = load_params(repo / "params.yaml").paths
    old, before = _pin(repo), (repo / "data.dvc").read_bytes()
    shutil.rmtree(repo / ".dvc" / "cache")
    same = check_data(repo, paths, "pin")
    assert same.md5 == old and same.changed == () and same.message.endswith("; added to the DVC cache")

    shutil.rmtree(repo / ".dvc" / "cache")
    _change_row(repo / "data" / "train.jsonl", 0)
    with pytest.raises(DataNotPinned, match=rf"changed since data\.dvc pinned data \(md5 {old}\), and data\.pin is"):
        check_data(repo, paths, "refuse")

    def failing_gate():
        raise RuntimeError("the data gate refused it")

    with pytest.raises(RuntimeError, match="the data gate refused it"):
        check_data(repo, paths, "pin", gate=failing_gate)
    assert (repo / "data.dvc").read_bytes() == before and _cache(repo) == set()

    gated = []
    pinned = check_data(repo, paths, "pin", gate=lambda: gated.append(True))
    assert gated == [True] and pinned.changed and pinned.md5 == _pin(repo) != old
    assert "pinned as md5" in pinned.message and f"(was {old})" in pinned.message
