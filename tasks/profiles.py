"""Params files: params.yaml, the complete base, and profiles, overlays that hold only what they change.

params.yaml selects one profile with its top-level `profile` key (a path relative to params.yaml; "" for none);
the default, profiles/builtin-tiny.yaml, changes nothing. A params file given by another name (`rewardflow run
--params profiles/X.yaml`) is a profile too: it replaces the one params.yaml selects, merged over the params.yaml of
its project (the nearest one above it). An overlay key that params.yaml does not have is an error naming the profile.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

BASE_NAME = "params.yaml"
PROFILE_KEY = "profile"


class ParamsError(ValueError):
    """A params file or override that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class ParamsFiles:
    """Which files make the params: the base params.yaml and the profile merged over it (None: no profile)."""

    base: Path
    profile: Path | None
    # True when the profile is the one params.yaml itself selects (what `dvc repro` runs)
    selected_by_base: bool

    @property
    def label(self) -> str:
        return f"{self.profile} (over {self.base})" if self.profile else str(self.base)

    def origin(self, key: str) -> str:
        """The file that sets the dotted `key` (`reward.weights[0]` counts as `reward.weights`): the profile when it
        sets it, else params.yaml. What a message about that key names."""
        if self.profile is not None:
            node: Any = read_yaml(self.profile)
            for part in key.split("[")[0].split("."):
                if not isinstance(node, dict) or part not in node:
                    return str(self.base)
                node = node[part]
            return str(self.profile)
        return str(self.base)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found (run from the project root or pass --params)") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: must be a mapping of sections, got {type(raw).__name__}")
    return raw


def _project_base(profile: Path) -> Path:
    for folder in profile.resolve().parents:
        if (folder / BASE_NAME).is_file():
            return folder / BASE_NAME
    raise ParamsError(
        f"{profile}: a profile is merged over the project's {BASE_NAME}, and none was found above it; keep profiles "
        f"inside the project (profiles/) or pass the full {BASE_NAME}"
    )


def _profile_path(base: Path, value: Any, origin: str) -> Path | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ParamsError(f'{origin}: {PROFILE_KEY} must be a path to a profile file or "", got {value!r}')
    path = Path(value) if Path(value).is_absolute() else base.parent / value
    if not path.is_file():
        raise ParamsError(f"{origin}: {PROFILE_KEY} {value!r} is not a file (profiles live in profiles/)")
    return path


def resolve_files(path: str | Path, profile_override: str | None = None) -> ParamsFiles:
    """The base and profile a params path stands for; profile_override is a `--set profile=...` value."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found (run from the project root or pass --params)")
    base = path if path.name == BASE_NAME else _project_base(path)
    selected = _profile_path(base, read_yaml(base).get(PROFILE_KEY), str(base))
    profile = selected if path.name == BASE_NAME else path
    if profile_override is not None:
        profile = _profile_path(base, profile_override, f"--set {PROFILE_KEY}")
    same = (profile is None) == (selected is None) and (
        profile is None or profile.resolve() == selected.resolve()  # type: ignore[union-attr]
    )
    return ParamsFiles(base, profile, same)


def _check_overlay(overlay: dict[str, Any], base: dict[str, Any], profile: Path, where: str = "") -> None:
    for key, value in overlay.items():
        name = f"{where}{key}"
        if key not in base:
            known = ", ".join(k for k in base if k != PROFILE_KEY)
            raise ParamsError(f"{profile}: unknown key {name} (not in the base params; known keys: {known})")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ParamsError(f"{profile}: {name} must be a mapping (a section), got {value!r}")
            _check_overlay(value, base[key], profile, f"{name}.")


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        merged[key] = _merge(base[key], value) if isinstance(base.get(key), dict) else value
    return merged


def merged_raw(files: ParamsFiles) -> dict[str, Any]:
    """params.yaml with the profile merged over it (lists are replaced, sections merged key by key)."""
    raw = read_yaml(files.base)
    if files.profile is None:
        return {**raw, PROFILE_KEY: ""}
    overlay = read_yaml(files.profile)
    if PROFILE_KEY in overlay:
        raise ParamsError(f"{files.profile}: a profile cannot select another profile (remove its {PROFILE_KEY} key)")
    _check_overlay(overlay, raw, files.profile)
    relative = files.profile.resolve()
    with contextlib.suppress(ValueError):  # a profile outside the project keeps its absolute path
        relative = relative.relative_to(files.base.resolve().parent)
    return {**_merge(raw, overlay), PROFILE_KEY: str(relative)}
