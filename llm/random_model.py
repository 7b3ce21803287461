"""Write a random-weight Hugging Face causal LM with a tokenizer trained on the tasks' text.

    python -m llm.random_model runs/tiny-gpt2                         # GPT-2 style, no pad token
    python -m llm.random_model runs/tiny-llama --arch llama --n-layer 2 --n-embd 64
    python -m llm.pipeline --model runs/tiny-gpt2 --sft-lr 1e-3       # then any stage on it

For trying `--model` and for the tests without a download: the folder has what a downloaded
checkpoint has (`config.json`, `model.safetensors`, the tokenizer's files) and loads through
`AutoModelForCausalLM` / `AutoTokenizer`. The tokenizer is a byte-level BPE (as GPT-2's) trained
on prompts and replies of both tasks, so any text encodes and every reply decodes back exactly.
The GPT-2 style one has BOS = EOS = `<|endoftext|>` and no pad token, as GPT-2 itself; the Llama
style one has `<s>`, `</s>` and `<pad>`, or with `--no-pad-token` only `</s>`, as both BOS and
EOS, and no pad token (the case of many released checkpoints):

    python -m llm.random_model runs/tiny-llama-nopad --arch llama --n-layer 3 --n-embd 96 --no-pad-token
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

__all__ = ["RandomModelConfig", "write_random_model", "task_texts"]


@dataclass
class RandomModelConfig:
    out: str = "runs/tiny-gpt2"
    """Folder to write (created)."""
    arch: Literal["gpt2", "llama"] = "gpt2"
    """'gpt2' (learned positions, LayerNorm, no pad token) or 'llama' (rotary positions, RMSNorm,
    grouped-query attention, a pad token)."""
    n_layer: int = 2
    """Transformer blocks."""
    n_embd: int = 64
    """Width of the residual stream."""
    n_head: int = 4
    """Attention heads."""
    vocab_size: int = 512
    """BPE vocabulary size (at least 259: the 256 bytes and the special tokens)."""
    context: int = 256
    """Longest sequence (max_position_embeddings)."""
    seed: int = 0
    """Seed of the weights and of the tokenizer's training text."""
    pad_token: bool = True
    """Llama style only: a `<pad>` token and a BOS `<s>` of its own; --no-pad-token: no pad
    token, and BOS = EOS = `</s>`. (The GPT-2 style one never has a pad token.)"""


def task_texts(n: int = 2000, seed: int = 0) -> list[str]:
    """Prompts with demonstrations and candidate replies of both tasks (`llm.tasks`)."""
    from llm.tasks import get_task

    rng = random.Random(seed)
    texts = []
    for name in ("reviews", "arithmetic"):
        task = get_task(name)
        for _ in range(n):
            prompt = task.sample_prompt(rng)
            texts.append(prompt + task.demonstration(prompt, rng))
            texts.append(prompt + task.candidate_reply(prompt, rng))
    return texts


def write_random_model(
    out: str | Path,
    arch: str = "gpt2",
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    vocab_size: int = 512,
    context: int = 256,
    seed: int = 0,
    pad_token: bool = True,
) -> Path:
    """Train the tokenizer, build the model with random weights, `save_pretrained` both to `out`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedTokenizerFast

    if arch not in ("gpt2", "llama"):
        raise ValueError(f"arch must be 'gpt2' or 'llama', got {arch!r}")
    specials = ["<|endoftext|>"] if arch == "gpt2" else ["<s>", "</s>", "<pad>"] if pad_token else ["</s>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(task_texts(seed=seed), trainer)
    if arch == "gpt2":
        tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=specials[0], eos_token=specials[0])
    elif pad_token:
        tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    else:
        tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="</s>", eos_token="</s>")
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    if arch == "gpt2":
        config = GPT2Config(vocab_size=len(tok), n_positions=context, n_embd=n_embd, n_layer=n_layer,
                            n_head=n_head, **ids)
    else:
        config = LlamaConfig(vocab_size=len(tok), hidden_size=n_embd, intermediate_size=4 * n_embd,
                             num_hidden_layers=n_layer, num_attention_heads=n_head,
                             num_key_value_heads=max(1, n_head // 2), max_position_embeddings=context,
                             tie_word_embeddings=True, **ids)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> Path:
    from core.config import add_arguments, from_arguments

    parser = argparse.ArgumentParser(prog="python -m llm.random_model", description=__doc__.split("\n")[0])
    add_arguments(parser, RandomModelConfig)
    c = from_arguments(RandomModelConfig, parser.parse_args(argv))
    path = write_random_model(c.out, c.arch, c.n_layer, c.n_embd, c.n_head, c.vocab_size, c.context, c.seed,
                              c.pad_token)
    from llm.model_interface import load_hf_model

    print(f"[llm.random_model] {c.arch}: {load_hf_model(path).num_params() / 1e6:.2f}M parameters → {path}")
    return path


if __name__ == "__main__":
    main()
