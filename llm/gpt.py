"""A small decoder-only transformer in the style of nanoGPT, with a KV cache and a scalar head.

Read top to bottom: config → attention → MLP → block → GPT. Differences from nanoGPT:
- `attention_mask` (1 = real token, 0 = PAD) so that a batch of prompts of different
  lengths can be left-padded for generation; positions count real tokens only, so a
  left-padded prompt is computed exactly as the same prompt unpadded.
- `KVCache`: keys and values of past positions are kept, so sampling a token costs one
  position instead of the whole sequence (tests check it equals full recomputation).
- `head="scalar"`: one number per position instead of logits, for the reward model (its
  score is read on the last real token) and the value model (one value per position).

The default (4 layers, 4 heads, 144 channels) has about 1.0M parameters and trains at a few
thousand tokens per second on two CPU cores.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["GPTConfig", "GPT", "KVCache", "copy_model", "disable_dropout", "check_architecture"]


@dataclass
class GPTConfig:
    vocab_size: int = 54
    """Number of token ids (the tokenizer's `vocab_size`)."""
    block_size: int = 80
    """Longest sequence (prompt + reply, BOS and EOS included) the model can read."""
    n_layer: int = 4
    """Number of transformer blocks."""
    n_head: int = 4
    """Attention heads per block; must divide `n_embd`."""
    n_embd: int = 144
    """Width of the residual stream (C)."""
    dropout: float = 0.0
    """Dropout probability in supervised training; always 0 during RL (see `disable_dropout`)."""
    bias: bool = True
    """Biases in Linear and LayerNorm layers."""

    def __post_init__(self):
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class KVCache:
    """Keys and values of every layer for the positions seen so far, preallocated.

    `k[l]`, `v[l]`: (B, nh, max_len, hs); `key_valid`: (B, max_len) with 1 on real tokens.
    `length` counts the positions already written; `GPT.forward` advances it.
    """

    def __init__(
        self, config: GPTConfig, batch_size: int, max_len: int, device, dtype=torch.float32
    ):
        hs = config.n_embd // config.n_head
        shape = (batch_size, config.n_head, max_len, hs)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.key_valid = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)
        self.max_len = max_len
        self.length = 0

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's (B, nh, T, hs) keys/values; return all of them so far."""
        t0, t1 = self.length, self.length + k.size(2)
        self.k[layer][:, :, t0:t1] = k
        self.v[layer][:, :, t0:t1] = v
        return self.k[layer][:, :, :t1], self.v[layer][:, :, :t1]  # (B, nh, S, hs)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        # query, key and value projections for all heads in one matrix
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout

    def forward(self, x, attn_mask=None, cache: KVCache | None = None, layer: int = 0):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 × (B, T, C)
        hs = C // self.n_head
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nh, S, hs), S = past + T
        dropout_p = self.dropout if self.training else 0.0
        if attn_mask is None:
            # no padding and no cache: the fused causal kernel
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): re-assemble the heads
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, C)


class Block(nn.Module):
    """Pre-LayerNorm block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, attn_mask=None, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), attn_mask, cache, layer)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    """Decoder-only transformer. `head="lm"`: logits (B, T, V); `head="scalar"`: scores (B, T)."""

    def __init__(self, config: GPTConfig, head: str = "lm"):
        super().__init__()
        if head not in ("lm", "scalar"):
            raise ValueError(f"head must be 'lm' or 'scalar', got {head!r}")
        self.config, self.head = config, head
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        if head == "lm":
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
            # weight tying: the output embedding is the input embedding (fewer parameters)
            self.transformer.wte.weight = self.lm_head.weight
        else:
            self.score_head = nn.Linear(config.n_embd, 1)
        self.apply(self._init_weights)
        # nanoGPT/GPT-2: scale the residual projections by 1/sqrt(2·n_layer) so that the
        # residual stream does not grow with depth at initialisation
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """Parameter count; the position embedding is included, tied weights counted once."""
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        idx: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """idx (B, T) token ids; attention_mask (B, T), 1 on real tokens, 0 on PAD.

        Without a mask and a cache every position is real and the fused causal kernel runs.
        With a cache, `idx` holds only the new positions and the cache supplies the past.
        """
        B, T = idx.size()
        past = cache.length if cache is not None else 0
        if past + T > self.config.block_size:
            raise ValueError(
                f"sequence of {past + T} tokens is longer than the context "
                f"(block_size={self.config.block_size})"
            )
        attn_mask = None
        if attention_mask is None and cache is None:
            pos = torch.arange(T, device=idx.device).unsqueeze(0)  # (1, T)
        else:
            if attention_mask is None:
                attention_mask = torch.ones(B, T, dtype=torch.bool, device=idx.device)
            if cache is not None:
                cache.key_valid[:, past : past + T] = attention_mask.bool()
                key_valid = cache.key_valid[:, : past + T]  # (B, S)
            else:
                key_valid = attention_mask.bool()  # (B, S), S = T
            # positions count real tokens only, so left padding does not shift them
            pos = (key_valid.long().cumsum(1) - 1).clamp(min=0)[:, past:]  # (B, T)
            q_idx = torch.arange(past, past + T, device=idx.device).view(T, 1)
            k_idx = torch.arange(past + T, device=idx.device).view(1, past + T)
            # a query sees earlier real keys; a PAD query sees itself, so that its softmax
            # row is never empty (its output is ignored anyway)
            allowed = (k_idx <= q_idx) & (key_valid[:, None, :] | (k_idx == q_idx))  # (B, T, S)
            attn_mask = allowed.unsqueeze(1)  # (B, 1, T, S), broadcast over heads
        tok_emb = self.transformer.wte(idx)  # (B, T, C)
        pos_emb = self.transformer.wpe(pos)  # (B or 1, T, C)
        x = self.transformer.drop(tok_emb + pos_emb)  # (B, T, C)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, attn_mask, cache, layer)
        x = self.transformer.ln_f(x)  # (B, T, C)
        if cache is not None:
            cache.length = past + T
        if self.head == "lm":
            return self.lm_head(x)  # (B, T, V)
        return self.score_head(x).squeeze(-1)  # (B, T)

    def arch(self) -> dict:
        """Architecture as plain values, stored in checkpoints and checked on load."""
        return {"config": asdict(self.config), "head": self.head}


def copy_model(model: GPT) -> GPT:
    """An independent copy (same device, weights and head): the policy, π_ref and the value
    model each start from an earlier stage's weights and must not share them. Built afresh
    and loaded, so nothing but the architecture and the weights carries over."""
    clone = GPT(model.config, head=model.head).to(next(model.parameters()).device)
    clone.load_state_dict(model.state_dict())
    return clone


def disable_dropout(model: nn.Module) -> nn.Module:
    """Set every dropout probability to 0. RL needs it: with dropout on, the log-probs that
    PPO recomputes differ from those of the rollout even before any update, so the ratio
    ρ = π_θ/π_old is noise instead of 1 at the first step. Works on the project's GPT and on a
    wrapped `transformers` model: besides `nn.Dropout` layers, attention modules keep their
    probability as a float attribute (ours and transformers' names below)."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        for name in ("dropout", "attention_dropout", "attn_pdrop", "resid_pdrop", "embd_pdrop"):
            if isinstance(getattr(m, name, None), float):
                setattr(m, name, 0.0)
    return model


def check_architecture(
    meta_arch: dict, expected: dict | None = None, source: str = "checkpoint"
) -> None:
    """Raise `ValueError` naming the differing fields when a checkpoint's architecture does
    not match `expected` (both as returned by `GPT.arch()`)."""
    if expected is None:
        return
    got, want = meta_arch.get("config", {}), expected.get("config", {})
    diffs = [f"{k}: {got.get(k)!r} vs {want.get(k)!r}" for k in want if got.get(k) != want.get(k)]
    diffs = [d for d in diffs if not d.startswith("dropout")]  # dropout does not change weights
    if diffs:
        raise ValueError(f"{source} has a different architecture ({'; '.join(diffs)})")
