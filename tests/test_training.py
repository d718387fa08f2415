"""The sft, grpo and evaluate stages for real, on a tiny built-in model and a few steps."""

import json
import math
import threading
from pathlib import Path

import psutil
import pytest
import torch
from project import TINY, grpo_step, overrides, tiny_params

from tasks.data import read_jsonl
from tasks.grpo_trainer import DeadComponentMonitor, group_advantages
from tasks.metrics import METRICS
from tasks.modeling import load_base_model, load_pretrained, save_artifact
from tasks.rewards import COMPONENTS


@pytest.fixture
def tiny(tmp_path):
    """Params for a tiny project in tmp_path (64 train rows, 16 held-out rows, a few SFT and GRPO steps)."""
    return lambda *extra: tiny_params(tmp_path, *overrides(TINY), *extra)


def _state(model_dir):
    model, _ = load_pretrained(model_dir)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _changed(a, b):
    return [k for k in a if not torch.equal(a[k], b[k])]


def test_sft_grpo_evaluate_learn_and_save(tiny):
    from tasks.evaluation import run_evaluate
    from tasks.training import run_grpo, run_sft

    # enough SFT to learn the format, and a hot sampler, so GRPO groups differ and carry a learning signal
    p = tiny("sft.max_steps=30", "sft.learning_rate=0.005", "grpo.temperature=1.5", "grpo.prompts_per_step=4")
    rows = read_jsonl(p.paths.train_file)
    base_model, base_tok = load_base_model(p.model, (r["prompt"] for r in rows), p.seed)
    base = save_artifact(base_model, base_tok, Path(p.paths.models_dir) / "base", {})

    sft = run_sft(p)
    assert sft["summary"]["steps"] == 30
    # every trainable tensor moved away from the initial weights
    assert len(_changed(_state(base), _state(sft["model_dir"]))) == len(_state(base))
    resolved = json.loads((Path(sft["model_dir"]) / "rewardflow_config.json").read_text())
    assert resolved["sft"]["max_steps"] == 30 and resolved["seed"] == p.seed

    grpo = run_grpo(p)
    assert grpo["summary"]["steps"] == 2
    assert (
        min(e["reward_stats/zero_std_group_frac"] for e in grpo["logs"] if "reward_stats/zero_std_group_frac" in e) < 1
    )
    assert _changed(_state(sft["model_dir"]), _state(grpo["model_dir"]))
    # per-component statistics are logged every step, with finite values in range
    logged = [entry for entry in grpo["logs"] if "reward_stats/combined/mean" in entry]
    assert len(logged) == 2
    for entry in logged:
        for name in COMPONENTS:
            for stat in ("mean", "std"):
                value = entry[f"reward_stats/{name}/{stat}"]
                assert math.isfinite(value) and 0.0 <= value <= 1.0, (name, stat, value)
        for key in ("structural_failure_rate", "perfect_rate", "zero_std_group_frac", "low_diversity_group_frac"):
            assert 0.0 <= entry[f"reward_stats/{key}"] <= 1.0
        # TRL's own per-function logging sees the same named components
        for name in COMPONENTS:
            assert entry[f"rewards/{name}/mean"] == pytest.approx(entry[f"reward_stats/{name}/mean"], abs=1e-6)
    assert json.loads((Path(p.paths.reports_dir) / "grpo_logs.json").read_text())["summary"]["steps"] == 2

    results = run_evaluate(p)
    report = json.loads((Path(p.paths.reports_dir) / "eval.json").read_text())
    assert report == json.loads(json.dumps(results))
    for name in ("sft", "grpo"):
        assert set(report[name]) == {*METRICS, "n"}
        assert report[name]["n"] == 16
        preds = read_jsonl(Path(p.paths.reports_dir) / f"predictions_{name}.jsonl")
        assert len(preds) == 16 and {"completion", "prediction", "scores"} <= set(preds[0])


def test_identical_completions_leave_the_policy_unchanged(tiny):
    """The article's rule in the real update: a group of identical completions has zero advantage, so with
    beta 0 a GRPO step has zero gradient and no parameter moves."""
    from tasks.training import run_grpo, run_sft

    # a near-zero temperature samples the greedy completion four times per prompt
    p = tiny("grpo.temperature=1e-7", "grpo.max_steps=1", "grpo.beta=0.0")
    run_sft(p)
    before = _state(Path(p.paths.models_dir) / "sft")
    grpo = run_grpo(p)
    step = next(e for e in grpo["logs"] if "reward_stats/low_diversity_group_frac" in e)
    assert step["reward_stats/low_diversity_group_frac"] == 1.0
    assert step["grad_norm"] == 0.0
    assert _changed(before, _state(grpo["model_dir"])) == []


def test_rewards_closer_than_min_std_leave_the_policy_unchanged(tiny):
    """The article's std rule in the real update, where TRL's own rule differs: a group whose rewards differ by
    0.001 (std 0.0005 < grpo.min_std 0.01). TRL's (r - mean) / (std + 1e-4) makes that about +-0.74; the article's
    rule makes it 0, so with beta 0 the step has zero gradient and no parameter moves."""

    def nearly_flat(completions, **kwargs):
        return [0.500, 0.501, 0.500, 0.501][: len(completions)]

    step = grpo_step(tiny(), nearly_flat, group=4, min_unique_ratio=0.0)  # diversity off: the std rule alone
    assert all(abs(a) > 0.7 for a in step["trl"]), step["trl"]  # TRL's rule would learn from this group
    assert step["used"] == [0.0] * 4
    assert step["log"]["reward_stats/zero_std_group_frac"] == 1.0 and step["log"]["grad_norm"] == 0.0
    assert not step["moved"]


@pytest.mark.parametrize("std, learns", [(0.005, False), (0.0099, False), (0.0101, True)])
def test_the_std_rule_at_its_edge(tiny, std, learns):
    """grpo.min_std is 0.01: a group of 4 whose rewards have population std just below it gets no advantage (no
    gradient, nothing moves), one just above it gets the article's normalised ±1 and the step moves the policy."""
    assert tiny().grpo.min_std == 0.01

    def spread(completions, **kwargs):
        return [0.5, 0.5 + 2 * std, 0.5, 0.5 + 2 * std][: len(completions)]  # std of {a, a + 2s} is s

    step = grpo_step(tiny(), spread, group=4, min_unique_ratio=0.0)  # diversity off: the std rule alone
    if learns:
        assert [round(a, 4) for a in step["used"]] == [-1.0, 1.0, -1.0, 1.0], step["used"]
        assert step["log"]["reward_stats/zero_std_group_frac"] == 0.0 and step["log"]["grad_norm"] > 0.0
        assert step["moved"]
    else:
        assert step["used"] == [0.0] * 4
        assert step["log"]["reward_stats/zero_std_group_frac"] == 1.0 and step["log"]["grad_norm"] == 0.0
        assert not step["moved"]


def test_a_group_of_eight_with_three_distinct_completions_gets_no_advantage(tiny):
    """The diversity rule where it matters: in a group of 8, 3 distinct completions (< 50%) whose rewards differ
    widely (so the std rule does not fire, and TRL's rule gives each a non-zero advantage) get zero advantage: the
    step moves nothing. At group size 4 the rule fires only when all four are identical (test_group_advantages)."""

    def digit(completions, **kwargs):
        return [int(c) / 10 for c in completions]

    # one token per completion, sampled from three (the generation config suppresses every other token)
    step = grpo_step(
        tiny(),
        digit,
        group=8,
        min_unique_ratio=0.5,
        only_tokens=("3", "4", "5"),
        max_completion_length=1,
        temperature=5.0,
    )
    texts = step["completions"]
    assert len(texts) == 8 and set(texts) <= {"3", "4", "5"} and len(set(texts)) >= 2, texts
    assert all(abs(a) > 0.1 for a in step["trl"]), step["trl"]  # TRL's rule would learn from every completion
    assert step["used"] == [0.0] * 8
    assert step["log"]["reward_stats/low_diversity_group_frac"] == 1.0
    assert step["log"]["reward_stats/zero_std_group_frac"] == 0.0 and step["log"]["grad_norm"] == 0.0
    assert not step["moved"]


def test_from_pretrained_path_with_and_without_lora(tiny, tmp_path):
    """A locally saved model goes through AutoModelForCausalLM.from_pretrained; LoRA (auto: on for a pretrained
    model) trains adapters on the attention projections and is merged into a standalone artefact."""
    from tasks.training import run_sft

    p = tiny()
    rows = read_jsonl(p.paths.train_file)
    model, tok = load_base_model(p.model, (r["prompt"] for r in rows), p.seed)
    local = save_artifact(model, tok, tmp_path / "pretrained", {})
    base = _state(local)

    with_lora = run_sft(tiny(f"model.name_or_path={local}"))
    merged = _state(with_lora["model_dir"])
    changed = _changed(base, merged)
    assert changed and all("self_attn" in k for k in changed), changed  # only LoRA targets moved
    assert not list(Path(with_lora["model_dir"]).glob("adapter_*"))  # merged: loadable on its own

    full = run_sft(tiny(f"model.name_or_path={local}", "sft.lora.enabled=false"))
    assert any("mlp" in k for k in _changed(base, _state(full["model_dir"])))


def test_lora_on_the_last_layers_moves_only_those_layers(tiny, tmp_path):
    """sft.lora.last_layers N puts adapters on the last N decoder layers only: after the merge, the attention weights
    of those layers moved and no weight below them did; more layers than the model has is refused, naming the key."""
    from tasks.config import ParamsError
    from tasks.training import run_sft

    p = tiny("model.num_layers=3")
    rows = read_jsonl(p.paths.train_file)
    model, tok = load_base_model(p.model, (r["prompt"] for r in rows), p.seed)
    layers = model.config.num_hidden_layers
    local = save_artifact(model, tok, tmp_path / "pretrained", {})
    base = _state(local)

    top = run_sft(tiny(f"model.name_or_path={local}", "sft.lora.last_layers=2"))
    changed = _changed(base, _state(top["model_dir"]))
    moved = {int(k.split(".layers.")[1].split(".")[0]) for k in changed}
    assert moved == {layers - 2, layers - 1} and all("self_attn" in k for k in changed), changed

    with pytest.raises(ParamsError, match=rf"sft\.lora\.last_layers is {layers + 1}, but .* has {layers} decoder"):
        run_sft(tiny(f"model.name_or_path={local}", f"sft.lora.last_layers={layers + 1}"))


def test_grpo_without_sft_fails_clearly(tiny):
    from tasks.training import run_grpo

    with pytest.raises(FileNotFoundError, match="no SFT checkpoint; run the sft stage first"):
        run_grpo(tiny())


@pytest.mark.parametrize(
    "rewards, texts, group, expected_adv, zero_std, low_div",
    [
        # a normal group: the article's normalised advantages (population std)
        ([1.0, 0.0, 1.0, 0.0], ["a", "b", "c", "d"], 4, [1.0, -1.0, 1.0, -1.0], 0, 0),
        # std 0.0025 < 0.01: nothing to learn
        ([0.5, 0.505, 0.5, 0.505], ["a", "b", "c", "d"], 4, [0.0] * 4, 1, 0),
        # 1 of 4 completions unique (< 50%): zeroed as low diversity even though rewards differ
        ([1.0, 0.0, 1.0, 0.0], ["a", "a", "a", "a"], 4, [0.0] * 4, 0, 1),
        # two groups of two, the second flat
        ([1.0, 0.0, 0.3, 0.3], ["a", "b", "c", "d"], 2, [1.0, -1.0, 0.0, 0.0], 1, 0),
        # group of 4: 2 distinct of 4 is 50%, enough; only 4 identical completions (1 of 4) trip the diversity rule
        ([1.0, 1.0, 0.0, 0.0], ["a", "a", "b", "b"], 4, [1.0, 1.0, -1.0, -1.0], 0, 0),
        # group of 8: 3 distinct (37.5%) with rewards far apart: zeroed by the diversity rule alone
        ([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0], list("aaaabbcc"), 8, [0.0] * 8, 0, 1),
        # group of 8: 4 distinct (50%): kept
        ([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0], list("aaaabbcd"), 8, [1.0] * 4 + [-1.0] * 4, 0, 0),
    ],
)
def test_group_advantages(rewards, texts, group, expected_adv, zero_std, low_div):
    adv, zs, ld = group_advantages(rewards, texts, group, min_std=0.01, min_unique_ratio=0.5)
    assert adv == pytest.approx(expected_adv, abs=1e-6)
    assert (zs, ld) == (zero_std, low_div)


def test_dead_component_monitor():
    monitor = DeadComponentMonitor(window=3, low=0.02, high=0.98)
    for step, fmt in enumerate([0.99, 0.995, 0.97, 0.99, 0.99, 0.999], start=1):
        monitor.on_log(step, {"reward_stats/format/mean": fmt, "reward_stats/item_accuracy/mean": 0.5})
    # format was above 0.98 for the last 3 logs (steps 4-6); the dip at step 3 reset the window
    assert list(monitor.dead) == ["format"]
    assert "step 6" in monitor.dead["format"]


@pytest.mark.parametrize(
    "fractions, stops_at",
    [
        ([0.0, 0.25, 0.5, 1.0], None),  # healthy groups: never stops
        ([1.0, 1.0, 0.5, 1.0, 1.0], None),  # collapsed for 2 logs, recovered, 2 again: the window is 3
        ([0.5, 0.9, 1.0, 0.95], 4),  # >= 0.9 for logs 2-4: stops at the 4th
        ([1.0, 1.0, 1.0, 1.0], 3),  # stops as soon as the window is full, and only once
    ],
)
def test_collapse_guard_stops_training(fractions, stops_at):
    """The collapse guard ends training through the Trainer's own control flag, with the reason recorded."""
    from transformers import TrainerControl, TrainerState

    monitor = DeadComponentMonitor(window=3, low=0.02, high=0.98, collapse_frac=0.9)
    state, stopped = TrainerState(), None
    for step, frac in enumerate(fractions, start=1):
        state.global_step = step
        control = TrainerControl()
        monitor.callback.on_log(None, state, control, logs={"reward_stats/low_diversity_group_frac": frac})
        if control.should_training_stop and stopped is None:
            stopped = step
    assert stopped == stops_at
    assert (monitor.stop_reason is not None) == (stops_at is not None)
    if stops_at:
        assert f"collapsed at step {stops_at}" in monitor.stop_reason


class ListeningSockets:
    """Polls the listening TCP sockets of this process's children (and theirs) while the block runs."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, int]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            for child in psutil.Process().children(recursive=True):
                try:
                    connections = child.net_connections("tcp")
                except psutil.Error:
                    continue  # ended between listing and reading
                self.seen |= {(c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN}

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.slow
def test_two_processes_through_accelerate_launch(tiny):
    """launcher.num_processes=2 runs sft and grpo under `accelerate launch` (DDP, gloo on this CPU): each process
    trains on half of every batch, the main one saves a working checkpoint, and the logs carry the same keys.

    Slow: `accelerate launch` starts two training processes per stage, each importing torch and TRL.
    """
    from tasks.evaluation import run_evaluate
    from tasks.stages import STAGES

    single = tiny()
    STAGES["sft"].run(single)
    keys_single = set(json.loads((Path(single.paths.reports_dir) / "sft_logs.json").read_text())["logs"][0])

    p = tiny("launcher.num_processes=2", "launcher.port=29547")
    with ListeningSockets() as sockets:
        STAGES["sft"].run(p)
        STAGES["grpo"].run(p)
    # the rendezvous (torch's TCPStore on launcher.port) and gloo's connections listen on the loopback only
    assert 29547 in {port for _, port in sockets.seen}, sockets.seen
    assert {address for address, _ in sockets.seen} == {"127.0.0.1"}, sockets.seen
    for stage in ("sft", "grpo"):
        report = json.loads((Path(p.paths.reports_dir) / f"{stage}_logs.json").read_text())
        assert report["summary"]["processes"] == 2, stage
        assert report["summary"]["steps"] == getattr(p, stage).max_steps
    assert set(json.loads((Path(p.paths.reports_dir) / "sft_logs.json").read_text())["logs"][0]) == keys_single
    metrics = run_evaluate(p)
    assert metrics["grpo"]["n"] == 16 and 0.0 <= metrics["grpo"]["format_compliance"] <= 1.0


def test_fused_lm_head_on_cpu_scores_only_labelled_positions_with_the_same_loss(tiny):
    """score_labelled_positions_only: TRL's fused LM head takes only the positions with a label on a CPU too; the
    loss, the per-token log-probs and every gradient equal those of scoring every position."""
    from trl.trainer import utils
    from trl.trainer.utils import add_fused_lm_head

    from tasks.trainer_setup import score_labelled_positions_only

    p = tiny()
    rows = read_jsonl(p.paths.train_file)
    model, tokenizer = load_base_model(p.model, (r["prompt"] for r in rows), p.seed)
    add_fused_lm_head(model, outputs=("log_probs", "entropy"))
    ids = tokenizer([r["prompt"] for r in rows[:4]], return_tensors="pt", padding=True)["input_ids"]
    labels = ids.clone()
    labels[:, :-3] = -100  # a completion of 3 tokens after the prompt, as in SFT and GRPO

    def fused():
        model.zero_grad()
        out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        out.loss.backward()
        return out.loss.item(), out.log_probs.detach(), [q.grad.clone() for q in model.parameters()]

    saved = utils._use_triton
    try:
        utils._use_triton = lambda device: False  # every position, as TRL does on a CPU
        every = fused()
        score_labelled_positions_only()
        assert utils._use_triton(ids.device) is True
        labelled = fused()
    finally:
        utils._use_triton = saved
    assert labelled[0] == pytest.approx(every[0], rel=1e-6)
    assert torch.allclose(labelled[1], every[1], atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(labelled[2], every[2], strict=True))
