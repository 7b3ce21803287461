"""Stage 2: the reward model R_φ(x, y), a scalar head on the SFT transformer, trained by
Bradley–Terry on preference pairs (RM-1; notes 001 (PPO for LLMs) and 004 (PG to GRPO)).

Note 004: "RM是通过预训练模型+数据对来实现训练的 … 最后的LM-head换成正常的value-head": the
reward model is the SFT model with its language-model head replaced by a scalar head. Its
score for a reply is the head's output on the reply's last real token (EOS), which has
attended to the whole prompt and reply.

The annotator's labels are noisy (Bradley–Terry sampling on the hidden gold reward), so the
reward model is judged against the *gold ranking* on held-out pairs whose gold rewards differ,
not against the labels.

Under torchrun (`core.distributed`) every rank draws the same batch of `rm_batch_size` pairs and
trains on its share, pairs r, r + N, …; the gradients are averaged before the clip (the
Bradley–Terry loss is a mean over pairs, so this is the gradient of the whole batch). Every rank
evaluates the same held-out pairs.
"""

from __future__ import annotations

import random
import sys
import time

import torch
from tqdm import tqdm

from core import distributed
from core.checks import check_finite
from core.preference import bradley_terry_loss
from llm.config import RMArgs
from llm.gpt import GPT
from llm.model_interface import HFModel, context_length, hf_scalar_model_from
from llm.optim import adamw, lr_at, set_lr
from llm.rollout import last_token_scores, pad_sequences
from llm.tasks import PreferencePair, Task, preference_pairs
from llm.tokenizer import CharTokenizer

__all__ = [
    "scalar_model_from",
    "score_replies",
    "pair_scores",
    "train_reward_model",
    "evaluate_reward_model",
]


def scalar_model_from(lm: GPT, head_weights: GPT | None = None) -> GPT:
    """A scalar-head model (`head='scalar'`) with the transformer weights of `lm`.

    The new head starts at zero, so every score starts at 0 and the first steps of training
    move the head before they move the body. With `head_weights` (a scalar model) the head is
    copied from it too: that is how the value model starts as the reward model (RM-5).
    A wrapped model (`llm.model_interface.HFModel`) gets the same: its body and a zero `Linear(hidden, 1)`.
    """
    if isinstance(lm, HFModel):
        return hf_scalar_model_from(lm, head_weights)
    model = GPT(lm.config, head="scalar").to(next(lm.parameters()).device)
    body = {k: v for k, v in lm.state_dict().items() if k.startswith("transformer.")}
    missing, unexpected = model.load_state_dict(body, strict=False)
    assert not unexpected and all(k.startswith("score_head.") for k in missing), (
        missing,
        unexpected,
    )
    torch.nn.init.zeros_(model.score_head.weight)
    torch.nn.init.zeros_(model.score_head.bias)
    if head_weights is not None:
        model.load_state_dict(head_weights.state_dict())
    return model


def score_replies(
    reward_model: GPT,
    tok: CharTokenizer,
    prompts: list[str],
    replies: list[str],
    device,
    batch_size: int = 256,
) -> torch.Tensor:
    """R_φ(x, y) for each (prompt, reply), the reply followed by EOS. Returns (N,) on the CPU."""
    out = []
    with torch.no_grad():
        for i in range(0, len(prompts), batch_size):
            ids, _, lengths = pad_sequences(
                tok,
                prompts[i : i + batch_size],
                replies[i : i + batch_size],
                context_length(reward_model),
                device,
            )
            scores = last_token_scores(reward_model(ids), lengths=lengths)  # (b,)
            check_finite(**{"reward model scores": scores})
            out.append(scores.cpu())
    return torch.cat(out)


def pair_scores(
    reward_model: GPT, tok: CharTokenizer, pairs: list[PreferencePair], device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(R(x, y⁺), R(x, y⁻)) for a list of pairs, both sides in one forward pass. Each (B,)."""
    prompts = [p.prompt for p in pairs] * 2
    replies = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    ids, _, lengths = pad_sequences(tok, prompts, replies, context_length(reward_model), device)
    scores = last_token_scores(reward_model(ids), lengths=lengths)  # (2B,): read on EOS
    return scores[: len(pairs)], scores[len(pairs) :]


def evaluate_reward_model(
    reward_model: GPT, tok: CharTokenizer, pairs: list[PreferencePair], device
) -> dict:
    """Held-out label accuracy, and agreement with the gold ranking where gold rewards differ."""
    with torch.no_grad():
        chosen = score_replies(
            reward_model, tok, [p.prompt for p in pairs], [p.chosen for p in pairs], device
        )
        rejected = score_replies(
            reward_model, tok, [p.prompt for p in pairs], [p.rejected for p in pairs], device
        )
    gold_diff = torch.tensor([p.gold_chosen - p.gold_rejected for p in pairs])
    differs = gold_diff != 0
    agree = (torch.sign(chosen - rejected) == torch.sign(gold_diff)) & differs
    return {
        "label_accuracy": float((chosen > rejected).float().mean()),
        "gold_agreement": float(agree.sum() / differs.sum().clamp(min=1)),
        "gold_pairs": int(differs.sum()),
        "score_mean": float(torch.cat([chosen, rejected]).mean()),
        "score_std": float(torch.cat([chosen, rejected]).std()),
    }


def train_reward_model(
    config: RMArgs,
    task: Task,
    tok: CharTokenizer,
    sft: GPT,
    device: torch.device,
    out=None,
    progress: bool = True,
    log=None,
) -> tuple[dict[str, GPT], dict]:
    """Bradley–Terry training from the SFT weights, then the held-out evaluation.

    `sft` is the SFT model (the stage's "model"). Returns (models, summary), the
    shape of every stage's `train`: `models` = {"reward_model": R_φ} (what `rm.pt` holds),
    `summary` = `evaluate_reward_model`'s held-out figures (label accuracy, agreement with the
    gold ranking, ...) plus "seconds" and "history". `log(step, {"rm/loss": …, "rm/accuracy": …})`
    receives training metrics every 10 steps. `out` is unused (no figure).
    """
    torch.manual_seed(config.seed + 2)
    model = scalar_model_from(sft)
    model.train()
    train_pairs = preference_pairs(
        task, config.rm_pairs, seed=config.seed + 10, label_temperature=config.label_temperature
    )
    held_out = preference_pairs(
        task,
        config.rm_eval_pairs,
        seed=config.seed + 20,
        label_temperature=config.label_temperature,
        split="test",
    )
    rng = random.Random(config.seed + 3)
    rank, world = distributed.rank(), distributed.world_size()
    distributed.share(config.rm_batch_size, "rm_batch_size")
    optimizer = adamw(model.parameters(), config.rm_lr, weight_decay=0.01, eps=1e-8)
    start = time.perf_counter()
    history = []
    bar = tqdm(range(config.rm_steps), desc="reward model", disable=not progress, leave=False)
    for step in bar:
        batch = [train_pairs[rng.randrange(len(train_pairs))] for _ in range(config.rm_batch_size)][rank::world]
        set_lr(optimizer, lr_at(step, config.rm_steps, config.rm_lr))
        chosen, rejected = pair_scores(model, tok, batch, device)
        loss = bradley_terry_loss(chosen, rejected).mean()  # RM-1
        check_finite(**{"reward-model loss": loss})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(model.parameters())  # under torchrun: the mean over ranks
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        accuracy = (chosen > rejected).float().mean().item()
        bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{accuracy:.2f}")
        if step % 10 == 0 or step == config.rm_steps - 1:
            record = distributed.mean_over_ranks({"rm/loss": loss.item(), "rm/accuracy": accuracy})
            history.append({"step": step, **record})
            if log is not None:
                log(step, record)
    model.eval()
    summary = evaluate_reward_model(model, tok, held_out, device)
    summary["seconds"] = time.perf_counter() - start
    summary["history"] = history
    print(
        f"[llm.reward_model] held-out agreement with the gold ranking {summary['gold_agreement']:.3f} "
        f"({summary['gold_pairs']} pairs), label accuracy {summary['label_accuracy']:.3f}, "
        f"in {summary['seconds']:.0f}s",
        file=sys.stderr,
    )
    return {"reward_model": model}, summary
