"""GRPO's pieces beside TRL: the trainer whose update uses the article's advantages, the per-component reward
statistics it logs, and the monitor that reports dead reward components and stops a collapsed policy."""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from tasks.reward_funcs import completion_text
from tasks.rewards import (
    COMPONENTS,
    RewardConfig,
    check_diversity,
    compute_advantages,
    item_rewards,
    parse_scores,
    score_completion,
    score_spans,
)
from tasks.trainer_setup import LogCapture

log = logging.getLogger(__name__)

STATS_PREFIX = "reward_stats/"


def component_stats() -> tuple[str, ...]:
    """What GRPO logs a mean and std of per step, and plots: every reward component, then the combined reward."""
    return (*COMPONENTS, "combined")


class DeadComponentMonitor(LogCapture):
    """The article's diagnostic as a feature: a reward component whose mean stays above `high` or below `low`
    for `window` consecutive logs gives no signal; it is reported once (warning) and recorded.

    Collapse guard: when at least `collapse_frac` of the groups are low-diversity (fewer than min_unique_ratio of
    their completions distinct) for `window` consecutive logs, the policy answers every prompt the same way (the
    "3 3 3 3" reward hack seen with an under-trained SFT model); every advantage is then zero and more steps only
    cost time, so training stops there with a warning and the reason is recorded."""

    def __init__(self, window: int, low: float, high: float, collapse_frac: float = 1.0, label: str = "grpo") -> None:
        super().__init__(label)
        self.window, self.low, self.high, self.collapse_frac = window, low, high, collapse_frac
        self.history: dict[str, list[float]] = defaultdict(list)
        self.dead: dict[str, str] = {}

    def on_log(self, step: int, logs: dict[str, Any]) -> None:
        super().on_log(step, logs)
        low_diversity = logs.get(f"{STATS_PREFIX}low_diversity_group_frac")
        if low_diversity is not None and self.stop_reason is None:
            recent = [*self.history["_low_diversity"], low_diversity][-self.window :]
            self.history["_low_diversity"] = recent
            if len(recent) == self.window and all(v >= self.collapse_frac for v in recent):
                self.stop_reason = (
                    f"collapsed at step {step}: {recent[-1]:.0%} of groups low-diversity for {self.window} logs "
                    f"(grpo.collapse_low_diversity_frac {self.collapse_frac})"
                )
                log.warning("grpo stopped early: policy %s; its groups carry no advantage", self.stop_reason)
        for name in COMPONENTS:
            value = logs.get(f"{STATS_PREFIX}{name}/mean")
            if value is None:
                continue
            recent = [*self.history[name], value][-self.window :]
            self.history[name] = recent
            if len(recent) < self.window or name in self.dead:
                continue
            if all(v > self.high for v in recent) or all(v < self.low for v in recent):
                side = f"above {self.high}" if recent[-1] > self.high else f"below {self.low}"
                self.dead[name] = f"mean {side} for {self.window} logs (last {recent[-1]:.3f}) at step {step}"
                log.warning("reward component %s is dead: %s; it gives GRPO no signal", name, self.dead[name])


def completion_stats(texts: list[str], truths: list[list[int]], config: RewardConfig) -> dict[str, list[float]]:
    """Per-completion component values, structural failures and perfect answers (the article's components)."""
    out: dict[str, list[float]] = defaultdict(list)
    for text, truth in zip(texts, truths, strict=True):
        for name, value in score_completion(text, truth, config).items():
            if name != "prediction":
                out[name].append(value)
    return out


def group_advantages(
    rewards: list[float],
    texts: list[str],
    group_size: int,
    min_std: float,
    min_unique_ratio: float,
    scale: bool = True,
) -> tuple[list[float], int, int]:
    """The article's advantages for consecutive groups: compute_advantages (zero when std < min_std; divided by
    the group's std when `scale`), and zero for a group whose completions are less than min_unique_ratio unique.
    Returns (advantages, zero-std groups, low-diversity groups)."""
    advantages: list[float] = []
    zero_std = low_diversity = 0
    for start in range(0, len(rewards), group_size):
        group = rewards[start : start + group_size]
        adv = compute_advantages(group, min_std=min_std, scale=scale)
        if not any(adv):
            zero_std += 1
        if not check_diversity(texts[start : start + group_size], min_unique_ratio):
            low_diversity += 1
            adv = [0.0] * len(group)
        advantages += adv
    return advantages, zero_std, low_diversity


def item_advantages(
    texts: list[str],
    truths: list[list[int]],
    group_size: int,
    config: RewardConfig,
    min_std: float,
    min_unique_ratio: float,
    scale: bool = True,
) -> list[list[float] | None]:
    """Item-level credit (grpo.credit item): for each completion, each item's advantage among the same item of its
    group's completions (tasks.rewards.item_rewards, normalised as compute_advantages does). A sequence reward sums
    every item's luck: the advantage a completion gives its third score also carries how its other scores happened
    to match the rater; per item, each score's tokens are paid for that score alone.
    None for every completion of a group with a structural failure (its items do not line up) or of a
    low-diversity group: those completions keep the sequence advantage."""
    out: list[list[float] | None] = []
    for start in range(0, len(texts), group_size):
        group_texts = texts[start : start + group_size]
        group_truths = truths[start : start + group_size]
        rewards = [item_rewards(parse_scores(t), g, config) for t, g in zip(group_texts, group_truths, strict=True)]
        if any(r is None for r in rewards) or not check_diversity(group_texts, min_unique_ratio):
            out += [None] * len(group_texts)
            continue
        per_item = [compute_advantages(column, min_std=min_std, scale=scale) for column in zip(*rewards, strict=True)]
        out += [list(row) for row in zip(*per_item, strict=True)]
    return out


def token_items(tokenizer: Any, ids: list[int], n_items: int) -> list[int | None] | None:
    """Which score each completion token writes (its index in parse_scores' order), or None for a token that writes
    none (a space, the end-of-sequence token); None altogether when the decoded text does not hold n_items scores.
    A token belongs to a score when its characters overlap the score's (a "-" token to the negative number)."""
    ends = [len(tokenizer.decode(ids[: i + 1], skip_special_tokens=True)) for i in range(len(ids))]
    spans = score_spans(tokenizer.decode(ids, skip_special_tokens=True))
    if len(spans) != n_items:
        return None
    owner: list[int | None] = []
    begin = 0
    for end in ends:
        owner.append(next((k for k, (a, b) in enumerate(spans) if begin < b and a < end), None))
        begin = end
    return owner


def token_advantages(
    tokenizer: Any, completion_ids: list[list[int]], sequence: list[float], items: list[list[float] | None]
) -> list[list[float]]:
    """Per-token advantages: each score's tokens get that item's advantage, every other token (and every token of a
    completion without item credit) the sequence advantage."""
    rows = []
    for ids, seq, item in zip(completion_ids, sequence, items, strict=True):
        owner = token_items(tokenizer, ids, len(item)) if item is not None else None
        if owner is None:
            rows.append([seq] * len(ids))
        else:
            rows.append([seq if k is None else item[k] for k in owner])
    return rows


def grpo_trainer_class():
    from accelerate.utils import gather_object
    from trl import GRPOTrainer

    class RewardflowGRPOTrainer(GRPOTrainer):
        """GRPOTrainer whose update uses the article's advantages (tasks.rewards.compute_advantages and
        check_diversity) instead of TRL's (r - mean) / (std + 1e-4), and logs per-component statistics."""

        def __init__(
            self,
            *args,
            reward_config: RewardConfig,
            min_std: float,
            min_unique_ratio: float,
            std_scaled: bool = True,
            shared_prefix: bool | str = False,
            credit: str = "sequence",
            **kw,
        ):
            super().__init__(*args, **kw)
            self.reward_config, self.min_std, self.min_unique_ratio = reward_config, min_std, min_unique_ratio
            self.std_scaled = std_scaled
            self.credit = credit
            self.shared_prefix = self._resolve_shared_prefix(shared_prefix)
            self._last: tuple[Any, list[str]] | None = None

        def _resolve_shared_prefix(self, wanted: bool | str) -> bool:
            """grpo.shared_prefix for this model: auto is on where tasks.sampling supports the architecture; true on
            an unsupported one is an error naming why."""
            from tasks.sampling import shared_prefix_unsupported

            if wanted is False:
                return False
            why = shared_prefix_unsupported(self.accelerator.unwrap_model(self.model))
            if why is None and self.args.cast_lm_head_to_fp32:
                why = "cast_lm_head_to_fp32 is set (the shared-prefix pass projects in the model's dtype)"
            if why is not None and wanted is True:
                raise ValueError(f"grpo.shared_prefix is true, but {why}: set it to auto or false")
            log.info("grpo: shared-prefix training pass %s", "on" if why is None else f"off ({why})")
            return why is None

        def _get_per_token_logps_and_entropies(
            self,
            model,
            input_ids,
            attention_mask,
            logits_to_keep,
            batch_size=None,
            compute_entropy=False,
            compute_aux_loss=False,
            **multimodal,
        ):
            """TRL's per-token log-probs and entropies, with each group's prompt computed once when shared_prefix
            is on (tasks.sampling.shared_prefix_logps: one forward for the whole batch); multimodal inputs and MoE
            auxiliary losses go through TRL's row-wise pass."""
            from tasks.sampling import shared_prefix_logps

            if not self.shared_prefix or compute_aux_loss or any(v is not None for v in multimodal.values()):
                return super()._get_per_token_logps_and_entropies(
                    model,
                    input_ids,
                    attention_mask,
                    logits_to_keep,
                    batch_size,
                    compute_entropy,
                    compute_aux_loss,
                    **multimodal,
                )
            with self.accelerator.autocast():
                logps, entropies = shared_prefix_logps(
                    model, input_ids, attention_mask, logits_to_keep, self.temperature, compute_entropy
                )
            return logps, entropies, None

        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, *args, **kwargs):
            """TRL's generation, with each group's prompt computed once instead of num_generations times (see
            tasks.sampling); vLLM and multimodal batches go through TRL unchanged."""
            from tasks.sampling import shared_prefix_generation

            generate = super()._generate_single_turn
            if self.use_vllm or images is not None or multimodal_fields:
                return generate(prompt_ids, images, multimodal_fields, num_generations, *args, **kwargs)
            with shared_prefix_generation(self.accelerator.unwrap_model(self.model_wrapped), num_generations):
                return generate(prompt_ids, images, multimodal_fields, num_generations, *args, **kwargs)

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            self._last = (rewards_per_func, [completion_text(c) for c in completions])
            return rewards_per_func

        def _generate_and_score_completions(self, inputs):
            import torch

            out = super()._generate_and_score_completions(inputs)
            rewards_per_func, local_texts = self._last
            self._last = None
            mode = "train" if self.model.training else "eval"
            group = self.num_generations if mode == "train" else self.num_generations_eval
            # What TRL optimises: the weighted sum of the reward functions, gathered over processes. A NaN or inf
            # from any function (or a float32 overflow) is counted and logged, not hidden: compute_advantages gives
            # the completion's whole group zero advantage, so the update stays finite.
            weighted = rewards_per_func * self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
            bad = ~torch.isfinite(weighted)
            rewards = weighted.sum(dim=1).tolist()
            non_finite = int(bad.any(dim=1).sum())
            if non_finite:
                funcs = [name for name, hit in zip(self.reward_func_names, bad.any(dim=0).tolist(), strict=True) if hit]
                log.warning(
                    "grpo step %d: %d completion(s) got a non-finite reward (from %s); their groups get zero advantage",
                    self.state.global_step + 1,
                    non_finite,
                    ", ".join(funcs),
                )
            texts = gather_object(local_texts)
            truths = gather_object([list(x["scores"]) for x in inputs])
            advantages, zero_std, low_div = group_advantages(
                rewards, texts, group, self.min_std, self.min_unique_ratio, self.std_scaled
            )
            n_local = out["advantages"].size(0)
            start = self.accelerator.process_index * n_local
            local = advantages[start : start + n_local]
            metrics = self._metrics[mode]
            if self.credit == "item":
                every = item_advantages(
                    texts, truths, group, self.reward_config, self.min_std, self.min_unique_ratio, self.std_scaled
                )
                items = every[start : start + n_local]
                lengths = out["completion_mask"].sum(dim=1).tolist()
                ids = [row[: int(n)].tolist() for row, n in zip(out["completion_ids"], lengths, strict=True)]
                width = out["completion_ids"].size(1)
                rows = token_advantages(self.processing_class, ids, local, items)
                local = [row + [0.0] * (width - len(row)) for row in rows]
                credited = sum(item is not None for item in every) / max(1, len(every))
                metrics[f"{STATS_PREFIX}item_credit_frac"].append(credited)
            out["advantages"] = torch.tensor(local, dtype=out["advantages"].dtype, device=out["advantages"].device)

            n_groups = max(1, len(rewards) // group)
            metrics[f"{STATS_PREFIX}zero_std_group_frac"].append(zero_std / n_groups)
            metrics[f"{STATS_PREFIX}low_diversity_group_frac"].append(low_div / n_groups)
            metrics[f"{STATS_PREFIX}non_finite_rewards"].append(float(non_finite))
            stats = completion_stats(texts, truths, self.reward_config)
            for name in component_stats():
                values = torch.tensor(stats[name], dtype=torch.float64)
                metrics[f"{STATS_PREFIX}{name}/mean"].append(values.mean().item())
                metrics[f"{STATS_PREFIX}{name}/std"].append(values.std(unbiased=False).item())
            for name in ("structural_failure", "perfect"):
                metrics[f"{STATS_PREFIX}{name}_rate"].append(sum(stats[name]) / len(stats[name]))
            return out

    return RewardflowGRPOTrainer
