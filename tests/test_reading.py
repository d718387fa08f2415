"""The reading measure: how much answers depend on the prompt, against the answers that need no reading."""

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest
from project import tiny_params

from tasks.data import completion_for, consensus_labels, embedded_splits, read_jsonl
from tasks.evaluation import TRAINED, evaluate_file, score_predictions
from tasks.metrics import answer_diversity, label_correlation
from tasks.reading import CONSENSUS, CONSTANT, constant_answer, not_past_constant, reading_warnings, reference_metrics


def test_answer_diversity_counts_distinct_answers_per_prompt():
    truths = [[1, 2], [3, 4], [5, 1], [2, 2]]
    assert answer_diversity([[3, 3]] * 4, truths) == 0.25
    assert answer_diversity(truths, truths) == 1.0
    # answers with the wrong count of scores are one answer, whatever they say
    assert answer_diversity([[3, 3], [1], [2, 2, 2], []], truths) == 0.5
    assert answer_diversity([], []) == 0.0


def test_label_correlation_is_zero_for_answers_that_ignore_the_prompt_and_one_for_the_labels():
    truths = [[1, 5], [2, 4], [3, 3], [4, 2], [5, 1]]
    assert label_correlation([[3, 3]] * 5, truths) == 0.0
    assert label_correlation(truths, truths) == pytest.approx(1.0)
    # item 1 follows the labels, item 2 runs against them: the mean of +1 and -1
    flipped = [[t[0], 6 - t[1]] for t in truths]
    assert label_correlation(flipped, truths) == pytest.approx(0.0)
    assert label_correlation([[t[0], 3] for t in truths], truths) == pytest.approx(0.5)
    # wrong-length answers are left out; fewer than two left: nothing to correlate
    assert label_correlation([[1, 5], [9], [3, 3], [], [5, 1]], truths) == pytest.approx(1.0)
    assert label_correlation([[1, 5], [], [], [], []], truths) == 0.0


def test_the_constant_answer_is_each_items_median_on_train():
    rows = [{"scores": s} for s in ([1, 5, 2], [2, 5, 3], [5, 4, 3], [4, 1, 3], [3, 2])]
    # the 3-score rows decide; item 1's median of 1 2 4 5 is the lower one, 2
    assert constant_answer(rows) == [2, 4, 3]
    with pytest.raises(ValueError, match="no train rows"):
        constant_answer([])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_params(tmp_path_factory.mktemp("reading"))


def test_the_consensus_is_known_for_the_embedded_task_only(tiny):
    heldout = read_jsonl(tiny.paths.heldout_file)
    consensus = consensus_labels(tiny.task, heldout)
    expected = embedded_splits(replace(tiny.task, rater_bias=(0.0, 1.0, 0.0)))["heldout"]
    assert consensus == [r["scores"] for r in expected]
    # the labels are one rater's: within 1 of the consensus, and not all equal to it
    pairs = [(a, b) for row, c in zip(heldout, consensus, strict=True) for a, b in zip(row["scores"], c, strict=True)]
    assert all(abs(a - b) <= 1 for a, b in pairs) and any(a != b for a, b in pairs)
    assert consensus_labels(tiny.task, heldout[5:1:-1]) == consensus[5:1:-1]  # any subset, in the rows' order
    assert consensus_labels(tiny.task, [{**heldout[0], "prompt": "my own review"}, *heldout[1:]]) is None


def test_reference_answers_are_scored_on_the_same_rows(tiny):
    rows = read_jsonl(tiny.paths.heldout_file)
    refs = reference_metrics(tiny, rows)
    constant = constant_answer(read_jsonl(tiny.paths.train_file))
    expected, _ = score_predictions(
        [completion_for(constant)] * len(rows), [r["scores"] for r in rows], tiny.reward.config, 1, 5
    )
    assert refs[CONSTANT] == expected
    assert refs[CONSTANT]["answer_diversity"] == 1 / len(rows) and refs[CONSTANT]["label_correlation"] == 0.0
    # the consensus is within 1 of every rater, and past the constant answer
    assert refs[CONSENSUS]["within_1"] == 1.0 and not_past_constant(refs[CONSENSUS], refs[CONSTANT]) is None
    assert refs[CONSENSUS]["label_correlation"] > 0.5


def test_a_model_that_ignores_its_prompt_is_flagged_and_one_that_reads_is_not(tiny):
    rows = read_jsonl(tiny.paths.heldout_file)
    truths = [r["scores"] for r in rows]
    refs = reference_metrics(tiny, rows)
    consensus = consensus_labels(tiny.task, rows)

    def metrics(answers):
        return score_predictions([completion_for(a) for a in answers], truths, tiny.reward.config, 1, 5)[0]

    # ignores: the same plausible answer everywhere, one point off the median on one item
    median = constant_answer(read_jsonl(tiny.paths.train_file))
    ignores = metrics([[*median[:-1], min(5, median[-1] + 1)]] * len(rows))
    # reads: the consensus with one item off by one on every other prompt
    reads = metrics([[*c[:-1], max(1, c[-1] - 1)] if i % 2 else c for i, c in enumerate(consensus)])
    table = {"sft": ignores, "grpo": reads, **refs}
    (line,) = reading_warnings(table, TRAINED)
    assert line.startswith("sft is not past the constant answer (") and "label correlation 0.000" in line
    assert reading_warnings({"sft": ignores}, TRAINED) == []  # no constant answer to compare with


def test_evaluation_reports_the_references_and_warns_about_a_model_that_does_not_read(tiny, caplog):
    """An untrained built-in model through the evaluation stage's own function: the report gets the constant
    answer and the consensus beside it, and the log says the model is not past the constant answer."""
    from tasks.modeling import load_base_model, save_artifact

    prompts = [r["prompt"] for r in read_jsonl(tiny.paths.train_file)]
    model, tok = load_base_model(tiny.model, prompts, tiny.seed, (tiny.task.min_score, tiny.task.max_score))
    save_artifact(model, tok, Path(tiny.paths.models_dir) / "sft", {})
    with caplog.at_level(logging.WARNING, logger="tasks.evaluation"):
        results = evaluate_file(tiny, tiny.paths.heldout_file, "reading.json", None, ["sft"])
    on_disk = json.loads((Path(tiny.paths.reports_dir) / "reading.json").read_text())
    assert set(on_disk) == {"sft", CONSTANT, CONSENSUS} and on_disk == results
    assert on_disk[CONSTANT] == reference_metrics(tiny, read_jsonl(tiny.paths.heldout_file))[CONSTANT]
    (warning,) = reading_warnings(on_disk, ["sft"])
    assert [r.getMessage() for r in caplog.records] == [f"reading.json: {warning}"]
    assert warning.startswith("sft is not past the constant answer (within_1 0.")
