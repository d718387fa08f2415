"""Any integer score range params allow is representable by the built-in tokenizer and learnable end to end; a
tokenizer that cannot represent a target completion is refused before training, naming the file and line."""

import random
from pathlib import Path

import pytest
from project import tiny_params

from tasks.data import DataFileError, completion_for, read_jsonl, write_jsonl
from tasks.modeling import build_word_tokenizer, check_targets, load_base_model, save_artifact, score_words

# One word per level of the range, so that a short SFT can learn the mapping: the test is about the extreme
# scores being representable and emitted, not about reading skill.
LEVELS = ("awful", "poor", "weak", "meh", "plain", "okay", "fair", "good", "great", "superb", "perfect")


def _rows(n: int, seed: int, lo: int, hi: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        score = rng.randint(lo, hi)
        prompt = f"review : food : {LEVELS[score - lo]} . rate food from {lo} to {hi} :"
        rows.append({"prompt": prompt, "scores": [score]})
    return rows


def _project(root: Path, lo: int, hi: int, *extra: str):
    write_jsonl(root / "data" / "train.jsonl", _rows(400, 1, lo, hi))
    write_jsonl(root / "data" / "heldout.jsonl", _rows(80, 2, lo, hi))
    shape = ["task.n_items=1", f"task.min_score={lo}", f"task.max_score={hi}", "model.hidden_size=64"]
    shape += ["model.num_layers=2", "model.intermediate_size=128", "sft.batch_size=16", "sft.learning_rate=0.003"]
    return tiny_params(root, *shape, *extra)


@pytest.mark.slow
@pytest.mark.parametrize(
    "lo, hi",
    [
        (0, 10),  # a two-digit top score: one unknown token per "10" in the old digit-only vocabulary
        (-3, 3),  # negative scores: "-3" is one word, and counts as clean format
    ],
)
def test_a_short_sft_emits_the_extreme_scores_of_the_range(tmp_path, lo, hi):
    from tasks.evaluation import run_evaluate
    from tasks.training import run_sft

    p = _project(tmp_path, lo, hi, "sft.max_steps=300")
    run_sft(p)
    metrics = run_evaluate(p, ("sft",))["sft"]
    # one word per level: 300 steps at lr 3e-3 learn the whole mapping (item accuracy 1.0 on both ranges); at 1e-2
    # the run is unstable (0.63-0.69 on 0..10) and may never emit an extreme
    assert metrics["format_compliance"] == 1.0 and metrics["item_accuracy"] >= 0.9, metrics
    predictions = read_jsonl(Path(p.paths.reports_dir) / "predictions_sft.jsonl")
    for extreme in (lo, hi):
        truth_extreme = [r for r in predictions if r["scores"] == [extreme]]
        assert truth_extreme, f"no held-out prompt with truth {extreme}"
        hits = sum(r["prediction"] == [extreme] for r in truth_extreme)
        assert hits >= 1, f"{extreme} never predicted on {len(truth_extreme)} prompts whose truth it is"


def test_the_built_in_vocabulary_holds_every_score_of_the_range():
    tokenizer = build_word_tokenizer(["a"], score_words(-5, 100))
    for text in ("-5 0 100", "10 99 -1"):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids and len(ids) == 3
        assert tokenizer.decode(ids) == text
    check_targets(tokenizer, "train.jsonl", [(1, "-5 0 100")])  # nothing to refuse


def test_the_guard_rejects_a_tokenizer_that_cannot_represent_a_target(tmp_path):
    """A pretrained model folder whose tokenizer lacks "10" (the built-in model of a 1..5 task) given a 0..10 data
    set: run_sft stops before training, naming the file, the line and the target."""
    from tasks.training import run_sft

    p = _project(tmp_path, 0, 10, "sft.max_steps=2")
    prompts = [r["prompt"] for r in _rows(50, 3, 1, 5)]
    model, tokenizer = load_base_model(p.model, prompts, p.seed, (1, 5))
    folder = save_artifact(model, tokenizer, tmp_path / "pretrained", {})
    lines = read_jsonl(p.paths.train_file)
    first_ten = next(i for i, r in enumerate(lines, start=1) if r["scores"] == [10])
    p = _project(tmp_path, 0, 10, "sft.max_steps=2", f"model.name_or_path={folder}", "sft.lora.enabled=false")
    with pytest.raises(DataFileError) as err:
        run_sft(p)
    message = str(err.value)
    assert f"train.jsonl:{first_ten}: the target completion '10'" in message
    assert "unknown token <unk>" in message and "task.min_score" in message
    assert not (Path(p.paths.models_dir) / "sft").exists()


def test_the_guard_rejects_a_target_that_does_not_decode_back_to_itself():
    from tokenizers import normalizers

    tokenizer = build_word_tokenizer(["a"], score_words(-3, 3))
    # a normaliser that drops minus signs: "-3" encodes to the token "3", which decodes as "3"
    tokenizer.backend_tokenizer.normalizer = normalizers.Replace("-", "")
    with pytest.raises(DataFileError, match=r"data.jsonl:7: the target completion '-3 2' .* decodes back as '3 2'"):
        check_targets(tokenizer, "data.jsonl", [(6, completion_for([1, 2])), (7, completion_for([-3, 2]))])


def test_params_refuse_a_range_too_wide_for_the_built_in_tokenizer():
    from project import ROOT

    from tasks.config import ParamsError, load_params

    assert load_params(ROOT / "params.yaml", ["task.min_score=1", "task.max_score=1000"]).task.max_score == 1000
    with pytest.raises(ParamsError, match="task.max_score - task.min_score \\+ 1 = 1001 scores: the built-in model"):
        load_params(ROOT / "params.yaml", ["task.min_score=0", "task.max_score=1000"])
    # a pretrained model spells numbers with its own tokenizer: no limit
    wide = load_params(ROOT / "params.yaml", ["task.max_score=100000", "model.name_or_path=some/model"])
    assert wide.task.max_score == 100000


def test_a_target_that_would_be_truncated_stops_sft_before_training(tmp_path):
    """model.max_length shorter than a prompt and its target: SFT would train on a cut-off target; it stops first,
    naming the longest example's line."""
    from tasks.training import run_sft

    p = _project(tmp_path, 0, 10, "sft.max_steps=2", "model.max_length=10")
    with pytest.raises(DataFileError, match=r"train\.jsonl:\d+: the prompt and its target take 1\d tokens, more than "):
        run_sft(p)
    assert not (Path(p.paths.models_dir) / "sft").exists()
