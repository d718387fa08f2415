"""Each stage's code dependencies in dvc.yaml, derived: the project's source files its function runs, i.e. the
module of the stage's function (tasks/stages.py; with the modules of the functions it wraps), and every project
module those import, directly or through others: the import closure within tasks/ and flows/, package
`__init__.py` files included (Python runs them on import).

The closure is read from the source, every import statement counted, those inside functions too (the stages
import their heavy libraries, and some of their own modules, where they are used). So it errs on the side of
re-running: a module a stage imports but does not call in a given configuration still counts. What only routes a
command to the stage (flows/cli.py, the stage table) is not part of it: it decides which stage runs, not what the
stage computes. Data, checkpoints and params are dvc.yaml's other deps and its `params`, written by hand.

`rewardflow dvc-deps` checks dvc.yaml against the derived lists (exit 1 naming each missing or surplus file per
stage); `rewardflow dvc-deps --write` puts them there, leaving every other line of dvc.yaml as it was.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the project's own packages: their modules are code dependencies; everything else is a library
PACKAGES = ("tasks", "flows")


def module_file(module: str, root: Path = ROOT) -> Path | None:
    """The source file of a project module (a package's `__init__.py`), or None for anything else."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported(path: Path, module: str, root: Path) -> set[str]:
    """The project modules named by the import statements of one file (any depth: inside functions too)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's package
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            # `from tasks import launcher` names a module; `from tasks.config import Params` a module's attribute
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            parts = name.split(".")
            # importing a.b.c runs a, a.b and a.b.c
            found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {name for name in found if module_file(name, root) is not None}


def closure(modules: Iterable[str], root: Path = ROOT) -> list[str]:
    """The files of these project modules and of every project module they import, transitively: paths relative
    to root, sorted."""
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        module = todo.pop()
        if module in seen or module_file(module, root) is None:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # its packages' __init__.py run first
        todo += sorted(_imported(module_file(module, root), module, root))
    return sorted(str(module_file(m, root).relative_to(root)) for m in seen)


def stage_modules(stage: str) -> list[str]:
    """The modules a stage's code starts from: its function's, and those of the functions it wraps."""
    from tasks.stages import STAGES

    modules, function = [], STAGES[stage].run
    while function is not None:
        modules.append(inspect.getmodule(function).__name__)
        function = getattr(function, "__wrapped__", None)
    return modules


def derived(stage: str, root: Path = ROOT) -> list[str]:
    """The code dependencies dvc.yaml should list for a stage."""
    return closure(stage_modules(stage), root)


def is_code(dep: str) -> bool:
    """A dvc.yaml dep that is a project source file (as opposed to data, checkpoints or reports)."""
    return dep.endswith(".py") and dep.split("/")[0] in PACKAGES


def problems(dvc_file: str | Path | None = None) -> list[str]:
    """What differs between each stage's code deps in dvc.yaml and the derived ones: one line per stage naming
    the missing and the surplus files; empty when they agree."""
    from tasks.dvcfile import declared_stages
    from tasks.stages import STAGES

    found = []
    for name, stage in declared_stages(dvc_file).items():
        if name not in STAGES:
            continue  # tasks.stages.pipeline_stages reports a stage the table lacks
        declared = {dep for dep in stage.get("deps", []) if isinstance(dep, str) and is_code(dep)}
        wanted = set(derived(name))
        missing, surplus = sorted(wanted - declared), sorted(declared - wanted)
        if missing or surplus:
            said = [f"missing {', '.join(missing)}"] if missing else []
            said += [f"not imported by it: {', '.join(surplus)}"] if surplus else []
            found.append(f"stage {name}: " + "; ".join(said))
    return found


def write(dvc_file: str | Path | None = None) -> list[str]:
    """Put the derived code deps into dvc.yaml: each stage's other deps stay where they are, the code files follow
    them, sorted; comments and every other key are kept (ruamel's round trip). Returns the stages changed."""
    from ruamel.yaml import YAML

    from tasks.dvcfile import DVC_FILE
    from tasks.stages import STAGES

    path = Path(dvc_file or DVC_FILE)
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)  # dvc.yaml's own layout
    document = yaml.load(path.read_text())
    changed = []
    for name, stage in document["stages"].items():
        if name not in STAGES:
            continue
        deps = stage.setdefault("deps", [])
        code = [dep for dep in deps if isinstance(dep, str) and is_code(dep)]
        wanted = derived(name)
        if code == wanted:
            continue
        for dep in code:
            deps.remove(dep)
        deps.extend(wanted)
        changed.append(name)
    if changed:
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w") as out:
            yaml.dump(document, out)
        tmp.replace(path)
    return changed
