"""grpo.credit item: each score's tokens are paid for that score alone (tasks.grpo_trainer.item_advantages)."""

import random

import pytest
from project import TINY, grpo_step, overrides, tiny_params

from tasks.data import read_jsonl
from tasks.grpo_trainer import item_advantages, token_advantages, token_items
from tasks.rewards import COMPONENTS, RewardConfig, combined_reward, format_reward, item_rewards, parse_scores


def test_item_rewards_are_the_per_item_part_of_the_combined_reward():
    """The mean of the items' rewards is the combined reward without its sequence-level terms (format, the perfect
    bonus), for any answer of the right length whose errors stay within max_mae."""
    config = RewardConfig()
    rng = random.Random(0)
    assert [name for name, c in COMPONENTS.items() if not c.per_item] == ["format"]
    for _ in range(200):
        truth = [rng.randint(1, 5) for _ in range(4)]
        pred = [rng.randint(1, 5) for _ in range(4)]
        text = " ".join(map(str, pred))
        bonus = config.perfect_bonus if pred == truth else 0.0
        rest = config.weights["format"] * format_reward(pred, truth, text) + bonus
        items = item_rewards(pred, truth, config)
        assert sum(items) / len(items) == pytest.approx(combined_reward(pred, truth, text, config) - rest, abs=1e-12)
    assert item_rewards([3, 4], [3, 4, 5], config) is None and item_rewards([], [3], config) is None


def test_item_advantages_compare_each_item_with_the_same_item_of_the_group():
    """Four completions against the label 3 4 3 5 that differ on items 2 and 3 only: items 1 and 4 get no
    advantage (every completion scored them alike), item 3 pays the one exact answer, item 2 charges the one miss.
    The sequence advantage would give completion 2 the same sign on all four of its scores."""
    texts = ["3 4 2 5", "3 4 3 5", "3 4 2 5", "3 5 2 5"]
    adv = item_advantages(texts, [[3, 4, 3, 5]] * 4, 4, RewardConfig(), min_std=0.01, min_unique_ratio=0.0)
    third = 3**0.5
    expected = [
        [0, 1 / third, -1 / third, 0],
        [0, 1 / third, third, 0],
        [0, 1 / third, -1 / third, 0],
        [0, -third, -1 / third, 0],
    ]
    assert adv == [pytest.approx(row, abs=1e-6) for row in expected]


def test_groups_without_items_to_line_up_keep_the_sequence_advantage():
    """A structural failure anywhere in the group, or a low-diversity group, leaves the whole group to the sequence
    advantage (None); other groups in the same batch still get item credit."""
    config = RewardConfig()
    truths = [[3, 4]] * 8
    texts = ["3 4", "3", "4 4", "2 4"] + ["3 4", "3 5", "2 4", "3 3"]
    adv = item_advantages(texts, truths, 4, config, min_std=0.01, min_unique_ratio=0.0)
    assert adv[:4] == [None] * 4 and all(a is not None for a in adv[4:])
    same = ["3 4", "3 4", "3 4", "2 4"]
    assert item_advantages(same, truths[:4], 4, config, min_std=0.01, min_unique_ratio=0.75) == [None] * 4


def _bpe_tokenizer():
    """A byte-level BPE tokenizer whose merges split scores over several tokens ("-", "2"; "1", "0") and glue a
    space to a digit, as pretrained tokenizers do."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"], initial_alphabet=alphabet)
    backend.train_from_iterator(["score 3 4 5", " 3 3 4 4 5 5"] * 50, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>")


# its tokens: "3", " 4", " ", "2", " 5" / "-", "2", " ", "1", "0", " 3" / "score", " 3", " 4"
@pytest.mark.parametrize("text", ["3 4 2 5", "-2 10 3", "score 3 4"])
def test_token_items_find_each_scores_tokens(text):
    """Whatever the tokenizer does with a score (one token, a "-" and a digit, two digits, a digit with the space
    before it), its tokens map to its index in parse_scores' order, a token writing no score to None, and the
    end-of-sequence token to None."""
    tok = _bpe_tokenizer()
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    owner = token_items(tok, ids, len(parse_scores(text)))
    assert owner is not None and owner[-1] is None
    rebuilt: dict[int, str] = {}
    for i, k in zip(ids, owner, strict=True):
        piece = tok.decode([i])
        if k is None:
            assert not any(ch.isdigit() for ch in piece), (text, piece)
        else:
            rebuilt[k] = rebuilt.get(k, "") + piece
    assert [int(rebuilt[k]) for k in sorted(rebuilt)] == parse_scores(text)
    assert token_items(tok, ids, len(parse_scores(text)) + 1) is None  # the count must match the label's


def test_token_advantages_fill_scores_with_their_item_and_the_rest_with_the_sequence():
    tok = _bpe_tokenizer()
    ids = tok("-2 10", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    owner = token_items(tok, ids, 2)
    rows = token_advantages(tok, [ids, ids], [0.5, -0.5], [[1.0, -2.0], None])
    assert rows[0] == [0.5 if k is None else [1.0, -2.0][k] for k in owner]
    assert rows[1] == [-0.5] * len(ids)


@pytest.fixture
def tiny(tmp_path):
    return lambda *extra: tiny_params(tmp_path, *overrides(TINY), *extra)


def test_a_real_step_with_item_credit_pays_each_score_its_own_advantage(tiny):
    """One real GRPO step of the pipeline's trainer with grpo.credit item (the built-in model, sampling scores only,
    one token each): the advantages the update uses are per token, and each score's column is that item's
    group-relative advantage (centred over the group; zero where the group agrees on the item). Sequence credit's
    one advantage per completion: test_training.py::test_the_std_rule_at_its_edge."""
    p = tiny()
    config = p.reward.config

    def combined(completions, scores, **kwargs):
        return [combined_reward(parse_scores(c), s, c, config) for c, s in zip(completions, scores, strict=True)]

    scores = tuple(str(s) for s in range(p.task.min_score, p.task.max_score + 1))
    item = grpo_step(
        p,
        combined,
        credit="item",
        group=4,
        min_unique_ratio=0.0,
        only_tokens=scores,
        max_completion_length=p.task.n_items,
        temperature=5.0,
    )
    texts, used = item["completions"], item["used"]
    assert all(len(parse_scores(t)) == p.task.n_items for t in texts), texts
    assert all(len(row) == p.task.n_items for row in used), used  # one advantage per score token
    for k in range(p.task.n_items):
        column = [row[k] for row in used]
        assert sum(column) == pytest.approx(0.0, abs=1e-5)
        if len({parse_scores(t)[k] for t in texts}) == 1:
            assert column == [0.0] * 4
    assert any(len({round(a, 5) for a in row}) > 1 for row in used), used  # not one value per completion
    truth = read_jsonl(p.paths.train_file)[0]["scores"]  # the step's one prompt (the dataset is not shuffled)
    expected = item_advantages(texts, [truth] * 4, 4, config, p.grpo.min_std, 0.0)
    assert used == [pytest.approx(row, abs=1e-5) for row in expected]
    assert item["log"]["reward_stats/item_credit_frac"] == 1.0 and item["moved"]
