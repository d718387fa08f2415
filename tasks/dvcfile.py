"""What dvc.yaml declares for each stage (its params, deps, outs, metrics and plots), read from the file: what a
stage depends on is never restated in code."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml

from tasks.config import Params

# The stage declarations: commands, deps, params and outs (the project's own dvc.yaml, beside this package).
DVC_FILE = Path(__file__).resolve().parents[1] / "dvc.yaml"


def declared_stages(dvc_file: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The stages of dvc.yaml as written (before DVC interpolates `${...}`)."""
    return yaml.safe_load(Path(dvc_file or DVC_FILE).read_text())["stages"]


def declared_params(dvc_file: str | Path | None = None) -> dict[str, tuple[str, ...]]:
    """Each stage's params as dvc.yaml declares them: params.yaml keys, top-level (`model`) or dotted (`a.b`)."""
    return {
        name: tuple(k for k in stage.get("params", []) if isinstance(k, str))
        for name, stage in declared_stages(dvc_file).items()
    }


def _value(p: Params, key: str) -> Any:
    value: Any = p
    for part in key.split("."):
        value = getattr(value, part)
    return value


def stage_params(p: Params, stage: str) -> dict[str, Any]:
    """The values of the params dvc.yaml gives `stage`, by key (sections as plain dicts): what the stage's outputs
    and checkpoints depend on besides its input files."""
    values: dict[str, Any] = {}
    for key in declared_params()[stage]:
        value = _value(p, key)
        values[key] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return values


_INTERPOLATION = re.compile(r"\$\{([\w.]+)\}")


def declared_paths(p: Params, stage: str, kind: str) -> list[Path]:
    """The paths of one kind (`deps`, `outs`, `metrics`, `plots`) dvc.yaml declares for the stage, with `${...}`
    filled in from these params."""
    entries = declared_stages()[stage].get(kind, [])
    names = [next(iter(e)) if isinstance(e, dict) else e for e in entries]
    return [Path(_INTERPOLATION.sub(lambda m: str(_value(p, m.group(1))), name)) for name in names]
