"""A character-level tokenizer with distinct PAD, BOS and EOS tokens.

Why characters: the project trains its own models from nothing on a CPU, so there is no
pretrained vocabulary to match, and a character vocabulary makes every token readable in a
debugger. Why three distinct special tokens:
- PAD fills batches to a common length and is never predicted; it must differ from EOS,
  otherwise masking the padding also masks the end of every reply, and a model trained that
  way never learns to stop (a known pitfall of setting `pad_token = eos_token`).
- BOS starts every sequence, so the first real character has something to attend to.
- EOS ends a reply; the reward-model score is read on it (RM-3), and a reply without it is
  penalised.

The vocabulary is fixed (not derived from the data), so checkpoints of every task share it,
and a checkpoint written with a different vocabulary is refused on load (`check_vocab`).
"""

from __future__ import annotations

import torch

__all__ = ["CharTokenizer", "PAD", "BOS", "EOS", "CHARS"]

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
# Every character a prompt or a reply may contain. Lower case only: the tasks generate
# lower-case text and a smaller vocabulary trains faster.
CHARS = " abcdefghijklmnopqrstuvwxyz0123456789.,:;!?'-+=*/()"


class CharTokenizer:
    """Maps text to token ids and back: ids 0, 1, 2 are PAD, BOS, EOS, then one id per char."""

    def __init__(self, chars: str = CHARS):
        if len(set(chars)) != len(chars):
            raise ValueError("tokenizer characters must be distinct")
        self.chars = chars
        self.itos = [PAD, BOS, EOS, *chars]
        self.stoi = {c: i for i, c in enumerate(self.itos)}
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def unknown_chars(self, text: str) -> list[str]:
        """The distinct characters of `text` outside the vocabulary, in order of appearance."""
        seen: list[str] = []
        for c in text:
            if c not in self.stoi or c in (PAD, BOS, EOS):
                if c not in seen:
                    seen.append(c)
        return seen

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Text → ids; raise `ValueError` naming every character outside the vocabulary."""
        bad = self.unknown_chars(text)
        if bad:
            shown = ", ".join(repr(c) for c in bad)
            raise ValueError(
                f"text {text!r} contains characters outside the vocabulary: {shown}; "
                f"allowed are {self.chars!r} (lower case)"
            )
        ids = [self.stoi[c] for c in text]
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids: list[int] | torch.Tensor, stop_at_eos: bool = True) -> str:
        """Ids → text. Special tokens are dropped; with `stop_at_eos`, nothing after EOS."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        out = []
        for i in ids:
            if i == self.eos_id and stop_at_eos:
                break
            if i >= 3:
                out.append(self.itos[i])
        return "".join(out)

    def meta(self) -> dict:
        """What a checkpoint stores to check that it is read with the same vocabulary."""
        return {"chars": self.chars, "specials": [PAD, BOS, EOS]}

    def check_vocab(self, meta: dict, source: str = "checkpoint") -> None:
        """Raise `ValueError` when `meta` (from a checkpoint) names a different vocabulary."""
        if meta.get("chars") != self.chars or meta.get("specials") != [PAD, BOS, EOS]:
            raise ValueError(
                f"{source} was written with a different vocabulary "
                f"({meta.get('chars')!r} vs this tokenizer's {self.chars!r}); it cannot be used"
            )
