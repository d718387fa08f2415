"""dvc.yaml's code dependencies are each stage's import closure (tasks/code_deps.py): checked, derived from the
source (imports inside functions, relative ones, `from package import module`), and written back without touching
the rest of the file. That DVC then re-runs exactly the stages a module edit concerns is in tests/test_dvc.py."""

import shutil

import pytest
import yaml
from project import ROOT

from tasks import code_deps


def test_dvc_yaml_lists_each_stage_import_closure():
    assert code_deps.problems() == []  # else: `rewardflow dvc-deps --write`


def test_the_evaluation_stages_import_the_metrics_and_the_training_stages_do_not():
    """The split that lets a metric's computation change without retraining: params (read by every stage) import
    the metric table, only evaluation imports the computations."""
    for stage in ("evaluate", "validation_eval"):
        assert "tasks/metrics.py" in code_deps.derived(stage)
    for stage in ("validate", "sft", "grpo"):
        deps = code_deps.derived(stage)
        assert "tasks/metrics.py" not in deps and "tasks/metric_table.py" in deps
    assert {"tasks/launcher.py", "tasks/training.py", "tasks/prompts.py"} <= set(code_deps.derived("sft"))
    assert {"tasks/reward_funcs.py", "tasks/sampling.py", "tasks/modeling.py"} <= set(code_deps.derived("grpo"))


def test_the_closure_follows_every_kind_of_import(tmp_path):
    files = {
        "tasks/__init__.py": "",
        "tasks/a.py": "import json\n\ndef f():\n    from tasks import b  # inside a function\n    return b\n",
        "tasks/b.py": "from .sub.c import VALUE  # relative\n",
        "tasks/sub/__init__.py": "",
        "tasks/sub/c.py": "import tasks.d\nVALUE = 1\n",
        "tasks/d.py": "",
        "tasks/unused.py": "import tasks.a\n",
        "flows/__init__.py": "from tasks import d\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert code_deps.closure(["tasks.a"], tmp_path) == [
        "tasks/__init__.py",
        "tasks/a.py",
        "tasks/b.py",
        "tasks/d.py",
        "tasks/sub/__init__.py",
        "tasks/sub/c.py",
    ]


@pytest.fixture
def dvc_yaml(tmp_path):
    path = tmp_path / "dvc.yaml"
    shutil.copy(ROOT / "dvc.yaml", path)
    return path


def _deps(path, stage):
    return yaml.safe_load(path.read_text())["stages"][stage]["deps"]


def test_a_missing_and_a_surplus_dep_are_named_and_write_puts_the_closure_back(dvc_yaml):
    original = dvc_yaml.read_text()
    edited = original.replace("      - tasks/metrics.py\n", "", 1)  # the first stage listing it: evaluate
    edited = edited.replace("      - tasks/training.py\n", "      - tasks/training.py\n      - tasks/sweep.py\n", 1)
    dvc_yaml.write_text(edited)
    assert code_deps.problems(dvc_yaml) == [
        "stage sft: not imported by it: tasks/sweep.py",
        "stage evaluate: missing tasks/metrics.py",
    ]
    assert code_deps.write(dvc_yaml) == ["sft", "evaluate"]
    assert code_deps.problems(dvc_yaml) == []
    assert dvc_yaml.read_text() == original  # comments, layout and the other deps as they were
    assert code_deps.write(dvc_yaml) == []


def test_write_keeps_the_other_deps_first_and_in_their_order(dvc_yaml):
    before = {name: [d for d in deps if not code_deps.is_code(d)] for name, deps in _stage_deps(dvc_yaml).items()}
    dvc_yaml.write_text(dvc_yaml.read_text().replace("      - tasks/config.py\n", ""))
    assert len(code_deps.write(dvc_yaml)) == 5
    for name, deps in _stage_deps(dvc_yaml).items():
        assert deps == before[name] + code_deps.derived(name)


def _stage_deps(path):
    return {name: stage["deps"] for name, stage in yaml.safe_load(path.read_text())["stages"].items()}
