"""Ranking a sweep's experiments (tasks/sweep.py): grouped by their swept values, averaged over seeds, in the
metric's direction, failures named. The sweep run by DVC for real is in tests/test_dvc.py."""

import pytest

from tasks.sweep import SweepError, grid_key, select, table
from tasks.tracking import flatten


def _exp(name, seed, weight, within_1, mae, ok=True):
    params = {"seed": seed, "reward": {"weights": {"item_accuracy": weight}}}
    metrics = {"sft": {"within_1": 0.0, "mae": 9.0}, "grpo": {"within_1": within_1, "mae": mae}} if ok else None
    return {"name": name, "params": flatten(params), "metrics": metrics}


FOUND = [
    _exp("a1", 1, 0.3, 0.85, 0.77),
    _exp("a2", 2, 0.3, 0.84, 0.78),
    _exp("b1", 1, 0.0, 0.94, 0.73),
    _exp("b2", 2, 0.0, 0.92, 0.74),
    _exp("c1", 1, 0.5, 0.99, 0.10),  # not one of this sweep's experiments
    _exp("d1", 1, 0.7, 0.0, 0.0, ok=False),
]
SWEPT = ["a1", "a2", "b1", "b2", "d1", "e1"]  # e1: queued, never shown by DVC


def test_settings_are_ranked_by_their_mean_over_seeds_in_the_metric_direction():
    settings, failed = select(FOUND, SWEPT, ["reward.weights.item_accuracy"], "within_1")
    assert [s.overrides() for s in settings] == [
        ["reward.weights.item_accuracy=0.0"],
        ["reward.weights.item_accuracy=0.3"],
    ]
    assert settings[0].by_seed == {1: 0.94, 2: 0.92}
    assert settings[0].mean == pytest.approx(0.93) and settings[0].std == pytest.approx(0.0141421, abs=1e-6)
    assert failed == ["d1", "e1"]
    # MAE: lower is better, and the GRPO checkpoint's value is what counts (never SFT's)
    by_mae, _ = select(FOUND, SWEPT, ["reward.weights.item_accuracy"], "mae")
    assert [s.mean for s in by_mae] == pytest.approx([0.735, 0.775])
    assert table(by_mae, "mae").splitlines()[2] == "| 0.0 | 0.7350 ± 0.0071 | 0.7300 | 0.7400 |"


def test_bad_sweep_arguments_are_refused():
    with pytest.raises(SweepError, match="unknown metric"):
        select(FOUND, SWEPT, ["reward.weights.item_accuracy"], "accuracy")
    with pytest.raises(SweepError, match="expected key=value1,value2"):
        grid_key("grpo.num_generations")
