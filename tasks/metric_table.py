"""What each held-out metric is: its name, which direction is better, whether the promotion gate may compare it
(`register.primary_metric`), whether the run summary and the Prefect evaluation artifact show it. How each one is
computed is tasks/metrics.py, keyed by these names; a new metric is one entry here and its computation there.

The table stands apart from the computations because params (tasks/config.py checks `register.primary_metric`
against it) are read by every stage: a stage's code dependencies are its import closure (tasks/code_deps.py), so a
change to how a metric is computed re-runs the evaluation stages, and not the training ones.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricSpec:
    name: str
    higher_is_better: bool
    # may be register.primary_metric
    promotable: bool
    # a column of the run summary (`rewardflow run`) and of the Prefect evaluation artifact
    shown: bool


UP, DOWN = True, False  # higher_is_better
SPECS: dict[str, MetricSpec] = {
    s.name: s
    for s in (
        # every item of the answer right
        MetricSpec("exact_match", UP, promotable=True, shown=True),
        # the fraction of items exactly right (the reward's item_accuracy component)
        MetricSpec("item_accuracy", UP, promotable=True, shown=True),
        # the fraction of items within 1 of the truth; 0 for a structural failure
        MetricSpec("within_1", UP, promotable=True, shown=True),
        # mean absolute error per item, a structural failure counting every item at the score span
        MetricSpec("mae", DOWN, promotable=True, shown=True),
        # the answer is exactly the space-joined scores
        MetricSpec("format_compliance", UP, promotable=True, shown=True),
        # no numbers, or the wrong count of them
        MetricSpec("structural_failure_rate", DOWN, promotable=False, shown=False),
        # the combined reward GRPO optimises in mode multi
        MetricSpec("mean_reward", UP, promotable=True, shown=True),
        # reading: how much the answers depend on the prompt (tasks/reading.py compares with answers that need none)
        MetricSpec("answer_diversity", UP, promotable=False, shown=True),
        MetricSpec("label_correlation", UP, promotable=False, shown=True),
    )
}
PROMOTABLE = tuple(name for name, s in SPECS.items() if s.promotable)
SHOWN = tuple(name for name, s in SPECS.items() if s.shown)
