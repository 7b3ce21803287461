"""Stage 1: supervised fine-tuning by next-token cross-entropy on demonstrations.

The model starts from random weights (there is no pretrained model to download) and learns
the task's demonstrations: `[BOS] prompt reply [EOS]`, loss on the reply tokens and EOS only,
so the model learns to answer and to stop, not to write prompts. The result is the starting
policy of RL, the frozen reference π_ref, and the initial weights of the reward model.

Deviations from common recipes: training from scratch instead of fine-tuning a pretrained
model, and a demonstrator that is a grammar rather than people.

Under torchrun (`core.distributed`) every rank draws the same batch of `sft_batch_size`
demonstrations and trains on its share, rows r, r + N, …; the gradients are averaged before the
clip, so the run sees the batches one process would (each rank's loss is its share's token mean).
"""

from __future__ import annotations

import random
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from core import distributed
from core.checks import check_finite
from llm.config import SFTArgs, resolve
from llm.gpt import GPT
from llm.model_interface import build_model, context_length
from llm.optim import adamw, lr_at, set_lr
from llm.rollout import pad_sequences
from llm.tasks import Task, sft_examples
from llm.tokenizer import CharTokenizer

__all__ = ["sft_loss", "train_sft"]


def sft_loss(model: GPT, ids: torch.Tensor, reply_mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the reply tokens (and EOS): −(1/|y|) Σ_t log π(y_t | x, y_<t).

    ids (B, T) right-padded; reply_mask (B, T) marks the target tokens. Position t predicts
    token t + 1, so logits[:, :-1] are scored against ids[:, 1:].
    """
    logits = model(ids[:, :-1])  # (B, T−1, V): causal attention, no mask needed (right padding)
    targets, weights = ids[:, 1:], reply_mask[:, 1:]  # (B, T−1)
    nll = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none"
    )
    return (nll * weights.reshape(-1)).sum() / weights.sum().clamp(min=1.0)


def train_sft(
    config: SFTArgs,
    task: Task,
    tok: CharTokenizer,
    device: torch.device,
    out=None,
    progress: bool = True,
    log=None,
) -> tuple[dict[str, GPT], dict]:
    """Train a fresh model on `config.sft_examples` demonstrations.

    Returns (models, summary), the shape of every stage function: `models` = {"model": the SFT
    model} (what `sft.pt` holds), `summary` = {"final_loss": the smoothed training loss,
    "params", "seconds", "history": the logged records}. `log(step, {"sft/loss": …})` receives
    the training loss every 10 steps. `out` is unused (SFT writes no figure); it is there so
    that every stage is called the same way.
    """
    config = resolve(config)
    torch.manual_seed(config.seed)
    model = build_model(config, tok, device)  # a fresh GPT, or the pretrained model of --model
    distributed.broadcast_parameters(model)  # the same seed gives the same weights; this makes sure
    rank, world = distributed.rank(), distributed.world_size()
    distributed.share(config.sft_batch_size, "sft_batch_size")
    data = sft_examples(task, config.sft_examples, seed=config.seed)
    rng = random.Random(config.seed + 1)
    optimizer = adamw(model.parameters(), config.sft_lr, weight_decay=0.01, eps=1e-8)
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(config.sft_steps), desc="sft", disable=not progress, leave=False)
    running = None
    history = []
    for step in bar:
        batch = [data[rng.randrange(len(data))] for _ in range(config.sft_batch_size)][rank::world]  # this rank's
        ids, reply_mask, _ = pad_sequences(
            tok, [p for p, _ in batch], [r for _, r in batch], context_length(model), device
        )
        set_lr(optimizer, lr_at(step, config.sft_steps, config.sft_lr))
        loss = sft_loss(model, ids, reply_mask)
        check_finite(**{"SFT loss": loss})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(model.parameters())  # under torchrun: the mean over ranks
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        bar.set_postfix(loss=f"{running:.3f}")
        if step % 10 == 0 or step == config.sft_steps - 1:
            logged = distributed.mean_over_ranks({"sft/loss": loss.item()})
            history.append({"step": step, **logged})
            if log is not None:
                log(step, logged)
    model.eval()
    seconds = time.perf_counter() - start
    print(f"[llm.sft] loss {running:.3f} after {config.sft_steps} steps, in {seconds:.0f}s", file=sys.stderr)
    return {"model": model}, {
        "final_loss": running,
        "params": model.num_params(),
        "seconds": seconds,
        "history": history,
    }
