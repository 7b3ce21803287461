"""Stage 3: PPO-RLHF (RM-6) — sample, score, shape with KL, GAE over tokens, PPO epochs.

The loop of note 001 (PPO for LLMs: "整个循环可以简单总结为"), one iteration per rollout batch:

    1. sample prompts x and replies y ~ π_θ(·|x) with the KV cache  (`collect_rollout`)
    2. score: R_φ(x, y) on the reply's last real token; log π_θ and log π_ref per token;
       per-token rewards r_t = −β·KL_t, plus the score on the last real token, minus a
       penalty when there is no EOS                         (`per_token_rewards`, RM-3)
    3. values V_ψ(x, y_<t) from the value model (initialised from the reward model, RM-5);
       advantages by GAE over tokens with γ = 1, λ = 0.95   (`core.advantages.gae`)
    4. PPO epochs on minibatches of replies: clipped surrogate, clipped value loss
                                                             (`core.ppo.ppo_update`)
    5. update β from the measured KL (TR-4 proportional by default, or TR-3 adaptive; both
       bounded to [β₀/bound, β₀·bound], `core.kl`), warn if the KL ran away, repeat.

The four models in the figure of note 004 (PG to GRPO): the policy π_θ (trained), the reference π_ref (the SFT
model, frozen), the reward model R_φ (frozen) and the value model V_ψ (trained). Dropout is off
in all of them.

Deviations from InstructGPT/TRL: models trained from scratch; one optimiser over policy and
value (two parameter groups, one global gradient clip); β adapted every third rollout by
Ziegler et al.'s proportional rule (TRL's default too) within [β₀/10, 10·β₀], after a warm-up
that ends when the KL first reaches the controller's band. The PPO paper's doubling rule is
`--ref-kl-controller adaptive`: unbounded, it halved β to nothing on a model whose KL grew
slowly at first, and the policy then ran away from π_ref (llm/README.md, lesson 5).

Under torchrun (`core.distributed`) the rollout batch is split over the N ranks: every rank
draws the same `rollout_batch_size` prompts and samples replies for its share (prompts r, r + N,
…) with its own sampling and shuffling streams (seed + 1000·r), and `ppo_update` trains on
minibatches of minibatch_size/N replies a rank with the gradients averaged over the ranks, so the
batch and minibatch sizes are those of one process. The logged figures are means over the ranks,
and β follows the rank-averaged KL. Every rank evaluates the same prompts before and after.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from core import distributed
from core.advantages import gae
from core.catalog import implements
from core.checks import check_finite
from core.kl import KLController, KLEstimator, kl_estimate, make_kl_controller
from core.masked import masked_whiten
from core.ppo import Evaluation, ppo_update
from llm.config import PPOArgs, ppo_config, resolve, tag_suffix
from llm.gpt import GPT, disable_dropout
from llm.model_interface import context_length, copy_model
from llm.optim import adamw
from llm.plots import plot_rlhf, read_ppo_history
from llm.reward_model import scalar_model_from, score_replies
from llm.rollout import (
    Generation,
    decode_replies,
    encode_prompts,
    generate,
    last_token_scores,
    reply_logprobs,
    reply_values,
)
from llm.tasks import Task
from llm.tokenizer import CharTokenizer

__all__ = [
    "per_token_rewards",
    "detect_reward_hacking",
    "init_value_model",
    "Rollout",
    "collect_rollout",
    "make_evaluate",
    "evaluate_policy",
    "ppo_batch",
    "record_iteration",
    "train_ppo",
    "write_report",
]


@implements("RM-3")
def per_token_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_kl_coef: float,
    ref_kl_estimator: KLEstimator = "k1",
    ended: torch.Tensor | None = None,
    missing_eos_penalty: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token shaped rewards of RLHF   (RM-3; notes 001, 002 (PPO paper notes), 004; Ziegler et al. 2019).

        r_t = −β · KL_t                                 for every reply token t
        r_T += R_φ(x, y) − penalty·[no EOS]             on the last real token T (EOS if any)
        KL_t = k1 = log π_θ(y_t|·) − log π_ref(y_t|·)   (or k2/k3, `core.kl.kl_estimate`)

    so that Σ_t r_t = R_φ(x, y) − β Σ_t KL_t, the shaped reward r′(x, y) = R − β·KL of note 001
    with the sequence KL written as the sum of per-token log-ratios (IS-2). The dense KL part
    tells the critic *where* the reply drifted; the sparse score says how good it was.

    The score goes on column `length − 1`, the last real token, not on column `length` (one
    past it, the first PAD), a known off-by-one of popular implementations that hands the
    reward to a masked-out position. A reply that ran out of budget without EOS has its score
    lowered by `missing_eos_penalty`, otherwise the policy can learn to never stop.

    Symbols → arguments: R_φ(x, y) → `scores` (B,); log π_θ → `logprobs` (B, T) (of the rollout
    policy, no gradient); log π_ref → `ref_logprobs` (B, T); β → `ref_kl_coef`; the KL
    estimator → `ref_kl_estimator`; `mask` (B, T) 1 on real reply tokens, right-padded; `ended`
    (B,) bool, EOS seen. Returns (rewards (B, T), kl (B, T)), both zero on padding.
    """
    mask = mask.to(logprobs.dtype)
    kl = kl_estimate(logprobs, ref_logprobs, ref_kl_estimator) * mask  # (B, T)
    rewards = -ref_kl_coef * kl  # (B, T)
    score = scores.to(rewards.dtype)
    if ended is not None and missing_eos_penalty:
        score = score - missing_eos_penalty * (~ended.bool()).to(score.dtype)
    last = mask.sum(dim=1).long() - 1  # (B,) column of the last real token
    if bool((last < 0).any()):
        raise ValueError("every reply needs at least one real token")
    rewards = rewards.clone()
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += score
    return rewards * mask, kl


def detect_reward_hacking(history: list[dict], target: float, patience: int = 3, window: int = 5) -> dict | None:
    """Has the KL to π_ref run away? The numbers that say so, or None.

    Two signs, read off the logged metrics (`rlhf/ref_kl`, `rlhf/score`, `rlhf/gold_reward`):
    - the KL stayed above 2× its target for the last `patience` iterations;
    - the KL is above 2× its target, rose by more than one target over the last `window`
      iterations, and the proxy score rose with it (the policy is buying reward-model score
      with distance from π_ref: reward hacking in the making, before the gold reward shows it).
    With a working β schedule neither happens: the controller raises β before the KL doubles.

    `history`: the iterations so far, oldest first. Returns {"step", "kl", "target", "why",
    "score_from", "score_to", "gold_from", "gold_to" (over the last `window` iterations, or
    fewer), "message": one line naming the numbers}.
    """
    if not history or not target:
        return None
    last = history[-1]
    kl = last["rlhf/ref_kl"]
    if kl <= 2 * target:
        return None
    recent = history[-window:]
    first = recent[0]
    stayed = len(history) >= patience and all(r["rlhf/ref_kl"] > 2 * target for r in history[-patience:])
    running = (len(recent) > 1 and kl - first["rlhf/ref_kl"] > target
               and last["rlhf/score"] > first["rlhf/score"])
    if not (stayed or running):
        return None
    why = f"above 2× its target for {patience} iterations" if stayed else \
        f"past 2× its target and up {kl - first['rlhf/ref_kl']:.1f} nats in {len(recent) - 1} iterations"
    found = {
        "step": last["step"], "kl": kl, "target": target, "why": why,
        "score_from": first["rlhf/score"], "score_to": last["rlhf/score"],
        "gold_from": first.get("rlhf/gold_reward", math.nan), "gold_to": last.get("rlhf/gold_reward", math.nan),
    }
    found["message"] = (
        f"KL to the reference {kl:.2f} nats at iteration {last['step']}, {kl / target:.1f}× its target {target:g} "
        f"({why}); proxy score {found['score_from']:.2f} → {found['score_to']:.2f}, gold reward "
        f"{found['gold_from']:.2f} → {found['gold_to']:.2f} over iterations {first['step']}–{last['step']}: "
        "likely reward hacking (raise --ref-kl-coef or lower --ppo-lr)"
    )
    return found


@dataclass
class Rollout:
    """One rollout batch, everything PPO needs (all tensors on the run's device)."""

    gen: Generation
    prompts: list[str]
    replies: list[str]
    logprobs: torch.Tensor
    """(B, R) log π_θ of the sampled tokens at sampling time (π_old)."""
    ref_logprobs: torch.Tensor
    """(B, R) log π_ref of the same tokens."""
    values: torch.Tensor
    """(B, R) V_ψ before each token."""
    scores: torch.Tensor
    """(B,) the reward signal before shaping: R_φ(x, y) or the task's verifier."""
    gold: torch.Tensor
    """(B,) hidden gold reward (for monitoring only)."""


@torch.no_grad()
def collect_rollout(
    policy: GPT,
    ref: GPT | None,
    value_model: GPT | None,
    score_fn: Callable,
    task: Task,
    tok: CharTokenizer,
    prompts: list[str],
    device,
    generator: torch.Generator | None = None,
) -> Rollout:
    """Steps 1–3 of the loop without the shaping: sample, then score every token of every reply.

    `score_fn(gen, prompts, replies) -> (B,)` is the reward model or the verifier. `ref=None`
    means no KL term (the reference is not even loaded; DR-2), `value_model=None` no critic.
    """
    ids, mask = encode_prompts(tok, prompts, context_length(policy), task.max_new_tokens, device)
    gen = generate(
        policy,
        ids,
        mask,
        max_new_tokens=task.max_new_tokens,
        eos_id=tok.eos_id,
        pad_id=tok.pad_id,
        generator=generator,
    )
    replies = decode_replies(tok, gen)
    input_ids, attention = gen.input_ids, gen.attention_mask
    logprobs, _ = reply_logprobs(policy, input_ids, attention, gen.reply_ids, name="policy")
    if ref is not None:
        ref_logprobs, _ = reply_logprobs(
            ref, input_ids, attention, gen.reply_ids, name="reference model"
        )
    else:
        ref_logprobs = logprobs.clone()
    values = (
        reply_values(value_model, input_ids, attention, gen.reply_ids.shape[1])
        if value_model is not None
        else torch.zeros_like(logprobs)
    )
    scores = score_fn(gen, prompts, replies).to(device)
    check_finite(scores=scores)
    ended = gen.ended.tolist()
    gold = torch.tensor([task.gold_reward(p, r, e) for p, r, e in zip(prompts, replies, ended)])
    mask_f = gen.reply_mask
    return Rollout(
        gen,
        prompts,
        replies,
        logprobs * mask_f,
        ref_logprobs * mask_f,
        values * mask_f,
        scores,
        gold,
    )


def reward_model_scorer(reward_model: GPT) -> Callable:
    """score_fn reading R_φ on the last real token of prompt + reply."""

    def score(gen: Generation, prompts, replies) -> torch.Tensor:
        attention = gen.attention_mask
        scores = reward_model(gen.input_ids, attention_mask=attention)  # (B, P + R)
        out = last_token_scores(scores, attention_mask=attention)  # (B,) on EOS
        check_finite(**{"reward model scores": out})
        return out

    return score


def gold_scorer(task: Task) -> Callable:
    """score_fn using the task's own gold reward (a verifier, for the arithmetic task).
    The missing-EOS case is left to `per_token_rewards`' penalty, as for the reward model."""

    def score(gen: Generation, prompts, replies) -> torch.Tensor:
        return torch.tensor([task.gold_reward(p, r, True) for p, r in zip(prompts, replies)])

    return score


def make_evaluate(policy: GPT, value_model: GPT | None) -> Callable[[dict], Evaluation]:
    """The `evaluate(minibatch)` that `core.ppo.ppo_update` calls: recompute log π_θ, the
    entropy and V_ψ for the stored reply tokens, with gradients."""

    def evaluate(mb: dict[str, torch.Tensor]) -> Evaluation:
        logprobs, entropy = reply_logprobs(
            policy,
            mb["input_ids"],
            mb["attention_mask"],
            mb["actions"],
            with_entropy=True,
            name="policy",
        )
        values = None
        if value_model is not None:
            values = reply_values(
                value_model, mb["input_ids"], mb["attention_mask"], mb["actions"].shape[1]
            )
        return Evaluation(logprobs, entropy, values)

    return evaluate


@torch.no_grad()
def evaluate_policy(
    policy: GPT,
    task: Task,
    tok: CharTokenizer,
    n: int,
    seed: int,
    device,
    score_fn: Callable | None = None,
    batch_size: int = 128,
    temperature: float = 1.0,
) -> dict:
    """Mean gold reward (and proxy score) of replies sampled at `temperature` (0: greedy) for `n`
    fixed prompts. The same prompts and sampling seed are used before and after RL."""
    rng = random.Random(seed)
    prompts = [task.sample_prompt(rng, "test") for _ in range(n)]
    gen_rng = torch.Generator(device=device).manual_seed(seed)
    golds, scores, lengths, ended, samples = [], [], [], [], []
    for i in range(0, n, batch_size):
        chunk = prompts[i : i + batch_size]
        ids, mask = encode_prompts(
            tok, chunk, context_length(policy), task.max_new_tokens, device
        )
        gen = generate(
            policy,
            ids,
            mask,
            max_new_tokens=task.max_new_tokens,
            eos_id=tok.eos_id,
            pad_id=tok.pad_id,
            temperature=temperature,
            generator=gen_rng,
        )
        replies = decode_replies(tok, gen)
        golds += [task.gold_reward(p, r, e) for p, r, e in zip(chunk, replies, gen.ended.tolist())]
        if score_fn is not None:
            scores += score_fn(gen, chunk, replies).tolist()
        lengths += gen.lengths.tolist()
        ended += gen.ended.tolist()
        samples += list(zip(chunk, replies))
    return {
        "gold_reward": sum(golds) / n,
        "score": sum(scores) / n if scores else float("nan"),
        "response_length": sum(lengths) / n,
        "eos_rate": sum(ended) / n,
        "samples": samples,
        "golds": golds,
        "lengths": lengths,
    }


def train_ppo(
    config: PPOArgs,
    task: Task,
    tok: CharTokenizer,
    sft: GPT,
    reward_model: GPT | None,
    device: torch.device,
    out: str | Path | None = None,
    progress: bool = True,
    log=None,
) -> tuple[dict[str, GPT], dict]:
    """PPO-RLHF from the SFT policy, with its evaluation before and after, plot and report.

    `reward_model` may be None when `config.reward_source == 'gold'` (the task's verifier
    scores); the value model then starts from the SFT body with a zero head instead of from R_φ.
    `log(iteration, metrics)` receives the fixed metric names every iteration. With `out`, the
    plot `ppo[-TAG].png` and the report `report[-TAG].md` are written there (a tagged run's plot
    also shows the untagged run of `out/metrics.jsonl`).

    Returns (models, summary), the shape of every stage function: `models` = {"policy": π_θ,
    "value": V_ψ} (what `ppo.pt` holds); `summary` = {"gold_reward": {"sft", "final", "best"},
    "score": {"sft", "final"}, "gap_closed", "kl": {"final": mean rlhf/ref_kl of the last 10
    iterations, "target"}, "kl_in_band_after_first_quarter", "final_ref_kl_coef", "reward_hacking"
    (`detect_reward_hacking`'s figures at the first iteration the KL ran away, or None), "eos_rate",
    "response_length", "seconds", "history": every iteration's record}.
    """
    config = resolve(config)
    start = time.perf_counter()
    policy, ref, value_model, reward_model, score_fn = _ppo_models(config, task, sft, reward_model)
    eval_seed = config.seed + 100  # the same prompts and sampling seed before and after RL
    before = evaluate_policy(sft, task, tok, config.eval_prompts, eval_seed, device, score_fn)
    policy.train(), value_model.train()  # dropout is 0 anyway; train() only for clarity
    ppo = ppo_config(config, minibatch_size=distributed.share(config.minibatch_size, "minibatch_size"),
                     batch_size=distributed.share(config.rollout_batch_size, "rollout_batch_size"))
    optimizer = adamw([{"params": policy.parameters()}, {"params": value_model.parameters(), "lr": config.value_lr}],
                      config.ppo_lr)
    controller = _ref_kl_controller(config)
    prompt_rng = random.Random(config.seed + 5)
    sample_gen = torch.Generator(device=device).manual_seed(distributed.rank_seed(config.seed + 6, 1000))
    shuffle_gen = torch.Generator().manual_seed(distributed.rank_seed(config.seed + 7, 1000))
    rank, world = distributed.rank(), distributed.world_size()
    target = config.ref_kl_controller_target
    history: list[dict] = []
    hacking = None  # the first iteration at which the KL ran away (detect_reward_hacking)
    bar = tqdm(range(config.ppo_iterations), desc="ppo", disable=not progress, leave=False)
    for it in bar:
        beta = float(controller.beta)
        # 1–2. sample replies to this rank's prompts, score them, shape the score with −β·KL
        prompts = [task.sample_prompt(prompt_rng) for _ in range(config.rollout_batch_size)][rank::world]
        ro = collect_rollout(policy, ref, value_model, score_fn, task, tok, prompts, device, sample_gen)
        mask = ro.gen.reply_mask
        rewards, _ = per_token_rewards(ro.scores, ro.logprobs, ro.ref_logprobs, mask, ref_kl_coef=beta,
                                       ref_kl_estimator=config.ref_kl_estimator, ended=ro.gen.ended,
                                       missing_eos_penalty=config.missing_eos_penalty)
        if config.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        # 3. advantages over tokens: the reply ends (terminally) at its last real token
        advantages = gae(rewards, ro.values, gamma=config.gamma, gae_lambda=config.gae_lambda, mask=mask)
        returns = advantages + ro.values
        # 4. PPO epochs on minibatches of replies (core.ppo)
        stats = ppo_update(make_evaluate(policy, value_model), ppo_batch(ro, advantages, returns), optimizer, ppo,
                           generator=shuffle_gen, ranks=distributed.ranks())
        # 5. log, and β from the measured KL (every rank's mean); warn once if the KL ran away
        record = _ppo_record(ro, rewards, beta, stats)
        controller.update(record["rlhf/ref_kl"], config.rollout_batch_size)
        record["rlhf/ref_kl_over_target"] = record["rlhf/ref_kl"] / target if target else 0.0
        hacking = hacking or _watch_reward_hacking(history, it, record, target)
        record["rlhf/reward_hacking"] = float(hacking is not None)
        record_iteration(history, log, it, record, "PPO", may_be_nan=("losses/explained_variance",))
        bar.set_postfix(score=f"{record['rlhf/score']:.2f}", gold=f"{record['rlhf/gold_reward']:.2f}",
                        kl=f"{record['rlhf/ref_kl']:.2f}", beta=f"{beta:.3g}")
    policy.eval(), value_model.eval()
    after = evaluate_policy(policy, task, tok, config.eval_prompts, eval_seed, device, score_fn)
    summary = _ppo_summary(config, task, history, before, after, controller, hacking, start)
    _report_ppo(out, config, task, tok, history, before, after, summary, reward_model, device)
    return {"policy": policy, "value": value_model}, summary


# ---- the helpers of train_ppo: setup, one iteration's record, the summary and the outputs ----


def _ppo_models(config: PPOArgs, task: Task, sft: GPT, reward_model: GPT | None):
    """(π_θ, π_ref, V_ψ, R_φ, score_fn): the trained policy and value model, the frozen reference and
    reward model (dropout off), and the scorer of replies (R_φ, or the task's verifier)."""
    torch.manual_seed(config.seed + 4)
    policy = disable_dropout(copy_model(sft))
    ref = disable_dropout(copy_model(sft)).requires_grad_(False).eval()  # frozen π_ref
    use_rm = config.reward_source == "rm"
    if use_rm and reward_model is None:
        raise ValueError("reward_source='rm' needs a reward model")
    if reward_model is not None:  # scores the rewards ('rm') or only the report's replies ('gold')
        reward_model = disable_dropout(reward_model).requires_grad_(False).eval()  # frozen R_φ
    if use_rm:
        score_fn = reward_model_scorer(reward_model)
        value_model = init_value_model(reward_model)  # RM-5
    else:
        score_fn = gold_scorer(task)
        value_model = scalar_model_from(sft)
    value_model = disable_dropout(value_model).requires_grad_(True)
    return policy, ref, value_model, reward_model, score_fn


def _ref_kl_controller(config: PPOArgs) -> KLController:
    """β's controller: it holds β through the warm-up and updates it every ref_kl_update_every iterations."""
    return make_kl_controller(
        config.ref_kl_controller, config.ref_kl_coef, config.ref_kl_controller_target,
        config.ref_kl_controller_horizon, bound=config.ref_kl_coef_bound, warmup=config.ref_kl_warmup,
        every=config.ref_kl_update_every,
    )


def ppo_batch(ro: Rollout, advantages: torch.Tensor, returns: torch.Tensor) -> dict[str, torch.Tensor]:
    """The batch `core.ppo.ppo_update` trains on: one row per reply, one column per reply token."""
    return {
        "input_ids": ro.gen.input_ids,
        "attention_mask": ro.gen.attention_mask,
        "actions": ro.gen.reply_ids,
        "logprobs": ro.logprobs,
        "advantages": advantages,
        "returns": returns,
        "values": ro.values,
        "mask": ro.gen.reply_mask,
    }


def _ppo_record(ro: Rollout, rewards: torch.Tensor, beta: float, stats: dict[str, float]) -> dict[str, float]:
    """One iteration's figures, means over the ranks: the scores, the KL to π_ref per reply
    (Σ_t log π_θ − log π_ref, what β follows), lengths, β and the update's losses."""
    mask = ro.gen.reply_mask
    return distributed.mean_over_ranks({
        "rlhf/score": float(ro.scores.mean()),
        "rlhf/gold_reward": float(ro.gold.mean()),
        "rlhf/ref_kl": float(((ro.logprobs - ro.ref_logprobs) * mask).sum(dim=1).mean()),
        "rlhf/response_length": float(mask.sum(dim=1).mean()),
        "rlhf/eos_rate": float(ro.gen.ended.float().mean()),
        "rlhf/shaped_return": float((rewards * mask).sum(dim=1).mean()),
        "charts/ref_kl_coef": beta,
        **{k: v for k, v in stats.items() if k.startswith("losses/")},
    })


def _watch_reward_hacking(history: list[dict], it: int, record: dict, target: float | None) -> dict | None:
    """`detect_reward_hacking` on the iterations so far and this one; its one-line warning from rank 0."""
    if not target:
        return None
    hacking = detect_reward_hacking([*history, {"step": it, **record}], target)
    if hacking is not None and distributed.is_main():
        print(f"[llm.rlhf] warning: {hacking['message']}", file=sys.stderr)
    return hacking


def record_iteration(history: list[dict], log, step: int, record: dict[str, float], method: str,
                     may_be_nan: tuple[str, ...] = ()) -> None:
    """Refuse an iteration with a non-finite figure (besides those of `may_be_nan`), naming the
    method and the iteration; then append it to `history` and pass it to `log(step, record)`."""
    if not all(math.isfinite(v) for k, v in record.items() if k not in may_be_nan):
        raise FloatingPointError(f"non-finite {method} statistics at iteration {step}: {record}")
    history.append({"step": step, **record})
    if log is not None:
        log(step, record)


def _ppo_summary(config: PPOArgs, task: Task, history: list[dict], before: dict, after: dict,
                 controller: KLController, hacking: dict | None, start: float) -> dict:
    """The stage's summary (see `train_ppo`)."""
    target = config.ref_kl_controller_target
    tail = history[-10:]
    best = task.best_gold()
    gap = best - before["gold_reward"]
    in_band = None
    if target:
        later = history[len(history) // 4 :]
        in_band = sum(0.5 * target <= r["rlhf/ref_kl"] <= 2 * target for r in later) / len(later)
    return {
        "gold_reward": {"sft": before["gold_reward"], "final": after["gold_reward"], "best": best},
        "score": {"sft": before["score"], "final": after["score"]},
        "gap_closed": (after["gold_reward"] - before["gold_reward"]) / gap if gap > 0 else float("nan"),
        "kl": {"final": sum(r["rlhf/ref_kl"] for r in tail) / len(tail), "target": target},
        "kl_in_band_after_first_quarter": in_band,
        "final_ref_kl_coef": float(controller.beta),
        "reward_hacking": hacking,
        "eos_rate": {"sft": before["eos_rate"], "final": after["eos_rate"]},
        "response_length": {"sft": before["response_length"], "final": after["response_length"]},
        "seconds": time.perf_counter() - start,
        "history": history,
    }


def _report_ppo(out: str | Path | None, config: PPOArgs, task: Task, tok: CharTokenizer, history: list[dict],
                before: dict, after: dict, summary: dict, reward_model: GPT | None, device) -> None:
    """With `out`, the plot ppo[-TAG].png and the report report[-TAG].md; the stage's result line."""
    target, best = config.ref_kl_controller_target, task.best_gold()
    if out is not None:
        suffix = tag_suffix(config.tag)
        runs = {f"ppo{suffix} ({config.ref_kl_controller} β={config.ref_kl_coef:g})": history}
        if config.tag:
            default_history = read_ppo_history(Path(out) / "metrics.jsonl")
            if default_history:
                runs = {"untagged run": default_history, **runs}
        plot_rlhf(runs, Path(out) / f"ppo{suffix}.png", ref_kl_target=target, best_gold=best,
                  sft_gold=before["gold_reward"], title=f"PPO-RLHF on '{config.task}'")
        write_report(Path(out) / f"report{suffix}.md", config, task, tok, before, after, summary,
                     reward_model, device)
    print(
        f"[llm.rlhf] ppo: gold reward {before['gold_reward']:.3f} → {after['gold_reward']:.3f} (best {best:.3f}, "
        f"gap closed {summary['gap_closed']:.0%}), final KL {summary['kl']['final']:.2f} (target {target}), "
        f"in {summary['seconds']:.0f}s",
        file=sys.stderr,
    )


def write_report(path: Path, config: PPOArgs, task: Task, tok: CharTokenizer, before: dict, after: dict,
                 summary: dict, reward_model: GPT | None, device) -> None:
    """`report.md`: the headline numbers and a table of sample replies before and after PPO."""
    n = 12
    prompts = [p for p, _ in before["samples"][:n]]
    sft_replies = [r for _, r in before["samples"][:n]]
    ppo_replies = [r for _, r in after["samples"][:n]]
    rm_sft = rm_ppo = None
    if reward_model is not None:
        rm_sft = score_replies(reward_model, tok, prompts, sft_replies, device).tolist()
        rm_ppo = score_replies(reward_model, tok, prompts, ppo_replies, device).tolist()
    gold, score = summary["gold_reward"], summary["score"]
    lines = [
        f"# PPO-RLHF report: task '{config.task}'{' (' + config.tag + ')' if config.tag else ''}",
        "",
        f"β schedule {config.ref_kl_controller} from {config.ref_kl_coef}, target KL "
        f"{config.ref_kl_controller_target}, {config.ppo_iterations} iterations × {config.rollout_batch_size} "
        f"replies, reward source {config.reward_source}.",
        "",
        "| | SFT policy | after PPO |",
        "|---|---|---|",
        f"| mean gold reward ({config.eval_prompts} prompts) | {gold['sft']:.3f} | {gold['final']:.3f} |",
        f"| mean proxy score | {score['sft']:.3f} | {score['final']:.3f} |",
        f"| best reachable gold | {gold['best']:.3f} | |",
        f"| share of the gap closed | | {summary['gap_closed']:.1%} |",
        f"| KL to the reference (last 10 iterations) | 0 | {summary['kl']['final']:.2f} |",
        f"| EOS rate | {before['eos_rate']:.3f} | {after['eos_rate']:.3f} |",
        "",
        *_hacking_lines(summary, config),
        f"Best reachable gold: {task.best_gold_note}.",
        "",
        "## Sample replies (same prompts, temperature 1)",
        "",
        "| prompt | SFT reply | gold | RM | PPO reply | gold | RM |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, p in enumerate(prompts):
        rs = f"{rm_sft[i]:.2f}" if rm_sft else "–"
        rp = f"{rm_ppo[i]:.2f}" if rm_ppo else "–"
        lines.append(
            f"| `{p}` | `{sft_replies[i]}` | {before['golds'][i]:.1f} | {rs} | "
            f"`{ppo_replies[i]}` | {after['golds'][i]:.1f} | {rp} |"
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _hacking_lines(summary: dict, config: PPOArgs) -> list[str]:
    """The report's paragraph on reward hacking: the figures when the KL ran away, else nothing."""
    h = summary.get("reward_hacking")
    if not h:
        return []
    gold, score = summary["gold_reward"], summary["score"]
    return [
        "## Reward hacking",
        "",
        f"The KL to the reference ran away: {h['kl']:.2f} nats at iteration {h['step']}, {h['kl'] / h['target']:.1f}× "
        f"its target {h['target']:g} ({h['why']}), while the proxy score went {h['score_from']:.2f} → "
        f"{h['score_to']:.2f} and the gold reward {h['gold_from']:.2f} → {h['gold_to']:.2f}. At the end: KL "
        f"{summary['kl']['final']:.2f} (last 10 iterations), proxy score {score['sft']:.2f} → {score['final']:.2f}, "
        f"gold reward {gold['sft']:.2f} → {gold['final']:.2f} (SFT → after PPO), β {summary['final_ref_kl_coef']:.3g} "
        f"(from {config.ref_kl_coef:g}, {config.ref_kl_controller}). The policy is buying reward-model score with "
        "distance from π_ref: this is reward hacking, and the replies below show what the reward model "
        "over-rates.",
        "",
    ]


@implements("RM-5")
def init_value_model(reward_model: GPT) -> GPT:
    """The value model V_ψ starts as a copy of the reward model R_φ   (RM-5; note 004).

    Note 004: "参数是从RM上进行初始化的". Both read a prompt and a partial reply and output one
    number per position, and R_φ already knows which replies are good, so V_ψ starts close to
    the expected final score instead of at 0. The copy is trained; R_φ stays frozen. (Note 004
    also says the value model lowers the variance "of the reward model" — it lowers the variance
    of the policy gradient, erratum E6.)
    """
    if reward_model.head != "scalar":
        raise ValueError("the value model is initialised from a scalar-head reward model")
    return copy_model(reward_model)
