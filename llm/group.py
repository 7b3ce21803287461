"""Group-relative RL on a verifiable reward: GRPO, DAPO and Dr. GRPO on the `arithmetic` task.

No reward model and no critic. For each prompt q, sample a group of G replies o_1..o_G from the
current policy π_old, score each with the task's checker (1 right, 0 a wrong number, −1 not a
number or no EOS), and let the group be its own baseline. Every token of reply o_i gets the
reply's advantage Â_i; the update is `core.ppo.ppo_update` with the method's choices passed as
arguments (no copy of the loss lives here).

    GRPO (GR-1, GR-2; Shao et al. 2024, DeepSeekMath):
        Â_i = (r_i − mean(r_1..G)) / (std(r_1..G) + eps)
        J = (1/G) Σ_i (1/|o_i|) Σ_t [ min(ρ_{i,t} Â_i, clip(ρ_{i,t}, 1 − ε, 1 + ε) Â_i) − β k3_{i,t} ]
        ρ_{i,t} = π_θ(o_{i,t} | q, o_{i,<t}) / π_old(o_{i,t} | q, o_{i,<t}),  ε = 0.2
        k3_{i,t} = π_ref/π_θ − log(π_ref/π_θ) − 1 on the sampled token, π_ref = the SFT model, β = 0.04
    DAPO (DA-1..DA-4; Yu et al. 2025):
        clip(ρ, 1 − ε_low, 1 + ε_high), ε_low = 0.2, ε_high = 0.28          clip-higher (DA-1)
        keep only groups with rewards not all equal, sample more prompts
        until the batch holds `group_prompts` of them                       dynamic sampling (DA-2)
        J = (1/Σ_i |o_i|) Σ_i Σ_t min(…), over the tokens of the whole batch  token-level loss (DA-3)
        r_i ← r_i + R_len(|o_i|), the soft overlong penalty                 (DA-4);  β = 0
    Dr. GRPO (DR-1, DR-2; Liu et al. 2025, "Understanding R1-Zero-Like Training"):
        Â_i = r_i − mean(r_1..G)                                            (no std)
        J = (1/(G·C)) Σ_i Σ_t min(…),  C = the reply budget in tokens       (no 1/|o_i|)
        β = 0: no reference model is built or run at all                   (DR-2)

Symbols → fields (`llm.config.GroupArgs`, the glossary's names): G → `group_size`, ε/ε_low →
`clip_coef`, ε_high → `clip_coef_high`, β → `ref_kl_coef`, the k-estimator → `ref_kl_estimator`,
μ (passes over a batch) → `update_epochs`, the three reductions → `loss_reduction` ('seq_mean',
'token_mean', 'constant'), the std → `scale_by_std`, L_max and L_cache of DA-4 →
`overlong_max`, `overlong_cache`, DA-2 → `dynamic_sampling` (at most `sampling_rounds` rounds).
`--algo grpo|dapo|dr_grpo` fills the fields left at None from `llm.config.PRESETS`.

Which KL estimator (KL-3). The in-loss term is differentiated on tokens sampled from π_θ, and
then its expected gradient is not that of the quantity it estimates: k1 = log π_θ − log π_ref has
zero expected gradient (the score function has mean zero), k2 = ½(log π_θ − log π_ref)² has the
gradient of KL[π_θ‖π_ref], and k3 has the gradient of KL[π_ref‖π_θ], the forward KL. GRPO's k3
therefore pulls π_θ to cover π_ref rather than to stay inside it; `--ref-kl-estimator k2`
gives the reverse KL that note 001 (PPO for LLMs) writes. (PPO-RLHF puts k1 in the reward instead, as a number
without gradient, where its unbiasedness is what counts.)

Why the three differ (GR-3, DR-1). Under GRPO's 1/|o_i| each token of a long reply weighs less:
a long wrong reply is penalised less per token than a short one, so wrong replies drift longer;
the std divides by a small number when a group's rewards barely differ, up-weighting prompts
that are nearly always right or nearly always wrong. DAPO weighs every token of the batch the
same; Dr. GRPO removes both the length and the std division. `group/wrong_length` follows the
mean length of wrong replies to show the length bias (a small effect here: replies are 2–4
tokens).

Metrics (`log(step, record)`, names documented in `core.metrics` and `llm.pipeline.METRIC_DOCS`):
`rlhf/ref_kl` (Σ_t log π_old − log π_ref per reply, only with a reference), `rlhf/response_length`,
`losses/policy_loss`, `losses/clipfrac`, `losses/approx_kl`, `losses/ref_kl` (with β > 0),
`losses/entropy` (the per-token mean entropy of the sampling policy on the batch, for DAPO the
kept groups: comparable between methods, unlike a figure reduced with each method's own
reduction), and `group/…` (over every sampled reply, kept or not):
held-out accuracy every `group_eval_every` iterations, training reward and accuracy, the length
of wrong replies, the shares of groups dropped and of replies truncated.

Under torchrun (`core.distributed`) each rank owns group_prompts/N prompts of every batch and
samples all G replies of each (a group never spans two ranks, so its baseline and std are its
own), with its own prompt, sampling and shuffling streams (seed + 1000·r); `ppo_update` trains on
minibatches of minibatch_size/N replies a rank with the gradients averaged over the ranks. With
dynamic sampling a rank may keep fewer groups than another: every rank then trains on the
smallest rank's number of replies, so all run the same number of minibatches. The logged figures
are means over the ranks (the summary's shares are over every rank's groups); every rank
evaluates the same held-out prompts.

Sources: note 004 (PG to GRPO: GRPO's three parts; DAPO's four changes; Dr. GRPO's removal of the length
and std terms and of the KL; "GRPO 是使用 KL3 训练的"); Shao et al. 2024; Yu et al. 2025; Liu et
al. 2025; Schulman 2020, "Approximating KL Divergence".

Deviations from the papers, and why:
- the policy is the project's SFT model trained from scratch, the reward the task's checker with
  −1 for malformed replies (DeepSeekMath and Dr. GRPO score 1/0, DAPO ±1);
- one batch is `group_prompts` × G replies, updated for `update_epochs` passes of minibatches of
  replies (GRPO's μ inner steps); a minibatch need not hold whole groups, since the advantages
  are computed once per batch;
- DAPO's dynamic sampling stops after `sampling_rounds` rounds and trains on a short batch if it
  is still not full (the reference code also caps its generation batches); the share of sampled
  groups left out is logged;
- DAPO's overlong penalty works on a 6-token budget with L_cache = 2 (length with EOS), so it
  only touches replies longer than any right answer; a reply cut off without EOS already scores
  −1 from the checker. Masking such replies out of the loss (`mask_truncated`) is off by default;
- DAPO's token mean is over the batch's tokens also when the batch is trained in several
  minibatches: each minibatch's sum is divided by (batch tokens / minibatches), as in DAPO's
  code, not by its own tokens ('minibatch_token_mean', `core.masked.reduce_loss`);
- Dr. GRPO's constant C is the task's reply budget (the paper uses the generation budget);
- held-out accuracy is measured with greedy decoding on test-split problems (RL trains on the
  train split), the headline number; temperature-1 accuracy is reported beside it.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm

from core import distributed
from core.group import group_advantages, informative_groups, overlong_penalty
from core.masked import masked_mean
from core.ppo import ppo_update
from llm.config import GROUP_ALGOS, GroupArgs, PolicyArgs, ppo_config, resolve, tag_suffix
from llm.gpt import GPT, disable_dropout
from llm.model_interface import context_length, copy_model
from llm.optim import adamw, set_lr
from llm.plots import plot_group
from llm.rlhf import evaluate_policy, make_evaluate, record_iteration
from llm.rollout import Generation, decode_replies, encode_prompts, generate, reply_logprobs
from llm.tasks import Task
from llm.tokenizer import CharTokenizer

__all__ = [
    "GroupBatch",
    "sample_groups",
    "reply_rewards",
    "collect_groups",
    "build_batch",
    "build_reference",
    "heldout_accuracy",
    "train_group",
]


@torch.no_grad()
def sample_groups(
    policy: GPT,
    task: Task,
    tok: CharTokenizer,
    prompts: list[str],
    group_size: int,
    device,
    generator: torch.Generator | None = None,
) -> Generation:
    """G replies to each of P prompts at temperature 1. Rows are prompt-major: row p·G + i is
    reply i to prompt p, so `.view(P, G)` of any per-reply tensor gives the groups."""
    repeated = [p for p in prompts for _ in range(group_size)]
    ids, mask = encode_prompts(tok, repeated, context_length(policy), task.max_new_tokens, device)
    return generate(
        policy, ids, mask, max_new_tokens=task.max_new_tokens, eos_id=tok.eos_id, pad_id=tok.pad_id,
        generator=generator,
    )


def reply_rewards(
    task: Task, prompts: list[str], replies: list[str], gen: Generation, config: GroupArgs
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards (B,) of the replies: the task's checker, plus DAPO's soft overlong penalty
    R_len(|o_i|) (DA-4) when `config.overlong_cache` > 0. Also returns `correct` (B,) bool.

    |o_i| is the reply's length in tokens with EOS (`gen.lengths`); L_max → `overlong_max`,
    L_cache → `overlong_cache`.
    """
    ended = gen.ended.tolist()
    checker = torch.tensor([task.gold_reward(p, r, e) for p, r, e in zip(prompts, replies, ended)])  # (B,)
    rewards = checker.clone()
    if config.overlong_cache:
        rewards = rewards + overlong_penalty(gen.lengths.cpu(), config.overlong_max, config.overlong_cache)
    return rewards, checker == task.best_gold()


def _take(gen: Generation, rows: torch.Tensor) -> Generation:
    return Generation(gen.prompt_ids[rows], gen.prompt_mask[rows], gen.reply_ids[rows], gen.reply_mask[rows],
                      gen.ended[rows])


def _concat(gens: list[Generation], pad_id: int) -> Generation:
    """Stack generations of different widths: prompts left-padded, replies right-padded."""
    if len(gens) == 1:
        return gens[0]
    P = max(g.prompt_ids.shape[1] for g in gens)
    R = max(g.reply_ids.shape[1] for g in gens)
    F = torch.nn.functional
    return Generation(
        torch.cat([F.pad(g.prompt_ids, (P - g.prompt_ids.shape[1], 0), value=pad_id) for g in gens]),
        torch.cat([F.pad(g.prompt_mask, (P - g.prompt_mask.shape[1], 0), value=0) for g in gens]),
        torch.cat([F.pad(g.reply_ids, (0, R - g.reply_ids.shape[1]), value=pad_id) for g in gens]),
        torch.cat([F.pad(g.reply_mask, (0, R - g.reply_mask.shape[1]), value=0.0) for g in gens]),
        torch.cat([g.ended for g in gens]),
    )


@dataclass
class GroupBatch:
    """The groups one update trains on, and what was sampled to get them."""

    gen: Generation
    """B = P·G rows, prompt-major (row p·G + i is reply i to prompt p)."""
    prompts: list[str]
    """(B,) the prompt of each row."""
    rewards: torch.Tensor
    """(P, G) rewards of the kept groups (checker + overlong penalty)."""
    sampled: dict
    """Statistics of every reply sampled for this batch, kept or not: reward, accuracy, length,
    wrong-reply length, truncated share, groups sampled, groups whose rewards were all equal,
    rounds."""


def collect_groups(
    policy: GPT,
    task: Task,
    tok: CharTokenizer,
    config: GroupArgs,
    prompt_rng: random.Random,
    device,
    generator: torch.Generator | None = None,
) -> GroupBatch:
    """Sample `group_prompts` groups of `group_size` replies. With `dynamic_sampling` (DA-2) keep
    only groups whose rewards are not all equal (`core.group.informative_groups`) and sample
    rounds of fresh prompts until `group_prompts` groups are kept or `sampling_rounds` rounds
    ran; extra groups of the last round are left out."""
    G, P = config.group_size, config.group_prompts
    kept_gens, kept_prompts, kept_rewards = [], [], []
    all_rewards, all_correct, all_lengths, all_ended = [], [], [], []
    n_kept = n_sampled = n_uniform = rounds = 0
    while n_kept < P and rounds < (config.sampling_rounds if config.dynamic_sampling else 1):
        prompts = [task.sample_prompt(prompt_rng) for _ in range(P)]
        gen = sample_groups(policy, task, tok, prompts, G, device, generator)
        rows_prompts = [p for p in prompts for _ in range(G)]
        rewards, correct = reply_rewards(task, rows_prompts, decode_replies(tok, gen), gen, config)  # (P·G,)
        groups = rewards.view(P, G)
        informative = informative_groups(groups)  # (P,) bool
        keep = informative if config.dynamic_sampling else torch.ones(P, dtype=torch.bool)
        keep_idx = keep.nonzero().squeeze(1)[: P - n_kept]  # (k,) groups kept from this round
        rows = (keep_idx[:, None] * G + torch.arange(G)).reshape(-1)  # (k·G,) their replies
        kept_gens.append(_take(gen, rows.to(gen.reply_ids.device)))
        kept_prompts += [rows_prompts[i] for i in rows.tolist()]
        kept_rewards.append(groups[keep_idx])
        all_rewards.append(rewards), all_correct.append(correct)
        all_lengths.append(gen.lengths.cpu()), all_ended.append(gen.ended.cpu())
        n_kept += len(keep_idx)
        n_sampled += P
        n_uniform += int((~informative).sum())
        rounds += 1
    rewards, correct = torch.cat(all_rewards), torch.cat(all_correct)
    lengths, ended = torch.cat(all_lengths).float(), torch.cat(all_ended)
    wrong = ~correct
    sampled = {
        "reward": float(rewards.mean()),
        "accuracy": float(correct.float().mean()),
        "length": float(lengths.mean()),
        "wrong_length": float(lengths[wrong].mean()) if bool(wrong.any()) else float("nan"),
        "truncated_share": float((~ended).float().mean()),
        "groups": n_sampled,
        "uniform_groups": n_uniform,
        "kept_groups": n_kept,
        "rounds": rounds,
    }
    return GroupBatch(_concat(kept_gens, tok.pad_id), kept_prompts, torch.cat(kept_rewards), sampled)


def build_batch(
    gen: Generation,
    rewards: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    config: GroupArgs,
) -> dict[str, torch.Tensor]:
    """The `core.ppo.ppo_update` batch of B = P·G replies of R tokens.

    Â_i = `group_advantages`(rewards) (GR-1, or DR-1 without the std) is copied onto every real
    token of reply i; `mask` (B, R) is the reply mask, with truncated replies zeroed when
    `mask_truncated`. There is no critic: `values` and `returns` are zeros that only fill the
    batch format (`vf_coef` is 0 and `evaluate` returns no values).
    Shapes: `rewards` (P, G), `logprobs` and `ref_logprobs` (B, R) from the sampling policy and π_ref.
    """
    advantages = group_advantages(rewards, scale_by_std=config.scale_by_std).reshape(-1)  # (B,)
    mask = gen.reply_mask.clone()  # (B, R)
    if config.mask_truncated:
        mask[~gen.ended] = 0.0  # a reply cut off by the budget was neither right nor wrong
    advantages = advantages.to(mask.device)[:, None] * mask  # (B, R): the reply's Â on each token
    zeros = torch.zeros_like(logprobs)  # (B, R)
    batch = {
        "input_ids": gen.input_ids,
        "attention_mask": gen.attention_mask,
        "actions": gen.reply_ids,
        "logprobs": logprobs * mask,
        "advantages": advantages,
        "returns": zeros,
        "values": zeros,
        "mask": mask,
    }
    if ref_logprobs is not None:
        batch["ref_logprobs"] = ref_logprobs * mask
    return batch


def build_reference(sft: GPT, ref_kl_coef: float) -> GPT | None:
    """The frozen π_ref (a copy of the SFT model) when β > 0; None when β = 0 (DR-2): no model is
    built and no reference forward pass ever runs."""
    if ref_kl_coef == 0:
        return None
    return disable_dropout(copy_model(sft)).requires_grad_(False).eval()


def heldout_accuracy(
    policy: GPT, task: Task, tok: CharTokenizer, n: int, seed: int, device, temperature: float = 0.0
) -> dict:
    """Exact-match accuracy on `n` test-split prompts (greedy with temperature 0), the mean gold
    reward, the mean reply length and the mean length of wrong replies (tokens with EOS)."""
    result = evaluate_policy(policy, task, tok, n, seed, device, temperature=temperature, batch_size=250)
    right = [g == task.best_gold() for g in result["golds"]]
    wrong_lengths = [length for length, r in zip(result["lengths"], right) if not r]
    return {
        "accuracy": sum(right) / n,
        "gold_reward": result["gold_reward"],
        "response_length": result["response_length"],
        "wrong_length": sum(wrong_lengths) / len(wrong_lengths) if wrong_lengths else float("nan"),
        "samples": result["samples"],
    }


def _describe(config, max_new_tokens: int) -> str:
    """One line with the resolved settings of the method."""
    kl = (f"β {config.ref_kl_coef:g} ({config.ref_kl_estimator} to π_ref)" if config.ref_kl_coef > 0
          else "β 0 (no reference model)")
    reduction = config.loss_reduction + (f" (C = {max_new_tokens})" if config.loss_reduction == "constant" else "")
    extras = []
    if config.dynamic_sampling:
        extras.append(f"dynamic sampling (≤ {config.sampling_rounds} rounds)")
    if config.overlong_cache:
        extras.append(f"overlong penalty (L_max {config.overlong_max}, L_cache {config.overlong_cache})")
    if config.mask_truncated:
        extras.append("truncated replies masked")
    return (
        f"[llm.group] {config.algo}: {config.group_iterations} iterations × {config.group_prompts} prompts × "
        f"G={config.group_size} replies, {config.update_epochs} epoch(s) of {config.minibatch_size}-reply "
        f"minibatches, lr {config.group_lr:g}; "
        f"clip [1 − {config.clip_coef:g}, 1 + {config.clip_coef_high or config.clip_coef:g}], {kl}, "
        f"reduction {reduction}, "
        f"std {'on' if config.scale_by_std else 'off'}"
        + "".join(f", {e}" for e in extras)
    )


def train_group(
    config: GroupArgs,
    task: Task,
    tok: CharTokenizer,
    sft: GPT,
    device: torch.device,
    out: str | Path | None = None,
    progress: bool = True,
    log=None,
) -> tuple[dict[str, GPT], dict]:
    """GRPO, DAPO or Dr. GRPO (`config.algo`) from the SFT model, with its evaluation and plot.

    `config` is a `GroupArgs` (or the `PipelineConfig`); its None fields are filled for the algo
    here (`llm.config.resolve`). With `out`, the plot `<algo>[-TAG].png` is written there;
    `log(step, record)` receives the metrics every iteration.

    Returns (models, summary), the shape of every stage function: `models` = {"policy": π_θ}
    (what `<algo>.pt` holds); `summary` holds the held-out accuracy SFT → final, gold reward,
    reply lengths, dropped share, the final KL, the resolved settings, "seconds" and "history".
    """
    if config.algo not in GROUP_ALGOS:
        raise ValueError(f"algo must be one of {', '.join(GROUP_ALGOS)} for llm.group, got {config.algo!r}")
    start = time.perf_counter()
    config = resolve(config)
    print(_describe(config, task.max_new_tokens), file=sys.stderr)
    torch.manual_seed(config.seed + 4)
    policy = disable_dropout(copy_model(sft)).train()
    ref = build_reference(sft, config.ref_kl_coef)
    optimizer = adamw(policy.parameters(), config.group_lr)
    evaluate = make_evaluate(policy, None)  # values=None: no critic
    prompt_rng = random.Random(distributed.rank_seed(config.seed + 5, 1000))
    sample_gen = torch.Generator(device=device).manual_seed(distributed.rank_seed(config.seed + 6, 1000))
    shuffle_gen = torch.Generator().manual_seed(distributed.rank_seed(config.seed + 7, 1000))
    own = _rank_share(config)
    held_out = _held_out(policy, task, tok, config, device)
    before, before_sampled = held_out(), held_out(1.0)
    history: list[dict] = []
    totals = {"groups": 0, "kept_groups": 0, "uniform_groups": 0, "rounds": 0}
    bar = tqdm(range(config.group_iterations), desc=config.algo, disable=not progress, leave=False)
    for it in bar:
        # a short linear learning-rate warm-up: Adam's first steps move every weight by about lr whatever
        # the size of its gradient, before its second-moment estimate has seen any noise
        set_lr(optimizer, config.group_lr * min(1.0, (it + 1) / (config.group_warmup + 1)))
        # 1. sample groups and score them (with DAPO's filter and overlong penalty)
        gb = collect_groups(policy, task, tok, own, prompt_rng, device, sample_gen)
        totals = {key: value + gb.sampled[key] for key, value in totals.items()}
        record = {}
        if it % config.group_eval_every == 0:  # the policy that sampled this iteration's replies
            record["group/accuracy"] = (before if it == 0 else held_out())["accuracy"]
        record |= _sampled_record(gb.sampled)
        n_rows = distributed.min_over_ranks(gb.gen.reply_ids.shape[0])  # the same minibatches on every rank
        if n_rows > 0:
            # 2. log π_old (and log π_ref) of the sampled tokens
            logprobs, entropy, ref_logprobs = _sampling_logprobs(policy, ref, gb.gen)
            # 3. group-relative advantages Â_i on every token of reply i (GR-1, DR-1)
            batch = build_batch(gb.gen, gb.rewards, logprobs, ref_logprobs, config)
            batch = {key: tensor[:n_rows] for key, tensor in batch.items()}  # whole groups first
            # 4. the PPO epochs of core.ppo with the method's clip, reduction and in-loss KL
            ppo = ppo_config(own, minibatch_size=min(own.minibatch_size, n_rows))
            stats = ppo_update(evaluate, batch, optimizer, ppo, generator=shuffle_gen, ranks=distributed.ranks())
            record |= _update_record(stats, logprobs, entropy, ref_logprobs, gb.gen.reply_mask)
        # 5. log (means over the ranks)
        record = distributed.mean_over_ranks(record)
        record_iteration(history, log, it, record, config.algo, may_be_nan=("group/wrong_length",))
        bar.set_postfix(reward=f"{record['group/train_reward']:.2f}", acc=f"{record.get('group/accuracy', 0):.2f}")
    policy.eval()
    after, after_sampled = held_out(), held_out(1.0)
    # after the last update: one more point on the curve
    record_iteration(history, log, config.group_iterations, {"group/accuracy": after["accuracy"]}, config.algo)
    summary = _group_summary(config, task, history, totals, before, after, before_sampled, after_sampled)
    _report_group(out, config, history, before, after, summary, start)
    return {"policy": policy}, summary


# ---- the helpers of train_group: setup, one iteration's pieces, the summary and the outputs ----


def _rank_share(config: GroupArgs) -> GroupArgs:
    """This rank's share of every batch: group_prompts/N whole groups, minibatches of
    minibatch_size/N replies (the config itself in one process)."""
    if distributed.world_size() == 1:
        return config
    return replace(config, group_prompts=distributed.share(config.group_prompts, "group_prompts"),
                   minibatch_size=distributed.share(config.minibatch_size, "minibatch_size"))


def _held_out(policy: GPT, task: Task, tok: CharTokenizer, config: GroupArgs, device) -> Callable[..., dict]:
    """`held_out(temperature=0)`: `heldout_accuracy` of the policy on the same prompts every time."""

    def held_out(temperature: float = 0.0) -> dict:
        return heldout_accuracy(policy, task, tok, config.group_eval_prompts, config.seed + 100, device, temperature)

    return held_out


@torch.no_grad()
def _sampling_logprobs(policy: GPT, ref: GPT | None, gen: Generation):
    """(log π_old (B, R), its entropy (B, R), log π_ref (B, R) or None without a reference)."""
    logprobs, entropy = reply_logprobs(policy, gen.input_ids, gen.attention_mask, gen.reply_ids,
                                       with_entropy=True)
    ref_logprobs = None
    if ref is not None:
        ref_logprobs, _ = reply_logprobs(ref, gen.input_ids, gen.attention_mask, gen.reply_ids,
                                         name="reference model")
    return logprobs, entropy, ref_logprobs


def _sampled_record(sampled: dict) -> dict[str, float]:
    """The figures of every reply sampled this iteration, kept or not."""
    return {
        "group/train_reward": sampled["reward"],
        "group/train_accuracy": sampled["accuracy"],
        "rlhf/response_length": sampled["length"],
        "group/wrong_length": sampled["wrong_length"],
        "group/truncated_share": sampled["truncated_share"],
        "group/uniform_share": sampled["uniform_groups"] / sampled["groups"],
        "group/dropped_share": 1.0 - sampled["kept_groups"] / sampled["groups"],
    }


def _update_record(stats: dict, logprobs: torch.Tensor, entropy: torch.Tensor, ref_logprobs: torch.Tensor | None,
                   reply_mask: torch.Tensor) -> dict[str, float]:
    """The update's losses, the sampling policy's per-token entropy and (with a reference) the KL
    to π_ref per reply, Σ_t log π_old − log π_ref."""
    record = {k: v for k, v in stats.items()
              if k in ("losses/policy_loss", "losses/approx_kl", "losses/clipfrac", "losses/ref_kl")}
    record["losses/entropy"] = float(masked_mean(entropy, reply_mask))
    if ref_logprobs is not None:
        record["rlhf/ref_kl"] = float(((logprobs - ref_logprobs) * reply_mask).sum(dim=1).mean())
    return record


def _group_summary(config: GroupArgs, task: Task, history: list[dict], totals: dict, before: dict, after: dict,
                   before_sampled: dict, after_sampled: dict) -> dict:
    """The stage's summary (see `train_group`), the group counts summed over the ranks."""
    totals = dict(zip(totals, distributed.sum_over_ranks(torch.tensor(list(totals.values()))).tolist()))
    totals["rounds"] /= distributed.world_size()  # rounds per rank; the group counts are over every rank
    kls = [r["rlhf/ref_kl"] for r in history[-11:] if "rlhf/ref_kl" in r]
    return {
        "accuracy": {"sft": before["accuracy"], "final": after["accuracy"], "decoding": "greedy",
                     "prompts": config.group_eval_prompts},
        "accuracy_sampled": {"sft": before_sampled["accuracy"], "final": after_sampled["accuracy"],
                             "temperature": 1.0},
        "gold_reward": {"sft": before["gold_reward"], "final": after["gold_reward"], "best": task.best_gold()},
        "response_length": {"sft": before["response_length"], "final": after["response_length"]},
        "wrong_length": {"sft": before["wrong_length"], "final": after["wrong_length"]},
        "dropped_share": 1.0 - totals["kept_groups"] / totals["groups"],
        "uniform_share": totals["uniform_groups"] / totals["groups"],
        "sampling_rounds": totals["rounds"] / config.group_iterations,
        "kl": {"final": sum(kls) / len(kls) if kls else None, "ref_kl_coef": config.ref_kl_coef},
        # the method's own settings (config.json holds the whole resolved configuration)
        "settings": {name: getattr(config, name) for name in GroupArgs.__dataclass_fields__
                     if name not in PolicyArgs.__dataclass_fields__ or name == "ref_kl_coef"},
    }


def _report_group(out: str | Path | None, config: GroupArgs, history: list[dict], before: dict, after: dict,
                  summary: dict, start: float) -> None:
    """With `out`, the plot <algo>[-TAG].png; the stage's result line; the summary's seconds and history."""
    suffix = tag_suffix(config.tag)
    if out is not None:
        plot_group(
            {f"{config.algo}{suffix}": history},
            Path(out) / f"{config.algo}{suffix}.png",
            sft_accuracy=before["accuracy"],
            title=f"{config.algo} on '{config.task}': held-out accuracy {before['accuracy']:.1%} → "
            f"{after['accuracy']:.1%}",
        )
    seconds = time.perf_counter() - start
    print(
        f"[llm.group] {config.algo}: held-out accuracy (greedy) {before['accuracy']:.3f} → {after['accuracy']:.3f}, "
        f"reply length {before['response_length']:.2f} → {after['response_length']:.2f} "
        f"(wrong {before['wrong_length']:.2f} → {after['wrong_length']:.2f}), "
        f"groups dropped {summary['dropped_share']:.1%}, in {seconds:.0f}s",
        file=sys.stderr,
    )
    summary["seconds"], summary["history"] = seconds, history
