"""The model interface of the language-model front end, and its two implementations.

Every stage reads and writes its models through these few names only:

    model(input_ids, attention_mask=None, cache=None)
        input_ids (B, T) token ids; attention_mask (B, T) 1 on real tokens, 0 on PAD (None: all real).
        → logits (B, T, V) when `model.head == "lm"`, scores (B, T) when `model.head == "scalar"`.
        Positions count real tokens only, so a left-padded row computes as the same row unpadded.
        With a cache, `input_ids` holds only the new positions and the cache holds the past.
    model.head                              'lm' (a language model) or 'scalar' (reward or value model)
    model.num_params(), model.arch()        parameter count; the architecture a checkpoint stores
    context_length(model)                   the longest sequence the model reads
    new_cache(model, batch_size, max_len, device)   an empty cache for `llm.rollout.generate`
    copy_model(model)                       an independent copy (the policy, π_ref, the value model)
    scalar_model_from(lm, head_weights)     the same body with a scalar head (R_φ; V_ψ from R_φ, RM-5)

and a tokenizer: `encode(text, bos=False, eos=False) -> ids`, `decode(ids) -> text` (nothing from
EOS on), `pad_id`, `bos_id`, `eos_id`, `vocab_size`, `meta()` / `check_vocab(meta)` for checkpoints.

Implementations:
- the project's `llm.gpt.GPT` with `llm.tokenizer.CharTokenizer` (trained from scratch; the
  default of `python -m llm.pipeline`);
- `HFModel`, a wrapper around `transformers.AutoModelForCausalLM` loaded from a local directory
  (`--model PATH`, `from_pretrained(PATH, local_files_only=True)`: nothing is downloaded), with
  `HFTokenizer` around the `AutoTokenizer` of the same directory. Its forward computes the
  position ids from the attention mask (cumsum − 1, as the project's GPT does), passes the mask to
  the model, and generates with the model's own cache (`transformers.DynamicCache`). The scalar head
  is a `Linear(hidden, 1)` on the last hidden state of the model's body (`base_model`), started at
  zero; the language head is the model's own (`.logits`). `check_model(PATH)` refuses, in one line,
  a folder that is not a causal LM, has no tokenizer, or whose tokenizer has ids past the input
  embedding's rows (a tokenizer that adds a pad token on loading); SFT checks the last again on
  the loaded weights.

Rules kept for every model (the pitfalls TRL's users report):
- Padding is known from the attention mask and the lengths, never from token equality. PAD is a
  filler id chosen distinct from EOS: a tokenizer without a pad token (GPT-2) or whose pad token is
  its EOS gets the first id that is neither EOS nor BOS, which no computation ever reads (mask-only
  padding; no token is added, so the model's embeddings stay as they are).
- The score of a reward model is read on the last real token (`llm.rollout.last_token_scores`).
- Dropout is zeroed when a wrapped model is loaded (its `nn.Dropout` modules and the float
  `attention_dropout`/`dropout` attributes some attention implementations read), and every
  computation runs in float32: generation and the training forward then give the same log-probs,
  and the first minibatch of each PPO update has ratio 1.

Checkpoints of a wrapped model (`llm.checkpoints`): the stage file (`sft.pt`, `rm.pt`, `ppo.pt`,
written atomically like the GPT's) holds each model's state_dict and, as its architecture, the
source directory and the head; loading builds the model from that directory (config and
tokenizer) and loads the stored weights. So a run folder needs its source directory to stay where
it was, and one file holds every model of a stage (a PPO checkpoint holds the policy and the value
model). `export_pretrained(model, tok, DIR)` writes a policy as a standard Hugging Face folder.
"""

from __future__ import annotations

import copy
import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from llm.gpt import GPT, KVCache, disable_dropout
from llm.gpt import copy_model as copy_gpt

__all__ = [
    "HFModel",
    "HFTokenizer",
    "HFCache",
    "check_model_dir",
    "check_model",
    "check_vocab_fits",
    "load_hf_model",
    "load_tokenizer",
    "context_length",
    "new_cache",
    "copy_model",
    "hf_scalar_model_from",
    "export_pretrained",
    "build_model",
]


def check_model_dir(path: str | Path) -> Path:
    """Raise `ValueError` with one line when `path` is not a local causal-LM directory."""
    p = Path(path)
    if not p.is_dir():
        raise ValueError(f"--model {path}: no such directory (a local Hugging Face model folder is expected)")
    if not (p / "config.json").is_file():
        raise ValueError(f"--model {path}: not a Hugging Face model folder (no config.json)")
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(p, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"--model {path}: config.json cannot be read ({str(exc).splitlines()[0]})") from None
    if type(config) not in AutoModelForCausalLM._model_mapping:
        raise ValueError(f"--model {path}: a {config.model_type!r} model is not a causal language model")
    # a model type with a causal head may be saved without it (BERT as a `BertModel`, an encoder)
    architectures = getattr(config, "architectures", None) or []
    if architectures and not set(architectures) & _causal_lm_classes():
        raise ValueError(f"--model {path}: the folder holds a {architectures[0]}, not a causal language model "
                         "(a folder saved from an ...ForCausalLM or ...LMHeadModel is expected)")
    return p


def _causal_lm_classes() -> set[str]:
    """The class names `AutoModelForCausalLM` builds (GPT2LMHeadModel, LlamaForCausalLM, …)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names: set[str] = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([value] if isinstance(value, str) else value)
    return names


# The files a Hugging Face tokenizer is loaded from (one of them at least is in a model folder).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model")


def check_model(path: str | Path) -> Path:
    """Everything a run checks of a `--model` folder before it writes anything, each failure a
    `ValueError` of one line: a causal-LM folder (`check_model_dir`), a tokenizer in it with an
    EOS token, and no token id the model cannot embed (`check_vocab_fits`). The embedding's rows
    are read from the model built on the meta device (no weights are loaded)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    p = check_model_dir(path)
    if not any((p / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(f"--model {path}: no tokenizer in the folder (none of {', '.join(TOKENIZER_FILES)}); "
                         "save the model's tokenizer beside it (tokenizer.save_pretrained)")
    tok = HFTokenizer.load(p)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(p, local_files_only=True))
    check_vocab_fits(tok, skeleton.get_input_embeddings().num_embeddings)
    return p


def check_vocab_fits(tok: HFTokenizer, rows: int) -> None:
    """Raise `ValueError` (one line) when the tokenizer has more tokens than the model's input
    embedding has rows: ids ≥ rows (a pad token the tokenizer adds on loading, say) would index
    past the embedding."""
    if tok.vocab_size > rows:
        extra = tok.tokenizer.convert_ids_to_tokens(list(range(rows, min(tok.vocab_size, rows + 3))))
        raise ValueError(
            f"--model {tok.source}: the tokenizer has {tok.vocab_size} tokens but the model's input embedding "
            f"has {rows} rows (ids {rows}… such as {extra} cannot be embedded); resize the embedding "
            "(model.resize_token_embeddings(len(tokenizer))) and save the folder again, or use a tokenizer "
            "that adds no tokens"
        )


@dataclass
class HFCache:
    """The past of a generation for a wrapped model: the model's own key/value cache and the
    attention mask of every position seen so far (the model needs the whole mask at each step)."""

    kv: object
    """A `transformers.DynamicCache`, filled in place by the model."""
    mask: torch.Tensor
    """(B, S) 1 on real tokens of the S positions seen so far."""


class HFModel(nn.Module):
    """A `transformers` causal LM behind the interface of this module (see the module docstring).

    `lm`: the `AutoModelForCausalLM` (kept whole also for a scalar model, so that its weights load
    back into the same class); `source`: the directory it came from; `head`: 'lm' or 'scalar'.
    """

    def __init__(self, lm: nn.Module, source: str | Path, head: str = "lm"):
        super().__init__()
        if head not in ("lm", "scalar"):
            raise ValueError(f"head must be 'lm' or 'scalar', got {head!r}")
        self.lm, self.source, self.head = lm, str(source), head
        disable_dropout(lm)
        # transformers 5 names the cache argument `cache`, 4.x `past_key_values`
        called = lm if head == "lm" else lm.base_model
        params = inspect.signature(called.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        if head == "scalar":
            width = lm.get_input_embeddings().embedding_dim
            self.score_head = nn.Linear(width, 1)
            nn.init.zeros_(self.score_head.weight)
            nn.init.zeros_(self.score_head.bias)
            self.score_head.to(next(lm.parameters()).device)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, cache: HFCache | None = None
    ) -> torch.Tensor:
        T = input_ids.shape[1]
        mask = None if attention_mask is None else attention_mask.long()
        if cache is not None:
            step = mask if mask is not None else torch.ones_like(input_ids)
            cache.mask = torch.cat([cache.mask, step], dim=1)  # (B, past + T)
            mask = cache.mask
        kwargs = {"input_ids": input_ids, "use_cache": cache is not None}
        if mask is not None:
            kwargs["attention_mask"] = mask
            # positions count real tokens only, so left padding does not shift them
            kwargs["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0)[:, -T:]  # (B, T)
        if cache is not None:
            kwargs[self._cache_arg] = cache.kv
        if self.head == "lm":
            return self.lm(**kwargs).logits.float()  # (B, T, V)
        hidden = self.lm.base_model(**kwargs).last_hidden_state  # (B, T, C)
        return self.score_head(hidden.float()).squeeze(-1)  # (B, T)

    def num_params(self) -> int:
        """Parameters used by this head: the language head is not counted in a scalar model."""
        used = self.lm if self.head == "lm" else self.lm.base_model
        extra = self.score_head.parameters() if self.head == "scalar" else ()
        return sum(p.numel() for p in used.parameters()) + sum(p.numel() for p in extra)

    def arch(self) -> dict:
        """What a checkpoint stores to rebuild the model: the source directory and the head."""
        return {"hf": self.source, "head": self.head, "model_type": self.lm.config.model_type}


def load_hf_model(path: str | Path, head: str = "lm", device="cpu") -> HFModel:
    """`AutoModelForCausalLM.from_pretrained(path, local_files_only=True)` in float32, dropout off,
    wrapped as an `HFModel` with `head` (a scalar head starts at zero)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    path = check_model_dir(path)
    hf_logging.disable_progress_bar()  # the stages show their own progress
    lm = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).float()
    lm.config.use_cache = False  # only generation uses a cache, and asks for it
    return HFModel(lm, path, head).to(device).eval()


class HFTokenizer:
    """An `AutoTokenizer` behind the interface of `llm.tokenizer.CharTokenizer`.

    BOS is the tokenizer's BOS, or its EOS when it has none; EOS is required; PAD is the tokenizer's
    pad token unless it is missing or equal to EOS, and then a filler id (see the module docstring).
    Text is encoded without the tokenizer's own special tokens (BOS and EOS are added here, once).
    """

    def __init__(self, tokenizer, source: str | Path):
        self.tokenizer, self.source = tokenizer, str(source)
        if tokenizer.eos_token_id is None:
            raise ValueError(f"--model {source}: the tokenizer has no EOS token; a reply could not end")
        self.eos_id = int(tokenizer.eos_token_id)
        self.bos_id = int(tokenizer.bos_token_id) if tokenizer.bos_token_id is not None else self.eos_id
        pad = tokenizer.pad_token_id
        if pad is None or pad == self.eos_id:
            pad = next(i for i in range(len(tokenizer)) if i not in (self.eos_id, self.bos_id))
        self.pad_id = int(pad)

    @classmethod
    def load(cls, path: str | Path) -> HFTokenizer:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ValueError(f"--model {path}: no tokenizer can be loaded ({str(exc).splitlines()[0]})") from None
        return cls(tokenizer, path)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return ([self.bos_id] if bos else []) + list(ids) + ([self.eos_id] if eos else [])

    def decode(self, ids: list[int] | torch.Tensor, stop_at_eos: bool = True) -> str:
        """Ids → text; nothing from EOS on (with `stop_at_eos`), special tokens dropped, spaces kept."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        if stop_at_eos and self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def meta(self) -> dict:
        """What a checkpoint stores to check that it is read with the same tokenizer."""
        specials = [self.pad_id, self.bos_id, self.eos_id]
        return {"hf": self.source, "vocab_size": self.vocab_size, "special_ids": specials}

    def check_vocab(self, meta: dict, source: str = "checkpoint") -> None:
        if meta != self.meta():
            raise ValueError(
                f"{source} was written with another tokenizer ({json.dumps(meta)[:200]}), not the one of "
                f"{self.source}; it cannot be used"
            )


def load_tokenizer(model_path: str | Path | None):
    """The tokenizer of a run: the project's character tokenizer, or the wrapped model's own."""
    if model_path is None:
        from llm.tokenizer import CharTokenizer

        return CharTokenizer()
    return HFTokenizer.load(check_model_dir(model_path))


def context_length(model: nn.Module) -> int:
    """The longest sequence (prompt + reply, BOS and EOS included) the model reads."""
    if isinstance(model, HFModel):
        config = model.lm.config
        return int(getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 2048))
    return model.config.block_size


def new_cache(model: nn.Module, batch_size: int, max_len: int, device) -> KVCache | HFCache:
    """An empty cache for a generation of `batch_size` rows and at most `max_len` positions."""
    if isinstance(model, HFModel):
        from transformers import DynamicCache

        return HFCache(DynamicCache(), torch.zeros(batch_size, 0, dtype=torch.long, device=device))
    return KVCache(model.config, batch_size, max_len, device)


def copy_model(model: nn.Module) -> nn.Module:
    """An independent copy with the same weights, head and device (nothing shared)."""
    if isinstance(model, HFModel):
        return copy.deepcopy(model)
    return copy_gpt(model)


def hf_scalar_model_from(lm: HFModel, head_weights: HFModel | None = None) -> HFModel:
    """The wrapped body of `lm` with a zero scalar head; with `head_weights`, all of that scalar
    model's weights (the value model starts as the reward model, RM-5)."""
    model = HFModel(copy.deepcopy(lm.lm), lm.source, head="scalar")
    if head_weights is not None:
        model.load_state_dict(head_weights.state_dict())
    return model


def export_pretrained(model: HFModel, tok: HFTokenizer, path: str | Path) -> Path:
    """Write a wrapped language model with its tokenizer as a standard Hugging Face folder
    (`save_pretrained`), to load anywhere with `AutoModelForCausalLM.from_pretrained(path)`."""
    if model.head != "lm":
        raise ValueError("only a language model (head='lm') is exported as a causal LM")
    model.lm.save_pretrained(path)
    tok.tokenizer.save_pretrained(path)
    return Path(path)


def build_model(config, tok, device) -> nn.Module:
    """SFT's starting model: the wrapped model of `config.model` with its pretrained weights, or
    the project's GPT with fresh weights (`llm.config.model_config`)."""
    if getattr(config, "model", None):
        model = load_hf_model(config.model, device=device)
        check_vocab_fits(tok, model.lm.get_input_embeddings().num_embeddings)
        return model
    from llm.config import model_config

    return GPT(model_config(config, tok)).to(device)
