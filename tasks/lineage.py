"""DVC as the one source of truth for "changed": which stages are current, and recording the ones that ran.

The in-process pipeline (`rewardflow run`) skips a stage exactly when `dvc status` says it is up to date, and
after running one records it with `dvc commit`, so the repository ends as `dvc repro` would leave it:
`dvc status` clean and `dvc.lock` current.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from tasks import projectlock, telemetry

log = logging.getLogger(__name__)


class Lineage:
    """DVC state of the project at `root`; inactive (every stage runs, nothing recorded) outside a DVC repo
    or when params were overridden on the command line, which dvc.lock could not reflect."""

    def __init__(self, root: str | Path = ".", overridden: bool = False) -> None:
        telemetry.turn_off()
        self.root = Path(root)
        self.active = (self.root / ".dvc").is_dir() and (self.root / "dvc.yaml").is_file() and not overridden
        if overridden:
            log.warning(
                "--set overrides are not recorded in dvc.lock: every stage runs and nothing is recorded "
                "(use `dvc exp run -S key=value` for tracked experiments)"
            )

    @classmethod
    def for_params(cls, params_file: str | Path, overrides: Sequence[str] | None = None) -> Lineage:
        """DVC's view of the project in the working directory; inactive unless the params are exactly what
        `dvc repro` would use: the project's params.yaml with the profile it selects, no overrides."""
        from tasks.profiles import resolve_files

        root = Path.cwd()
        files = resolve_files(params_file)
        same = files.base.resolve() == root / "params.yaml" and files.selected_by_base
        if not overrides and not same:
            log.warning(
                "%s is not the profile params.yaml selects: every stage runs and nothing is recorded in dvc.lock "
                "(to make it reproducible, set `profile: %s` in params.yaml, or `dvc exp run -S profile=%s`)",
                params_file,
                params_file,
                params_file,
            )
        return cls(root, overridden=bool(overrides) or not same)

    def _repo(self):
        """The project's Repo: the one holding the project lock when this process holds it (tasks/projectlock)."""
        return projectlock.open_repo(self.root)

    def is_current(self, stage: str) -> bool:
        """True when DVC sees no change in the stage's deps, params, outs or command."""
        if not self.active:
            return False
        with self._repo() as repo:
            return not repo.status(targets=[stage])

    def all_current(self, stages: list[str]) -> bool:
        """True when DVC sees every stage (and the data pin) unchanged: one `dvc status` for the whole pipeline."""
        if not self.active:
            return False
        with self._repo() as repo:
            return not repo.status(targets=stages)

    def record(self, stage: str) -> None:
        """Cache the stage's outputs and write its entry in dvc.lock (what `dvc repro` does after running it)."""
        if self.active:
            with self._repo() as repo:
                repo.commit(stage, force=True)

    def pin_generated_data(self, dvc_file: str = "data.dvc") -> None:
        """After regenerating the embedded data: cache it when it matches the pin; warn when it does not."""
        if not self.active or not (self.root / dvc_file).exists():
            return
        from tasks.pinning import pin_changes

        with self._repo() as repo:
            changes = pin_changes(repo, dvc_file)
        if changes == {"not in cache"}:
            with self._repo() as repo:
                repo.commit(dvc_file, force=True)
        elif changes:
            log.warning(
                "the generated data differs from what %s pins (task params changed?): data.pin decides whether the "
                "run pins it or refuses",
                dvc_file,
            )
