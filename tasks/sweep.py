"""Sweeps that tune on the validation split: DVC experiments over a grid of params and seeds, selected on the
`validation_eval` stage's metrics, never on the held-out file.

DVC does the work: `dvc exp run --queue -S key=a,b -S seed=1,2,3 validation_eval` queues the grid (one experiment
per combination, each in its own temporary copy of the project), `dvc exp run --run-all` runs it. The target stage
and the stages it depends on run where their inputs differ from the committed dvc.lock (with the committed seed,
SFT is skipped for a GRPO or reward sweep); `evaluate` (held-out) and registration never run.
This module only groups the finished experiments by their swept values, averages the validation metric over seeds
and names the best setting.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.dvcfile import declared_paths
from tasks.metric_table import SPECS
from tasks.tracking import flatten

# the stage a sweep runs (and, through DVC, its upstream stages): it scores the checkpoints on the validation split
TARGET = "validation_eval"
# the checkpoint whose validation metric a sweep selects on
SELECTED = "grpo"
_QUEUED = re.compile(r"Queued experiment '([^']+)'")


class SweepError(RuntimeError):
    """A sweep that could not be queued, run or read; the message says which DVC command and what to do."""


@dataclass(frozen=True)
class Setting:
    """One point of the grid: its swept values, and the validation metric of each seed's experiment."""

    values: tuple[tuple[str, Any], ...]
    by_seed: dict[int, float]

    @property
    def mean(self) -> float:
        return statistics.mean(self.by_seed.values())

    @property
    def std(self) -> float:
        return statistics.stdev(self.by_seed.values()) if len(self.by_seed) > 1 else 0.0

    def overrides(self) -> list[str]:
        return [f"{key}={value}" for key, value in self.values]


def _dvc(args: list[str], root: Path, check: bool = True) -> str:
    """Run a DVC command in the project with its virtual environment first on PATH (the stages' commands and the
    queue's workers are `rewardflow` and `dvc` from there)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["dvc", *args], cwd=root, env=env, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise SweepError(f"`dvc {' '.join(args)}` failed in {root} (exit {done.returncode}):\n{done.stderr.strip()}")
    return done.stdout


def grid_key(assignment: str) -> str:
    """The params key of one `-S key=v1,v2` grid axis."""
    key, sep, values = assignment.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise SweepError(f"-S {assignment!r}: expected key=value1,value2,... (e.g. grpo.num_generations=4,8)")
    return key.strip()


def queue(root: Path, grid: list[str], seeds: list[int]) -> list[str]:
    """Queue one experiment per combination of the grid and the seeds; returns their DVC names."""
    axes = [grid_key(g) for g in grid]
    if "seed" in axes:
        raise SweepError("give seeds with --seeds, not -S seed=...: the sweep averages over them")
    sets = [arg for g in grid for arg in ("-S", g)]
    out = _dvc(["exp", "run", "--queue", *sets, "-S", f"seed={','.join(map(str, seeds))}", TARGET], root)
    names = _QUEUED.findall(out)
    if not names:
        raise SweepError(f"`dvc exp run --queue` queued nothing:\n{out}")
    return names


def run_queued(root: Path, jobs: int = 1) -> None:
    """Run every queued experiment (DVC's queue, `jobs` at a time). An experiment that fails is not an error here:
    it has no metrics, and the ranking names it."""
    _dvc(["exp", "run", "--run-all", "--jobs", str(jobs)], root, check=False)


def experiments(root: Path, p: Any) -> list[dict[str, Any]]:
    """Every experiment of the current commit, from `dvc exp show --json`: name, flattened params (as text) and the
    validation_eval metrics (None when the experiment failed)."""
    (metrics_file,) = declared_paths(p, TARGET, "metrics")
    found = []
    for baseline in json.loads(_dvc(["exp", "show", "--json"], root)):
        for group in baseline.get("experiments") or []:
            for rev in group.get("revs") or []:
                data = rev.get("data") or {}
                params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
                metrics = (data.get("metrics") or {}).get(str(metrics_file), {}).get("data")
                found.append({"name": rev.get("name"), "params": flatten(params), "metrics": metrics})
    return found


def select(
    found: list[dict[str, Any]], names: list[str], axes: list[str], metric: str
) -> tuple[list[Setting], list[str]]:
    """The sweep's settings, best first by the mean over seeds of the GRPO checkpoint's validation `metric` (in
    its direction), and the names of the sweep's experiments that have no metrics (failed)."""
    if metric not in SPECS:
        raise SweepError(f"unknown metric {metric!r} (one of {', '.join(SPECS)})")
    by_values: dict[tuple, dict[int, float]] = {}
    by_name = {exp["name"]: exp for exp in found}
    failed = []
    for name in names:
        exp = by_name.get(name)
        if exp is None or not exp["metrics"] or SELECTED not in exp["metrics"]:
            failed.append(name)  # failed in the queue, or never ran
            continue
        values = tuple((key, exp["params"].get(key)) for key in axes)
        by_values.setdefault(values, {})[int(exp["params"]["seed"])] = float(exp["metrics"][SELECTED][metric])
    settings = [Setting(values, by_seed) for values, by_seed in by_values.items()]
    sign = -1 if SPECS[metric].higher_is_better else 1
    return sorted(settings, key=lambda s: sign * s.mean), failed


def table(settings: list[Setting], metric: str) -> str:
    """A markdown table of the settings (best first): swept values, the metric's mean ± std and its value per seed."""
    if not settings:
        return "(no finished experiments)"
    axes = [key for key, _ in settings[0].values]
    seeds = sorted({seed for s in settings for seed in s.by_seed})
    head = [*axes, f"{metric} mean ± std", *(f"seed {seed}" for seed in seeds)]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for s in settings:
        per_seed = [f"{s.by_seed[seed]:.4f}" if seed in s.by_seed else "-" for seed in seeds]
        cells = [*(str(v) for _, v in s.values), f"{s.mean:.4f} ± {s.std:.4f}", *per_seed]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep(root: Path, p: Any, grid: list[str], seeds: list[int], metric: str, jobs: int = 1) -> dict[str, Any]:
    """Queue the grid over the seeds, run it, and rank its settings on the validation metric: the result's
    `settings` (best first), `failed` experiment names and `table`."""
    if not grid:
        raise SweepError("nothing to sweep: give at least one -S key=value1,value2,...")
    if not seeds:
        raise SweepError("give at least one seed (--seeds 1,2,3)")
    missing = [f for f in (p.paths.train_file, p.paths.validation_file) if not (root / f).is_file()]
    if missing:
        raise SweepError(
            f"{missing[0]} is missing: each experiment checks the data out of DVC's cache, so the data must exist and "
            "be pinned first (`make run` does both for the embedded task; for your own data, `dvc add data`)"
        )
    names = queue(root, grid, seeds)
    run_queued(root, jobs)
    settings, failed = select(experiments(root, p), names, [grid_key(g) for g in grid], metric)
    return {
        "metric": f"{SELECTED} {metric} on {p.paths.validation_file}",
        "experiments": names,
        "settings": [
            {"overrides": s.overrides(), "mean": s.mean, "std": s.std, "by_seed": s.by_seed} for s in settings
        ],
        "failed": failed,
        "table": table(settings, metric),
    }
