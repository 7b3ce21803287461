"""Direct preference methods: DPO (DP-1), IPO (DP-2) and KTO (DP-3) on the task's preference pairs.

    python -m llm.pipeline --algo dpo                                   # SFT → DPO, task 'reviews'
    python -m llm.pipeline --algo ipo --stage ipo --out runs/llm-reviews  # reuse that run's sft.pt
    python -m llm.pipeline --algo dpo --stage dpo --ref-kl-coef 0.3 --tag b03   # another β, its own files

No reward model and no sampling loop. The policy π_θ starts as the SFT model and learns from
labelled pairs (x, y_w ≻ y_l) drawn by `llm.tasks.preference_pairs` — the reward model's
generator, seeds and simulated annotator (Bradley–Terry sampling on the hidden gold reward) —
against a frozen reference π_ref, the SFT model itself. Every loss reads sequence log-probs and
their log-ratio to the reference:

    log π(y|x) = Σ_t log π(y_t | x, y_<t)   over the reply tokens and EOS      (IS-2)
    r_θ(x, y)  = log π_θ(y|x) − log π_ref(y|x)
    h          = r_θ(x, y_w) − r_θ(x, y_l)                    (`core.preference.preference_margin`)

    DPO (DP-1)  L = −log σ(β h)                                       (`core.preference.dpo_loss`)
    IPO (DP-2)  L = (h − 1/(2τ))²                                     (`core.preference.ipo_loss`)
    KTO (DP-3)  L = λ_y − v(x, y),   v = λ_D σ(β (r_θ − z₀))  if y is desirable,
                                         λ_U σ(β (z₀ − r_θ))  if y is undesirable,
                z₀ = max(0, mean r_θ over mismatched pairs), no gradient   (`kto_loss`,
                                                                     `kto_reference_point`)

Symbols → fields: β → `ref_kl_coef` (the glossary's name: β weighs the KL to π_ref in the
objective DPO and KTO solve), τ → `tau` (IPO's own symbol), λ_D, λ_U → `kto_desirable_weight`,
`kto_undesirable_weight`.

β r_θ(x, y) is the *implicit reward* (RM-2 solved for r): the reward for which π_θ is the
optimum of max E[r] − β KL[π‖π_ref]; its unknown log Z(x) cancels in a pair's difference. IPO's
τ plays β's part in its own KL-regularised objective, so the implicit rewards logged for IPO
are τ r_θ. The losses live in `core.preference`; this module only feeds them.

Erratum E7. Note 004 (PG to GRPO) says DPO "computes a KL divergence" of the two differences (计算KL散度) and
builds the loss from it. It does not: the loss is a log-sigmoid of a *difference of log-ratios*,
−log σ(β h), and no KL is computed anywhere in training. The KL reported here (`rlhf/ref_kl`) is a
separate measurement on replies sampled from π_θ — k1, the mean over replies of
log π_θ(y|x) − log π_ref(y|x) with y ~ π_θ — to see how far the policy went, as for PPO.

Sources: note 004 (DPO, KTO, IPO); Rafailov et al. 2023, "Direct Preference Optimization: Your
Language Model is Secretly a Reward Model"; Azar et al. 2023, "A General Theoretical Paradigm
to Understand Learning from Human Preferences" (IPO); Ethayarajh et al. 2024, "KTO: Model
Alignment as Prospect Theoretic Optimization".

Deviations from the papers, and why:
- a model trained from scratch and generated pairs. The pairs are *off-policy*: written by the
  annotator's writers of random mood (repeats, misspellings), not sampled from π_SFT as in the
  DPO paper's controlled-sentiment experiment. DPO can then lower both replies of a pair and
  move probability to replies no pair contains; the KL on sampled replies shows when it does;
- the reference log-probs of every training row (and, for KTO, of every mismatched pair) are
  computed once before training (TRL's `precompute_ref_log_probs`): exact, since π_ref is
  frozen and dropout is off;
- sums of token log-probs for all three (the papers' definition); TRL's "ipo" averages over
  tokens instead, which changes the scale of τ;
- KTO's data is the pairs taken apart: every chosen reply is desirable, every rejected one
  undesirable, one label per reply, shuffled (the two replies of a pair rarely share a batch);
  n_D = n_U, so λ_D = λ_U = 1 meets the paper's 1 ≤ λ_D n_D / λ_U n_U ≤ 4/3. z₀ uses the
  mismatched pairs of each batch — prompt i with the reply of example i + 1, cyclically — and
  since the batches are fixed chunks of one shuffled order, their reference log-probs are
  precomputed too (TRL also builds its mismatched pairs once, by shifting within a batch). A
  KTO batch counts labelled replies, a DPO/IPO batch pairs (as TRL counts them), so at the
  same pref_batch_size KTO reads half as many sequences per step;
- at most one pass over the pairs at the default sizes, in a fixed shuffled order (a longer run
  cycles through them again); AdamW with a linear warm-up and cosine decay, gradient norm
  clipped at 1; no label smoothing (cDPO) and no added SFT term (RPO);
- hyperparameters for a 1M-parameter model and a one-minute budget: β = 1 and τ = 0.1, peak
  learning rate 1e-4 for DPO and 2e-4 for IPO and KTO, 60 steps × 24 (the DPO and KTO papers
  use β = 0.1 and learning rates near 1e-6 on models of billions of parameters). On these
  off-policy pairs a smaller β or a larger learning rate moved the policy into misspelt
  replies, which the gold reward calls ungrammatical (llm/README.md has the runs). DPO's
  learning rate was 2e-4 until `llm.bench_transfer`: after a 150-step SFT it took the character
  GPT's DPO below the SFT policy, the chosen replies' log-ratio falling with the rejected ones'
  and the KL on sampled replies reaching 3–5 nats (seeds 1 and 2; β = 0.1 and 3 did the same on
  seed 1); at 1e-4 DPO ends above SFT in all nine cells of the benchmark, though it moves the
  tiny random models less (llm/README.md, "Defaults that transfer").

Under torchrun (`core.distributed`) each batch of `pref_batch_size` rows is split over the N
ranks (rank r takes rows r, r + N, …) and the gradients are averaged before the clip: the losses
are means over rows, so the step is the one of the whole batch. KTO's z₀ is the rank-averaged
mean log-ratio, clamped (each rank's mismatched pairs are drawn within its own share). Every rank
evaluates the same prompts and held-out pairs; only rank 0 writes.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from core import distributed
from core.checks import check_finite
from core.preference import dpo_loss, ipo_loss, kto_loss, kto_reference_point, sequence_logprobs
from llm.config import PREFERENCE_ALGOS, PreferenceArgs, resolve, tag_suffix
from llm.gpt import GPT, disable_dropout
from llm.model_interface import context_length, copy_model
from llm.optim import adamw, lr_at, set_lr
from llm.plots import PREFERENCE_PANELS, plot_rlhf
from llm.rlhf import evaluate_policy
from llm.rollout import Generation, pad_sequences, reply_logprobs, token_logprobs
from llm.tasks import PreferencePair, Task, preference_pairs
from llm.tokenizer import CharTokenizer

__all__ = [
    "check_pairs",
    "sequence_logps",
    "batched_logps",
    "kl_scorer",
    "evaluate",
    "held_out_accuracy",
    "TrainingRows",
    "training_rows",
    "train_preference",
]


def check_pairs(pairs: list[PreferencePair], name: str = "pairs") -> None:
    """Refuse a pair with a missing side: a prompt that is None, or a chosen or rejected reply
    that is None or empty (a pair needs two replies to compare). The message names the index."""
    if not pairs:
        raise ValueError(f"{name}: no preference pairs")
    for i, pair in enumerate(pairs):
        if getattr(pair, "prompt", None) is None:
            raise ValueError(f"{name}[{i}] has no prompt (got None)")
        for side in ("chosen", "rejected"):
            reply = getattr(pair, side, None)
            if reply is None or reply == "":
                raise ValueError(
                    f"{name}[{i}] has no {side} reply (got {reply!r}): a preference pair needs a "
                    "chosen and a rejected reply"
                )


def sequence_logps(model: GPT, tok: CharTokenizer, prompts: list[str], replies: list[str], device) -> torch.Tensor:
    """log π(y|x) = Σ_t log π(y_t | x, y_<t) over the reply tokens and EOS (IS-2). Returns (N,).

    Rows are right-padded `[BOS] prompt reply [EOS]` (`pad_sequences`): causal attention never
    looks right, so no mask is needed and each row computes as if it were alone. Gradients flow
    when the caller has them on.
    """
    ids, reply_mask, _ = pad_sequences(tok, prompts, replies, context_length(model), device)  # (N, T)
    logits = model(ids[:, :-1])  # (N, T − 1, V): position t predicts token t + 1
    check_finite(**{"policy logits": logits})
    logps = token_logprobs(logits, ids[:, 1:])  # (N, T − 1)
    return sequence_logprobs(logps, reply_mask[:, 1:])  # (N,): reply tokens and EOS only


@torch.no_grad()
def batched_logps(
    model: GPT, tok: CharTokenizer, prompts: list[str], replies: list[str], device, batch_size: int = 256
) -> torch.Tensor:
    """`sequence_logps` of many (prompt, reply) rows, in chunks of `batch_size`, without
    gradients: the reference's log-probs before training, the policy's for evaluation. (N,)"""
    out = [
        sequence_logps(model, tok, prompts[i : i + batch_size], replies[i : i + batch_size], device)
        for i in range(0, len(prompts), batch_size)
    ]
    return torch.cat(out)  # (N,) on `device`


def kl_scorer(policy: GPT, ref: GPT) -> Callable:
    """score_fn for `llm.rlhf.evaluate_policy` that returns, per sampled reply y ~ π_θ, the k1
    estimate of its KL to the reference: log π_θ(y|x) − log π_ref(y|x), summed over the reply's
    real tokens (EOS included). The mean over replies estimates KL[π_θ‖π_ref] per reply (KL-2)."""

    def score(gen: Generation, prompts, replies) -> torch.Tensor:
        ids, attention = gen.input_ids, gen.attention_mask
        logps, _ = reply_logprobs(policy, ids, attention, gen.reply_ids, name="policy")  # (B, R)
        ref_logps, _ = reply_logprobs(ref, ids, attention, gen.reply_ids, name="reference model")
        return sequence_logprobs(logps - ref_logps, gen.reply_mask)  # (B,)

    return score


def evaluate(policy: GPT, ref: GPT, task: Task, tok: CharTokenizer, n: int, seed: int, device) -> dict:
    """Gold reward, KL to π_ref, length and EOS rate of replies sampled at temperature 1 for `n`
    fixed prompts (`llm.rlhf.evaluate_policy`: the prompts and seed of PPO's before/after)."""
    result = evaluate_policy(policy, task, tok, n, seed, device, score_fn=kl_scorer(policy, ref))
    return {
        "rlhf/gold_reward": result["gold_reward"],
        "rlhf/ref_kl": result["score"],  # the scorer above returns each reply's log-ratio
        "rlhf/response_length": result["response_length"],
        "rlhf/eos_rate": result["eos_rate"],
    }


@torch.no_grad()
def held_out_accuracy(
    policy: GPT,
    tok: CharTokenizer,
    pairs: list[PreferencePair],
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    device,
    batch_size: int = 256,
) -> dict:
    """How often the implicit reward ranks the chosen reply above the rejected one (h > 0), on
    pairs the method never trained on: against the annotator's labels (noisy by design) and
    against the gold ranking where the gold rewards differ. β does not matter: only h's sign.
    At π_θ = π_ref every h is 0, so both figures start at 0 (no pair is ranked)."""
    prompts = [p.prompt for p in pairs]
    chosen = batched_logps(policy, tok, prompts, [p.chosen for p in pairs], device, batch_size)  # (N,)
    rejected = batched_logps(policy, tok, prompts, [p.rejected for p in pairs], device, batch_size)
    h = ((chosen - ref_chosen) - (rejected - ref_rejected)).cpu()  # (N,)
    gold_diff = torch.tensor([p.gold_chosen - p.gold_rejected for p in pairs])  # (N,)
    differs = gold_diff != 0
    agree = (torch.sign(h) == torch.sign(gold_diff)) & differs
    return {
        "accuracy": float((h > 0).float().mean()),
        "gold_agreement": float(agree.sum() / differs.sum().clamp(min=1)),
        "pairs": len(pairs),
        "gold_pairs": int(differs.sum()),
        "margin": float(h.mean()),
    }


def train_preference(
    config: PreferenceArgs,
    task: Task,
    tok: CharTokenizer,
    sft: GPT,
    device,
    out: str | Path | None = None,
    progress: bool = True,
    log=None,
    *,
    pairs: list[PreferencePair] | None = None,
    eval_pairs: list[PreferencePair] | None = None,
) -> tuple[dict[str, GPT], dict]:
    """Train `config.algo` ('dpo', 'ipo' or 'kto') from the SFT model, with its evaluation and plot.

    `config` is a `PreferenceArgs` (or the `PipelineConfig`; `dataclasses.replace` it for another
    β or τ); its None fields are resolved here (`llm.config.resolve`). `pairs` / `eval_pairs`
    replace the generated training / held-out pairs.
    `log(step, metrics)` receives the training metrics every step and the evaluation metrics
    every `pref_eval_every` steps; `step` counts the optimiser updates done. With `out`, the
    plot `<algo>[-tag].png` is written there (a tagged call never overwrites an untagged one).

    Returns (models, summary), the shape of every stage function: `models` = {"policy": π_θ}
    (what `<algo>.pt` holds); `summary` = {"gold_reward", "kl", "preference": the held-out
    implicit-reward accuracy and the method's settings, "seconds": wall-clock of the whole call,
    "history": every logged record}.
    """
    config = resolve(config)
    start = time.perf_counter()
    algo = config.algo
    if algo not in PREFERENCE_ALGOS:
        raise ValueError(f"algo must be one of {', '.join(PREFERENCE_ALGOS)} for llm.preference, got {algo!r}")
    torch.manual_seed(config.seed + 30)
    pairs, eval_pairs = _preference_pairs(config, task, pairs, eval_pairs)
    coef = config.tau if algo == "ipo" else config.ref_kl_coef  # of the implicit reward: β (DPO, KTO), τ (IPO)
    policy = disable_dropout(copy_model(sft)).train()
    ref = disable_dropout(copy_model(sft)).requires_grad_(False).eval()  # frozen π_ref
    rows = training_rows(config, pairs, tok, ref, device)  # with π_ref's log-probs, computed once
    eval_ref = [batched_logps(ref, tok, [p.prompt for p in eval_pairs], [getattr(p, side) for p in eval_pairs],
                              device) for side in ("chosen", "rejected")]
    print(_describe(config, coef, rows, time.perf_counter() - start), file=sys.stderr)
    optimizer = adamw(policy.parameters(), config.pref_lr, eps=1e-8)
    history: list[dict] = []
    before, eval_seconds = _evaluate(policy, ref, task, tok, config, device, history, log, 0)  # π_θ = π_ref: KL 0
    last = before
    bar = tqdm(range(config.pref_steps), desc=algo, disable=not progress, leave=False)
    for step in bar:
        k = step % rows.n_batches
        batch = slice(k * rows.B, (k + 1) * rows.B)  # this step's rows
        lr = lr_at(step, config.pref_steps, config.pref_lr)
        set_lr(optimizer, lr)
        # 1. the method's loss on the batch, from π_θ's and π_ref's sequence log-probs
        step_loss = _kto_loss if algo == "kto" else _pair_loss
        losses, chosen_ratio, rejected_ratio, extra = step_loss(policy, tok, rows, batch, config, coef, device)
        loss = losses.mean()
        check_finite(**{f"{algo} loss": loss})
        # 2. one optimiser step (gradients averaged over the ranks, then clipped)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(policy.parameters())  # under torchrun: the mean over ranks
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        # 3. log; every pref_eval_every steps, the gold reward and KL of sampled replies
        margin = float(chosen_ratio.mean() - rejected_ratio.mean())
        _record(history, log, step, _step_record(loss, margin, chosen_ratio, rejected_ratio, coef, lr, extra))
        if (step + 1) % config.pref_eval_every == 0 or step + 1 == config.pref_steps:
            last, seconds = _evaluate(policy, ref, task, tok, config, device, history, log, step + 1)
            eval_seconds += seconds
        bar.set_postfix(loss=f"{loss.item():.3f}", h=f"{margin:.2f}", gold=f"{last['rlhf/gold_reward']:.2f}",
                        kl=f"{last['rlhf/ref_kl']:.2f}")
    policy.eval()
    held_out = held_out_accuracy(policy, tok, eval_pairs, *eval_ref, device)
    summary = _preference_summary(config, task, coef, history, before, last, held_out, eval_seconds, start)
    _report_preference(out, config, task, coef, history, before, last, held_out, summary)
    return {"policy": policy}, summary


# ---- the helpers of train_preference: the data, one step's loss, evaluation, summary and outputs ----


def _preference_pairs(config: PreferenceArgs, task: Task, pairs: list[PreferencePair] | None,
                      eval_pairs: list[PreferencePair] | None) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """The training and held-out pairs (generated unless given), checked."""
    if pairs is None:
        pairs = preference_pairs(
            task, config.pref_pairs, seed=config.seed + 10, label_temperature=config.label_temperature
        )
    if eval_pairs is None:
        eval_pairs = preference_pairs(
            task,
            config.pref_eval_pairs,
            seed=config.seed + 20,
            label_temperature=config.label_temperature,
            split="test",
        )
    check_pairs(pairs, "pairs")
    check_pairs(eval_pairs, "eval_pairs")
    return pairs, eval_pairs


@dataclass
class TrainingRows:
    """The rows training reads, in batch order (batch k is rows k·B … (k + 1)·B − 1 of this rank),
    with π_ref's sequence log-probs of each (π_ref never changes)."""

    B: int
    """Rows per step on this rank."""
    n_batches: int
    """Steps per pass over the rows."""
    prompts: list[str]
    chosen: list[str]
    """DPO, IPO: the chosen reply of each pair; KTO: the labelled reply of each row."""
    rejected: list[str]
    """DPO, IPO: the rejected reply of each pair; KTO: the reply of the row's mismatched pair."""
    ref_chosen: torch.Tensor
    """(M,) log π_ref of `chosen`."""
    ref_rejected: torch.Tensor
    """(M,) log π_ref of `rejected`."""
    desirable: torch.Tensor | None = None
    """KTO: (M,) bool, the row's reply was the chosen one."""


def training_rows(config: PreferenceArgs, pairs: list[PreferencePair], tok: CharTokenizer, ref: GPT,
                  device) -> TrainingRows:
    """The training rows, in batch order: pairs for DPO and IPO; for KTO the pairs taken apart, one
    labelled reply per row (chosen → desirable, rejected → undesirable), and each row's mismatched
    pair (its prompt with the reply of the next row of its batch, cyclically). One shuffle, then at
    most one pass: batch k is rows[k·B : (k + 1)·B], and a run longer than one pass cycles through
    them again. Only the rows training will see get reference log-probs. Under torchrun, this
    rank's share of every batch: rows r, r + N, … of it."""
    kto = config.algo == "kto"
    if kto:
        rows = [(p.prompt, p.chosen, True) for p in pairs] + [(p.prompt, p.rejected, False) for p in pairs]
    else:
        rows = [(p.prompt, p.chosen, p.rejected) for p in pairs]
    B = config.pref_batch_size
    if len(rows) < B:
        raise ValueError(f"{len(rows)} training rows cannot fill one batch of pref_batch_size={B}")
    random.Random(config.seed + 31).shuffle(rows)
    n_batches = min(config.pref_steps, len(rows) // B)
    rows = rows[: n_batches * B]
    if distributed.world_size() > 1:  # this rank's share of every batch: rows r, r + N, … of it
        rank, world = distributed.rank(), distributed.world_size()
        B = distributed.share(B, "pref_batch_size")
        rows = [rows[k * B * world + j] for k in range(n_batches) for j in range(rank, B * world, world)]
    prompts, replies = [r[0] for r in rows], [r[1] for r in rows]
    if kto:  # the second reply of a row is that of its mismatched pair
        others = [replies[k * B + (j + 1) % B] for k in range(n_batches) for j in range(B)]
    else:
        others = [r[2] for r in rows]
    return TrainingRows(
        B, n_batches, prompts, replies, others,
        ref_chosen=batched_logps(ref, tok, prompts, replies, device),  # (M,)
        ref_rejected=batched_logps(ref, tok, prompts, others, device),  # (M,)
        desirable=torch.tensor([r[2] for r in rows], dtype=torch.bool, device=device) if kto else None,
    )


def _pair_loss(policy: GPT, tok: CharTokenizer, rows: TrainingRows, batch: slice, config: PreferenceArgs,
               coef: float, device):
    """DPO's or IPO's per-pair loss (B,) on the batch, the detached log-ratios r_θ of the chosen and
    the rejected replies (B,) each, and the extra figures (the batch's pair accuracy)."""
    both = sequence_logps(
        policy, tok, rows.prompts[batch] * 2, rows.chosen[batch] + rows.rejected[batch], device
    )  # (2B,): both sides in one forward pass
    policy_chosen, policy_rejected = both[: rows.B], both[rows.B :]  # (B,) each
    loss_fn = ipo_loss if config.algo == "ipo" else dpo_loss
    losses = loss_fn(policy_chosen, policy_rejected, rows.ref_chosen[batch], rows.ref_rejected[batch], coef)  # (B,)
    chosen_ratio = (policy_chosen - rows.ref_chosen[batch]).detach()  # (B,)
    rejected_ratio = (policy_rejected - rows.ref_rejected[batch]).detach()  # (B,)
    accuracy = float((chosen_ratio > rejected_ratio).float().mean())
    return losses, chosen_ratio, rejected_ratio, {"pref/accuracy": accuracy}


def _kto_loss(policy: GPT, tok: CharTokenizer, rows: TrainingRows, batch: slice, config: PreferenceArgs,
              coef: float, device):
    """KTO's per-reply loss (B,) on the batch with z₀ from its mismatched pairs (the mean over the
    ranks, then clamped, under torchrun), the detached log-ratios r_θ of the desirable and the
    undesirable replies, and the extra figures (z₀)."""
    policy_logps = sequence_logps(policy, tok, rows.prompts[batch], rows.chosen[batch], device)  # (B,)
    ref_mismatched = rows.ref_rejected[batch]
    with torch.no_grad():  # z₀ carries no gradient, so its forward pass needs none
        policy_mismatched = sequence_logps(policy, tok, rows.prompts[batch], rows.rejected[batch], device)  # (B,)
    z0 = kto_reference_point(policy_mismatched, ref_mismatched)
    if distributed.world_size() > 1:  # z₀ over every rank's mismatched pairs: mean, then clamp
        local = float((policy_mismatched - ref_mismatched).mean())
        z0 = torch.tensor(max(0.0, distributed.mean_over_ranks({"z": local})["z"]), device=z0.device)
    good = rows.desirable[batch]  # (B,)
    losses = kto_loss(policy_logps, rows.ref_chosen[batch], good, z0, config.ref_kl_coef,
                      config.kto_desirable_weight, config.kto_undesirable_weight)  # (B,)
    log_ratio = (policy_logps - rows.ref_chosen[batch]).detach()  # (B,)
    return losses, log_ratio[good], log_ratio[~good], {"pref/kto_z0": float(z0)}


def _step_record(loss: torch.Tensor, margin: float, chosen_ratio: torch.Tensor, rejected_ratio: torch.Tensor,
                 coef: float, lr: float, extra: dict) -> dict[str, float]:
    """One step's figures, means over the ranks: the loss, the margin h, the implicit rewards coef·r_θ
    of the chosen (desirable) and rejected (undesirable) replies, the learning rate and `extra`."""
    return distributed.mean_over_ranks({
        "pref/loss": loss.item(),
        "pref/margin": margin,
        "pref/chosen_reward": coef * float(chosen_ratio.mean()),
        "pref/rejected_reward": coef * float(rejected_ratio.mean()),
        "charts/learning_rate": lr,
        **extra,
    })


def _record(history: list[dict], log, step: int, values: dict) -> None:
    """Append `values` at `step` to `history` and pass them to `log(step, values)`."""
    history.append({"step": step, **values})
    if log is not None:
        log(step, values)


def _evaluate(policy: GPT, ref: GPT, task: Task, tok: CharTokenizer, config: PreferenceArgs, device,
              history: list[dict], log, step: int) -> tuple[dict, float]:
    """`evaluate` on the eval_prompts fixed prompts, recorded at `step`; (its figures, its seconds)."""
    t0 = time.perf_counter()
    values = evaluate(policy, ref, task, tok, config.eval_prompts, config.seed + 100, device)
    policy.train()
    seconds = time.perf_counter() - t0
    _record(history, log, step, values)
    return values, seconds


def _describe(config: PreferenceArgs, coef: float, rows: TrainingRows, seconds: float) -> str:
    """One line with the method's settings and the time the reference log-probs took."""
    algo = config.algo
    return (
        f"[llm.preference] {algo}: {'τ' if algo == 'ipo' else 'β'} {coef:g}, {config.pref_steps} steps × {rows.B} "
        f"{'labelled replies' if algo == 'kto' else 'pairs'} ({len(rows.prompts)} rows, {rows.n_batches} steps a "
        f"pass), lr {config.pref_lr:g}; reference log-probs in {seconds:.1f}s"
    )


def _preference_summary(config: PreferenceArgs, task: Task, coef: float, history: list[dict], before: dict,
                        last: dict, held_out: dict, eval_seconds: float, start: float) -> dict:
    """The stage's summary (see `train_preference`)."""
    algo = config.algo
    return {
        "gold_reward": {"sft": before["rlhf/gold_reward"], "final": last["rlhf/gold_reward"], "best": task.best_gold()},
        "kl": {"final": last["rlhf/ref_kl"], "target": None},
        "preference": {
            "algo": algo,
            "tau" if algo == "ipo" else "ref_kl_coef": coef,
            "held_out_accuracy": held_out["accuracy"],
            "held_out_gold_agreement": held_out["gold_agreement"],
            "held_out_pairs": held_out["pairs"],
            "held_out_gold_pairs": held_out["gold_pairs"],
            "held_out_margin": held_out["margin"],
            "steps": config.pref_steps,
            "eval_seconds": eval_seconds,
            "response_length": {"sft": before["rlhf/response_length"], "final": last["rlhf/response_length"]},
            "eos_rate": {"sft": before["rlhf/eos_rate"], "final": last["rlhf/eos_rate"]},
        },
        "seconds": time.perf_counter() - start,
        "history": history,
    }


def _report_preference(out: str | Path | None, config: PreferenceArgs, task: Task, coef: float, history: list[dict],
                       before: dict, last: dict, held_out: dict, summary: dict) -> None:
    """With `out`, the plot <algo>[-TAG].png; the stage's result line."""
    algo, best = config.algo, task.best_gold()
    if out is not None:
        name = f"{algo}{tag_suffix(config.tag)}"
        plot_rlhf(
            {f"{name} ({'τ' if algo == 'ipo' else 'β'}={coef:g})": history},
            Path(out) / f"{name}.png",
            best_gold=best,
            sft_gold=before["rlhf/gold_reward"],
            title=f"{algo.upper()} on '{task.name}'",
            panels=PREFERENCE_PANELS,
            xlabel="optimiser step",
            lines={"pref/margin": (1 / (2 * coef), "IPO target 1/(2τ)")} if algo == "ipo" else None,
        )
    print(
        f"[llm.preference] {algo}: gold reward {before['rlhf/gold_reward']:.3f} → {last['rlhf/gold_reward']:.3f} "
        f"(best {best:.3f}), KL {last['rlhf/ref_kl']:.2f}, held-out accuracy {held_out['accuracy']:.3f} "
        f"(gold agreement {held_out['gold_agreement']:.3f}), in {summary['seconds']:.0f}s "
        f"({summary['preference']['eval_seconds']:.0f}s evaluating)",
        file=sys.stderr,
    )
