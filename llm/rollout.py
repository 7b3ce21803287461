"""Batching, sampling with the KV cache, and per-token log-probs/values/scores of replies.

Shared by every stage that reads or writes replies (SFT evaluation, the reward model, PPO,
and the preference and group methods built on the same pieces).
Every helper takes any model of the interface of `llm.model_interface` (the project's GPT or a wrapped
`transformers` causal LM) and its tokenizer; padding is known from masks and lengths only.

Sequence layouts
- Training batches (SFT, reward model): `[BOS] prompt reply [EOS] [PAD …]`, right-padded. No
  attention mask is needed: causal attention never looks right, so padding is invisible to
  real tokens and only the loss (or the score position) must skip it.
- Generation batches: prompts are *left*-padded, `[PAD …] [BOS] prompt`, so that every row's
  next token goes in the same column; the reply follows, right-padded after EOS:
      input_ids      (B, P + R) = [PAD … BOS prompt | reply EOS PAD …]
      attention_mask (B, P + R) = [0 …   1   1      | 1     1   0  …]
  The model counts positions over real tokens only, so a row computes exactly as if it were
  unpadded. Reply token t (column P + t) is predicted from column P + t − 1: the logits and
  values of the reply are read from columns P − 1 … P + R − 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from core.checks import check_finite
from core.losses import entropy_from_logits
from llm.gpt import GPT
from llm.model_interface import context_length, new_cache
from llm.tokenizer import CharTokenizer

__all__ = [
    "encode_prompts",
    "pad_sequences",
    "Generation",
    "generate",
    "sample_next",
    "reply_logits",
    "token_logprobs",
    "reply_logprobs",
    "reply_values",
    "last_token_scores",
    "decode_replies",
]


def check_prompt_fits(
    tok: CharTokenizer, prompt: str, block_size: int, max_new_tokens: int
) -> list[int]:
    """Encode `[BOS] prompt`; raise `ValueError` when it leaves no room for `max_new_tokens`."""
    ids = tok.encode(prompt, bos=True)  # raises on characters outside the vocabulary
    room = block_size - max_new_tokens
    if len(ids) > room:
        raise ValueError(
            f"prompt {prompt!r} is {len(ids) - 1} characters long; with BOS and "
            f"{max_new_tokens} reply tokens it needs {len(ids) + max_new_tokens} positions but "
            f"the model's context is {block_size}: prompts may be at most {room - 1} characters"
        )
    return ids


def encode_prompts(
    tok: CharTokenizer, prompts: list[str], block_size: int, max_new_tokens: int, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded `[PAD …] [BOS] prompt` ids (B, P) and their attention mask (B, P)."""
    rows = [check_prompt_fits(tok, p, block_size, max_new_tokens) for p in prompts]
    P = max(len(r) for r in rows)
    ids = torch.full((len(rows), P), tok.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), P), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, P - len(r) :] = torch.tensor(r)
        mask[i, P - len(r) :] = 1
    return ids.to(device), mask.to(device)


def pad_sequences(
    tok: CharTokenizer, prompts: list[str], replies: list[str], block_size: int, device=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded `[BOS] prompt reply [EOS]` for training.

    Returns ids (B, T), `reply_mask` (B, T) with 1 on reply tokens and EOS (the targets SFT
    learns), and `lengths` (B,) counting real tokens (so the last real token, EOS, is at
    `lengths − 1`).
    """
    rows, reply_starts = [], []
    for p, r in zip(prompts, replies):
        head = tok.encode(p, bos=True)
        row = head + tok.encode(r, eos=True)
        if len(row) > block_size:
            raise ValueError(
                f"example {p + r!r} needs {len(row)} positions, more than block_size={block_size}"
            )
        rows.append(row)
        reply_starts.append(len(head))
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), tok.pad_id, dtype=torch.long)
    reply_mask = torch.zeros((len(rows), T), dtype=torch.float32)
    for i, (row, s) in enumerate(zip(rows, reply_starts)):
        ids[i, : len(row)] = torch.tensor(row)
        reply_mask[i, s : len(row)] = 1.0
    lengths = torch.tensor([len(r) for r in rows])
    return ids.to(device), reply_mask.to(device), lengths.to(device)


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample one token per row from logits (B, V); temperature 0 means greedy. Returns (B,)."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)


@dataclass
class Generation:
    """Replies sampled for a batch of prompts."""

    prompt_ids: torch.Tensor
    """(B, P) left-padded `[PAD …] [BOS] prompt`."""
    prompt_mask: torch.Tensor
    """(B, P) 1 on real prompt tokens."""
    reply_ids: torch.Tensor
    """(B, R) sampled tokens, PAD after EOS (EOS itself included)."""
    reply_mask: torch.Tensor
    """(B, R) float, 1 on real reply tokens up to and including EOS."""
    ended: torch.Tensor
    """(B,) bool: the reply ended with EOS within the budget."""

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.reply_ids], dim=1)  # (B, P + R)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask.to(self.reply_mask.dtype), self.reply_mask], dim=1)

    @property
    def lengths(self) -> torch.Tensor:
        """(B,) number of real reply tokens (EOS included)."""
        return self.reply_mask.sum(dim=1).long()


@torch.no_grad()
def generate(
    model: GPT,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    name: str = "policy",
) -> Generation:
    """Sample replies token by token until every row has produced EOS or the budget is spent.

    With `use_cache` the prompt is read once (prefill) and each new token costs one position;
    without it the whole sequence is recomputed at every step (the reference the tests
    compare against). Both consume the generator identically, so they sample the same tokens.
    A row that produced EOS keeps receiving PAD, which is masked out everywhere.
    Raises `NonFiniteError` naming `name` if the model produces NaN or inf logits.
    """
    if model.head != "lm":
        raise ValueError("generate needs a language model (head='lm'), not a scalar model")
    B, P = prompt_ids.shape
    if P + max_new_tokens > context_length(model):
        raise ValueError(
            f"{P} prompt positions + {max_new_tokens} new tokens exceed the context "
            f"(block_size={context_length(model)})"
        )
    was_training = model.training
    model.eval()
    device = prompt_ids.device
    ids, mask = prompt_ids, prompt_mask.long()
    cache = new_cache(model, B, P + max_new_tokens, device) if use_cache else None
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    out_ids, out_mask = [], []
    step_input, step_mask = ids, mask  # the prefill reads the whole prompt
    for _ in range(max_new_tokens):
        if use_cache:
            logits = model(step_input, attention_mask=step_mask, cache=cache)[:, -1, :]  # (B, V)
        else:
            logits = model(ids, attention_mask=mask)[:, -1, :]  # (B, V)
        check_finite(**{f"{name} logits": logits})
        token = sample_next(logits, temperature, top_k, generator)  # (B,)
        real = ~finished
        token = torch.where(real, token, torch.full_like(token, pad_id))
        out_ids.append(token)
        out_mask.append(real)
        finished = finished | (token == eos_id)
        step_input, step_mask = token.unsqueeze(1), real.long().unsqueeze(1)  # (B, 1)
        ids = torch.cat([ids, step_input], dim=1)
        mask = torch.cat([mask, step_mask], dim=1)
        if bool(finished.all()):
            break
    model.train(was_training)
    reply_ids = torch.stack(out_ids, dim=1)  # (B, R)
    reply_mask = torch.stack(out_mask, dim=1).float()  # (B, R)
    return Generation(prompt_ids, prompt_mask, reply_ids, reply_mask, finished)


def reply_logits(
    model: GPT, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int
) -> torch.Tensor:
    """Logits that predict each reply token: columns P − 1 … P + R − 2. Returns (B, R, V)."""
    logits = model(input_ids, attention_mask=attention_mask)  # (B, P + R, V)
    return logits[:, prompt_len - 1 : -1, :]


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] for logits (B, R, V) and tokens (B, R). Returns (B, R)."""
    return torch.gather(F.log_softmax(logits, dim=-1), 2, tokens.unsqueeze(-1)).squeeze(-1)


def reply_logprobs(
    model: GPT,
    gen_input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    reply_ids: torch.Tensor,
    with_entropy: bool = False,
    name: str = "policy",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log π(y_t | x, y_<t) of the reply (B, R) (and entropy (B, R) if asked).

    Summing over the mask gives log π(y|x) of the whole reply (IS-2).
    """
    prompt_len = gen_input_ids.shape[1] - reply_ids.shape[1]
    logits = reply_logits(model, gen_input_ids, attention_mask, prompt_len)  # (B, R, V)
    check_finite(**{f"{name} logits": logits})
    logprobs = token_logprobs(logits, reply_ids)
    return logprobs, (entropy_from_logits(logits) if with_entropy else None)


def reply_values(
    value_model: GPT,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    reply_len: int,
    name: str = "value model",
) -> torch.Tensor:
    """V(x, y_<t), the value of the state in which reply token t is chosen. Returns (B, R)."""
    prompt_len = input_ids.shape[1] - reply_len
    values = value_model(input_ids, attention_mask=attention_mask)[:, prompt_len - 1 : -1]
    check_finite(**{f"{name} values": values})
    return values


def last_token_scores(
    scores: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """Read a scalar model's per-position scores (B, T) on the last real token of each row.

    For right-padded rows that is column `lengths − 1`; with a mask it is the last column whose
    mask is 1 (also right for left-padded prompts followed by a right-padded reply). Reading
    column `lengths` instead, one past the end, reads the first PAD: a known pitfall.
    """
    if lengths is None:
        if attention_mask is None:
            return scores[:, -1]
        T = attention_mask.shape[1]
        cols = torch.arange(T, device=scores.device).expand_as(attention_mask)
        last = torch.where(attention_mask.bool(), cols, torch.full_like(cols, -1)).max(dim=1).values
    else:
        last = lengths - 1
    return scores.gather(1, last.long().unsqueeze(1)).squeeze(1)  # (B,)


def decode_replies(tok: CharTokenizer, gen: Generation) -> list[str]:
    """Reply texts without EOS/PAD."""
    return [tok.decode(row) for row in gen.reply_ids]
