"""Throughput of the LLM front end: generation and PPO-update tokens per second, stage times.

    python -m llm.bench                 # the CPU, and CUDA when a GPU is present
    python -m llm.bench --devices cpu
    python -m llm.bench --model PATH    # a local transformers causal LM beside the project's GPT of its size

For each device: tokens/s of KV-cache generation (a batch of replies of fixed length), tokens/s
of one PPO update (`core.ppo.ppo_update` over policy and value model), and the wall-clock of
each pipeline stage run for a few steps, with the projection to the default step counts.
Numbers on a machine shared with other work are pessimistic. The last line is one JSON object.

With `--model PATH` (a Hugging Face causal-LM folder, `llm.model_interface`): generation and PPO-update
tokens/s of the wrapped model and of the project's GPT with the same depth, width and heads, on
the same batch shapes (prompts of `prompt_tokens` random ids), and their ratio (wrapped / GPT:
the wrapper's overhead, with the vocabulary and position scheme of each model); no stage is timed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from dataclasses import dataclass

import torch

from core.config import add_arguments, from_arguments
from core.ppo import PPOConfig, ppo_update
from llm.config import PipelineConfig, model_config, resolve
from llm.gpt import GPT
from llm.model_interface import context_length, load_hf_model, load_tokenizer
from llm.pipeline import run_pipeline
from llm.reward_model import scalar_model_from
from llm.rlhf import make_evaluate
from llm.rollout import encode_prompts, generate
from llm.tokenizer import CharTokenizer

__all__ = ["BenchConfig", "bench_generation", "bench_ppo_update", "bench_stages", "main"]


@dataclass
class BenchConfig:
    devices: str = "auto"
    """'auto' (the CPU, plus CUDA when present), 'cpu' or 'cuda'."""
    batch_size: int = 64
    """Replies per batch for generation and the PPO update."""
    new_tokens: int = 32
    """Reply length in tokens for the generation and update benchmarks."""
    repeats: int = 3
    """Timed repetitions (after one warm-up); the best is reported."""
    stage_steps: int = 10
    """Steps of SFT and reward-model training, and PPO iterations, to time each stage."""
    n_layer: int = 4
    """Model depth (the pipeline's default)."""
    n_embd: int = 144
    """Model width (the pipeline's default)."""
    threads: int = 1
    """CPU threads for torch."""
    model: str | None = None
    """A local Hugging Face causal-LM folder to compare with the project's GPT of the same depth,
    width and heads (generation and PPO update only)."""
    prompt_tokens: int = 16
    """With --model: prompt length in tokens (random ids after BOS) for both models."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model(config: BenchConfig, device: torch.device, head: str = "lm") -> GPT:
    pc = PipelineConfig(n_layer=config.n_layer, n_embd=config.n_embd)
    return GPT(model_config(pc, CharTokenizer()), head=head).to(device)


def _random_prompts(config: BenchConfig, tok, device) -> tuple[torch.Tensor, torch.Tensor]:
    """`[BOS]` and `prompt_tokens − 1` random ids per row, all real: the same shapes for any model."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 50, (config.batch_size, config.prompt_tokens), generator=g)
    ids[:, 0] = tok.bos_id
    return ids.to(device), torch.ones_like(ids)


def bench_generation(config: BenchConfig, device: torch.device, model=None, tok=None) -> float:
    """Generated tokens per second with the KV cache (EOS disabled so every row runs to the end).
    `model`, `tok`: another model and its tokenizer (prompts of random ids); default the GPT."""
    if model is None:
        tok = CharTokenizer()
        model = _model(config, device).eval()
        ids, mask = encode_prompts(
            tok,
            ["review: the plot was"] * config.batch_size,
            context_length(model),
            config.new_tokens,
            device,
        )
    else:
        ids, mask = _random_prompts(config, tok, device)
    best = float("inf")
    for i in range(config.repeats + 1):
        _sync(device)
        start = time.perf_counter()
        generate(
            model,
            ids,
            mask,
            max_new_tokens=config.new_tokens,
            eos_id=-1,
            pad_id=tok.pad_id,
            generator=torch.Generator(device=device).manual_seed(i),
        )
        _sync(device)
        if i > 0:
            best = min(best, time.perf_counter() - start)
    return config.batch_size * config.new_tokens / best


def bench_ppo_update(config: BenchConfig, device: torch.device, policy=None, tok=None) -> float:
    """Reply tokens per second through one PPO update (4 epochs, minibatches of half the batch,
    policy and value model), counting each token once per epoch. `policy`, `tok`: another model
    (its value model is its body with a scalar head) and its tokenizer; default the GPT."""
    B, R = config.batch_size, config.new_tokens
    if policy is None:
        tok = CharTokenizer()
        policy, value = _model(config, device), _model(config, device, head="scalar")
        prompt_ids, prompt_mask = encode_prompts(
            tok, ["review: the plot was"] * B, context_length(policy), R, device
        )
    else:
        value = scalar_model_from(policy)
        prompt_ids, prompt_mask = _random_prompts(config, tok, device)
    g = torch.Generator(device=device).manual_seed(0)
    reply = torch.randint(3, min(tok.vocab_size, 50), (B, R), device=device, generator=g)
    batch = {
        "input_ids": torch.cat([prompt_ids, reply], 1),
        "attention_mask": torch.cat([prompt_mask.float(), torch.ones(B, R, device=device)], 1),
        "actions": reply,
        "logprobs": -torch.rand(B, R, device=device, generator=g) * 4,
        "advantages": torch.randn(B, R, device=device, generator=g),
        "returns": torch.randn(B, R, device=device, generator=g),
        "values": torch.zeros(B, R, device=device),
        "mask": torch.ones(B, R, device=device),
    }
    ppo_config = PPOConfig(update_epochs=4, minibatch_size=B // 2)
    optimizer = torch.optim.AdamW([*policy.parameters(), *value.parameters()], lr=1e-5)
    evaluate = make_evaluate(policy, value)
    best = float("inf")
    for i in range(config.repeats + 1):
        _sync(device)
        start = time.perf_counter()
        ppo_update(
            evaluate, batch, optimizer, ppo_config, generator=torch.Generator().manual_seed(i)
        )
        _sync(device)
        if i > 0:
            best = min(best, time.perf_counter() - start)
    return ppo_config.update_epochs * B * R / best


def bench_stages(config: BenchConfig, device: torch.device) -> dict:
    """Each stage run for `stage_steps` steps: seconds, and the projection to the defaults."""
    defaults = resolve(PipelineConfig())
    n = config.stage_steps
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        pc = PipelineConfig(
            device=str(device),
            out=tmp,
            sft_steps=n,
            rm_steps=n,
            ppo_iterations=n,
            eval_prompts=64,
            progress=False,
            n_layer=config.n_layer,
            n_embd=config.n_embd,
        )
        summary = run_pipeline(pc)
    full = {"sft": defaults.sft_steps, "rm": defaults.rm_steps, "ppo": defaults.ppo_iterations}
    for stage, seconds in summary["seconds"].items():
        out[stage] = {
            "steps": n,
            "seconds": seconds,
            "seconds_per_step": seconds / n,
            "projected_default_seconds": seconds / n * full[stage],
            "default_steps": full[stage],
        }
    return out


def bench_wrapped(config: BenchConfig, device: torch.device) -> dict:
    """The wrapped model of `config.model` beside the project's GPT of the same depth, width and
    heads: tokens/s of generation and of the PPO update, and the ratios wrapped / GPT."""
    tok = load_tokenizer(config.model)
    wrapped = load_hf_model(config.model, device=device)
    hf = wrapped.lm.config
    pc = PipelineConfig(n_layer=hf.num_hidden_layers, n_embd=hf.hidden_size, n_head=hf.num_attention_heads,
                        block_size=config.prompt_tokens + config.new_tokens)
    gpt = GPT(model_config(pc, CharTokenizer())).to(device)
    models = {"gpt": (gpt, CharTokenizer()), "wrapped": (wrapped, tok)}
    out = {label: {"params": m.num_params(), "vocab_size": t.vocab_size, "generate_tokens_per_s": 0.0,
                   "ppo_update_tokens_per_s": 0.0} for label, (m, t) in models.items()}
    # the two models alternate, one timed run each (after a warm-up) per round, and the best round
    # counts: on a shared CPU a load that comes and goes then weighs on both alike
    once = dataclasses.replace(config, repeats=1)
    for _ in range(config.repeats):
        for label, (model, model_tok) in models.items():
            gen = bench_generation(once, device, model.eval(), model_tok)
            upd = bench_ppo_update(once, device, model, model_tok)
            out[label]["generate_tokens_per_s"] = max(out[label]["generate_tokens_per_s"], gen)
            out[label]["ppo_update_tokens_per_s"] = max(out[label]["ppo_update_tokens_per_s"], upd)
    for label, r in out.items():
        print(f"[llm.bench] {device}: {label} ({r['params'] / 1e6:.1f}M parameters): generation "
              f"{r['generate_tokens_per_s']:,.0f} tokens/s, PPO update {r['ppo_update_tokens_per_s']:,.0f} tokens/s",
              file=sys.stderr)
    out["ratio"] = {k: out["wrapped"][k] / out["gpt"][k] for k in ("generate_tokens_per_s", "ppo_update_tokens_per_s")}
    print(f"[llm.bench] {device}: wrapped / GPT: generation {out['ratio']['generate_tokens_per_s']:.2f}, "
          f"PPO update {out['ratio']['ppo_update_tokens_per_s']:.2f}", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m llm.bench", description=__doc__.split("\n")[0])
    add_arguments(parser, BenchConfig)
    config = from_arguments(BenchConfig, parser.parse_args(argv))
    torch.set_num_threads(config.threads)
    names = ["cpu", "cuda"] if config.devices == "auto" else [config.devices]
    if config.devices == "auto" and not torch.cuda.is_available():
        names = ["cpu"]
    results: dict = {"config": dataclasses.asdict(config), "threads": torch.get_num_threads()}
    if config.model:
        for name in names:
            results[name] = bench_wrapped(config, torch.device(name))
        print(json.dumps(results))
        return results
    for name in names:
        device = torch.device(name)
        gen = bench_generation(config, device)
        upd = bench_ppo_update(config, device)
        print(
            f"[llm.bench] {name}: generation {gen:,.0f} tokens/s, PPO update {upd:,.0f} tokens/s",
            file=sys.stderr,
        )
        stages = bench_stages(config, device)
        for stage, s in stages.items():
            print(
                f"[llm.bench] {name}: {stage} {s['seconds_per_step']:.3f} s/step → "
                f"{s['projected_default_seconds']:.0f} s for the default "
                f"{s['default_steps']} steps",
                file=sys.stderr,
            )
        results[name] = {
            "generate_tokens_per_s": gen,
            "ppo_update_tokens_per_s": upd,
            "stages": stages,
        }
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
