"""Generate from (or score with) a checkpoint of any stage.

    python -m llm.sample --checkpoint runs/llm-reviews/ppo.pt --prompt "review: the plot was"
    python -m llm.sample --checkpoint runs/llm-reviews/sft.pt --prompt "12+35=" --num-samples 4
    python -m llm.sample --checkpoint runs/llm-reviews/rm.pt --prompt "review: the plot was" \
                         --reply " great."

SFT and PPO checkpoints hold a language model (the PPO one its trained policy) and sample
replies; a reward-model checkpoint has no language head, so it scores `--reply` instead.
Characters outside the vocabulary, a prompt too long for the context, and a file that is not
a matching checkpoint stop with a message that says what is wrong.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from core.checkpoint import CheckpointError
from core.checks import NonFiniteError
from core.config import parse_into
from core.device import resolve_device
from llm.checkpoints import load_stage, stage_tokenizer
from llm.model_interface import context_length
from llm.reward_model import score_replies
from llm.rollout import decode_replies, encode_prompts, generate
from llm.tasks import get_task

__all__ = ["SampleConfig", "sample", "main"]


@dataclass
class SampleConfig:
    checkpoint: str = "runs/llm-reviews/ppo.pt"
    """A checkpoint written by llm.pipeline: sft.pt, rm.pt or ppo*.pt."""
    prompt: str = "review: the plot was"
    """The prompt (lower-case characters of the vocabulary)."""
    reply: str | None = None
    """With a reward-model checkpoint: the reply to score."""
    num_samples: int = 3
    """Replies to sample."""
    temperature: float = 1.0
    """Sampling temperature; 0 is greedy."""
    top_k: int | None = None
    """Sample among the k most likely tokens only; None keeps all."""
    max_new_tokens: int | None = None
    """Reply budget in tokens; None: the checkpoint's task budget."""
    seed: int = 0
    """Seed of the sampling stream."""
    device: str = "cpu"
    """'cpu', 'cuda' or 'auto'."""
    threads: int = 2
    """CPU threads for torch."""

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be ≥ 1, got {self.num_samples}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be ≥ 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be ≥ 1, got {self.top_k}")


def sample(config: SampleConfig) -> list[str]:
    """Replies (or, for a reward model, one score as text) for `config.prompt`."""
    tok = stage_tokenizer(config.checkpoint)  # the character tokenizer or the wrapped model's
    device = resolve_device(config.device)
    models, meta = load_stage(config.checkpoint, tok, device=device)
    task = get_task(meta.get("task", "reviews"))
    if "reward_model" in models:
        if config.reply is None:
            raise ValueError("a reward-model checkpoint scores replies: pass --reply")
        score = score_replies(models["reward_model"], tok, [config.prompt], [config.reply], device)
        return [f"{float(score[0]):.4f}"]
    model = models.get("policy") or models.get("model")
    budget = config.max_new_tokens or task.max_new_tokens
    ids, mask = encode_prompts(
        tok, [config.prompt] * config.num_samples, context_length(model), budget, device
    )
    gen = generate(
        model,
        ids,
        mask,
        max_new_tokens=budget,
        eos_id=tok.eos_id,
        pad_id=tok.pad_id,
        temperature=config.temperature,
        top_k=config.top_k,
        generator=torch.Generator(device=device).manual_seed(config.seed),
    )
    replies = decode_replies(tok, gen)
    return [r + ("" if ended else "  [no EOS]") for r, ended in zip(replies, gen.ended.tolist())]


def main(argv: list[str] | None = None) -> list[str]:
    config = parse_into(SampleConfig, argv, prog="python -m llm.sample", description=__doc__.split("\n")[0])
    torch.set_num_threads(config.threads)
    try:
        lines = sample(config)
    except (ValueError, CheckpointError, NonFiniteError) as exc:
        print(f"llm.sample: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    for line in lines:
        print(config.prompt + line if config.reply is None else line)
    return lines


if __name__ == "__main__":
    main()
