"""Do the pipeline's defaults transfer? PPO-RLHF, DPO and GRPO on three models × seeds, one table.

    python -m llm.bench_transfer                        # 3 models × seeds 0, 1, 2 (tens of minutes)
    python -m llm.bench_transfer --quick                # tiny budgets and models: seconds, checks the plumbing
    python -m llm.bench_transfer --models llama --seeds 0 --ref-kl-controller adaptive   # another β schedule

The models: `gpt`, the project's character-level GPT (the pipeline's default model); `gpt2`, a
tiny random GPT-2 (`llm.random_model`: 2 layers × 64, byte-level BPE, no pad token, BOS = EOS);
`llama`, a tiny random Llama-style model (3 layers × 96, grouped-query attention, no pad token,
BOS = EOS: the model on which the unbounded doubling rule let the KL run away). The random
models are written with the cell's seed, so each seed is another model as well as other streams.

Per model × seed (a *cell*), on the task `reviews`: one SFT and one reward model, then from
them PPO-RLHF, DPO and GRPO, each with the pipeline's defaults (β, its schedule and target,
learning rates, epochs, clipping) and the budgets below (fewer iterations and smaller batches
than the defaults: every cell has to fit a CPU). What a cell reports:
- PPO: gold reward SFT → after PPO (temperature 1, `eval_prompts` prompts); the KL to π_ref over
  its target, as the mean of the last half of the iterations and of the last 10, and the share
  of the last half within 0.5×–2× of the target, all read back from `metrics-bench.jsonl`; the final
  β; whether the run flagged reward hacking (`llm.rlhf.detect_reward_hacking`).
- DPO: gold reward SFT → final (temperature 1).
- GRPO, the task's gold reward as its verifier: gold reward SFT → final at temperature 1 on the
  prompts of PPO's evaluation (`sampled_gold`), and GRPO's own greedy figures beside them.
A cell *holds* when PPO's last-10 KL is at most 2× its target and every method ends with its
gold reward above the SFT policy's.

Each cell's figures are saved in `OUT/cells/MODEL-sSEED.json` and a cell already there is not run
again (nor an SFT or reward model already in `OUT/MODEL-sSEED/`), so an interrupted run
resumes and several processes may share the cells of one folder (`--models` apart); the table
is built from the files. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from core.config import add_arguments, from_arguments

__all__ = ["TransferConfig", "MODELS", "cell_config", "kl_figures", "sampled_gold", "run_cell", "holds", "main"]

# name → (llm.random_model settings, or None for the project's character-level GPT)
MODELS = {
    "gpt": None,
    "gpt2": dict(arch="gpt2", n_layer=2, n_embd=64, n_head=4),
    "llama": dict(arch="llama", n_layer=3, n_embd=96, n_head=4, pad_token=False),
}


@dataclass
class TransferConfig:
    models: str = "gpt,gpt2,llama"
    """Comma-separated models among gpt (the character GPT), gpt2, llama (tiny random ones)."""
    seeds: str = "0,1,2"
    """Comma-separated seeds; each is a cell per model."""
    out: str = "runs/bench-transfer"
    """Folder of the cells' runs and figures (a cell already there is not run again)."""
    quick: bool = False
    """Tiny budgets and models (seconds): checks that everything runs, measures nothing."""
    ref_kl_controller: str = ""
    """Run PPO with this β schedule instead of the default ('fixed', 'adaptive', 'proportional')."""
    sft_steps: int = 150
    """SFT steps of each cell (the task's default is 300)."""
    rm_steps: int = 100
    """Reward-model steps (the default is 300)."""
    ppo_iterations: int = 40
    """PPO iterations (the default is 80)."""
    rollout_batch_size: int = 32
    """Replies per PPO iteration (the default is 64)."""
    minibatch_size: int = 16
    """Replies per PPO minibatch (the default is 32)."""
    eval_prompts: int = 64
    """Prompts of the before/after evaluations of PPO and DPO (the default is 256)."""
    group_iterations: int = 20
    """GRPO iterations (the default is 60). 10 until GRPO on `gpt2` seed 0 ended exactly where it
    started (gold −0.34, 640 replies in all): too few updates to move a figure sampled at
    temperature 1 on 64 prompts; at 20 GRPO ends above SFT in every cell (llm/README.md), the
    stage 76 s against 58 s on that cell."""
    group_prompts: int = 8
    """GRPO groups per batch (the default is 64; 8 replies each)."""
    group_eval_prompts: int = 64
    """Prompts of GRPO's evaluation (the default is 500)."""
    threads: int = 1
    """CPU threads for torch."""


def _parse_list(text: str, name: str, allowed=None) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise ValueError(f"--{name} needs at least one value")
    if allowed is not None:
        bad = [x for x in items if x not in allowed]
        if bad:
            raise ValueError(f"--{name}: unknown {bad}; allowed: {', '.join(allowed)}")
    return items


def budgets(config: TransferConfig) -> dict:
    """The pipeline settings every cell shares: only budgets, never a method's setting."""
    if config.quick:
        return dict(sft_steps=3, sft_examples=500, rm_steps=3, rm_pairs=200, rm_eval_pairs=50, ppo_iterations=4,
                    rollout_batch_size=8, minibatch_size=8, eval_prompts=8, pref_steps=2, pref_pairs=100,
                    pref_eval_pairs=16, pref_eval_every=1, group_iterations=1, group_prompts=2,
                    group_eval_prompts=8, ref_kl_warmup=1, ref_kl_update_every=1)
    return dict(sft_steps=config.sft_steps, rm_steps=config.rm_steps, ppo_iterations=config.ppo_iterations,
                rollout_batch_size=config.rollout_batch_size, minibatch_size=config.minibatch_size,
                eval_prompts=config.eval_prompts, group_iterations=config.group_iterations,
                group_prompts=config.group_prompts, group_eval_prompts=config.group_eval_prompts,
                group_eval_every=config.group_iterations)


def cell_config(config: TransferConfig, model_dir: str | None, seed: int, out: Path, algo: str):
    """The `PipelineConfig` of one method of one cell: the defaults, the cell's budgets."""
    from llm.config import PipelineConfig

    extra = dict(budgets(config))
    if algo != "grpo":
        extra.pop("group_eval_every", None)
    if algo in ("dpo", "grpo"):  # GRPO's minibatch is its own setting (the whole batch), not a budget
        extra.pop("minibatch_size", None)
    if config.quick and model_dir is None:
        extra.update(n_layer=1, n_embd=32, n_head=2)
    if config.ref_kl_controller:
        extra["ref_kl_controller"] = config.ref_kl_controller
    return PipelineConfig(task="reviews", seed=seed, model=model_dir, out=str(out),
                          algo="ppo" if algo in ("sft", "rm") else algo, stage=algo, tag="bench",
                          progress=False, threads=config.threads, **extra)


def kl_figures(metrics_path: Path, target: float) -> dict:
    """PPO's KL to π_ref against its target, from the logged `rlhf/ref_kl` of `metrics.jsonl`:
    the mean of the last half of the iterations and of the last 10, over the target, and the share
    of the last half within [0.5, 2]× the target."""
    kls = []
    for line in metrics_path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "rlhf/ref_kl" in record:
            kls.append(record["rlhf/ref_kl"])
    if not kls:
        raise ValueError(f"{metrics_path} holds no rlhf/ref_kl")
    half, tail = kls[len(kls) // 2:], kls[-10:]
    return {
        "iterations": len(kls),
        "last_half_ratio": sum(half) / len(half) / target,
        "final_ratio": sum(tail) / len(tail) / target,
        "max_ratio": max(kls) / target,
        "last_half_in_band": sum(0.5 * target <= k <= 2 * target for k in half) / len(half),
    }


def sampled_gold(config: TransferConfig, model: str, seed: int) -> dict:
    """Gold reward of the SFT and the GRPO policy at temperature 1 on the prompts of PPO's evaluation
    (`llm.rlhf.evaluate_policy`, seed + 100, `eval_prompts`): the same measure as PPO's and DPO's.
    (GRPO's own summary is its greedy evaluation, on which a few iterations rarely change a reply.)"""
    from llm.checkpoints import STAGE_KINDS, load_stage
    from llm.model_interface import load_tokenizer
    from llm.rlhf import evaluate_policy
    from llm.tasks import get_task

    out = Path(config.out) / f"{model}-s{seed}"
    model_dir = str(out / "model") if MODELS[model] is not None else None
    tok, task = load_tokenizer(model_dir), get_task("reviews")
    n = budgets(config)["eval_prompts"]
    gold = {}
    for name, path, kind in (("gold_sft", "sft.pt", "sft"), ("gold_final", "grpo-bench.pt", "grpo")):
        models, _ = load_stage(out / path, tok, kind=STAGE_KINDS[kind])
        policy = models["model"] if kind == "sft" else models["policy"]
        gold[name] = evaluate_policy(policy.eval(), task, tok, n, seed + 100, torch.device("cpu"))["gold_reward"]
    return gold


def run_cell(config: TransferConfig, model: str, seed: int) -> dict:
    """SFT and the reward model once, then PPO, DPO and GRPO from them; the cell's figures."""
    from core.checkpoint import load_checkpoint
    from llm.checkpoints import STAGE_KINDS
    from llm.pipeline import run_pipeline
    from llm.random_model import write_random_model

    out = Path(config.out) / f"{model}-s{seed}"
    out.mkdir(parents=True, exist_ok=True)
    model_dir = None
    if MODELS[model] is not None:
        settings = dict(MODELS[model])
        if config.quick:
            settings.update(n_layer=1, n_embd=32, n_head=2)
        model_dir = str(out / "model")
        if not (out / "model" / "config.json").is_file():
            write_random_model(model_dir, seed=seed, **settings)
    start = time.perf_counter()
    # SFT and the reward model once (kept in the cell's folder: a rerun reuses them), then the
    # three methods, each a tagged run with a metrics file of its own
    for stage in ("sft", "rm"):
        if not (out / f"{stage}.pt").is_file():
            run_pipeline(cell_config(config, model_dir, seed, out, stage))
    rm_meta = load_checkpoint(out / "rm.pt", kind=STAGE_KINDS["rm"])["meta"]
    ppo = run_pipeline(cell_config(config, model_dir, seed, out, "ppo"))
    dpo = run_pipeline(cell_config(config, model_dir, seed, out, "dpo"))
    grpo = run_pipeline(cell_config(config, model_dir, seed, out, "grpo"))
    target = ppo["kl"]["target"]
    kl = kl_figures(out / "metrics-bench.jsonl", target)
    cell = {
        "model": model,
        "seed": seed,
        "rm_gold_agreement": rm_meta["stats"]["gold_agreement"],
        "ppo": {"gold_sft": ppo["gold_reward"]["sft"], "gold_final": ppo["gold_reward"]["final"],
                "score_sft": ppo["score"]["sft"], "score_final": ppo["score"]["final"],
                "kl_target": target, **{f"kl_{k}": v for k, v in kl.items()},
                "final_ref_kl_coef": ppo["final_ref_kl_coef"],
                "reward_hacking": ppo["reward_hacking"] is not None},
        "dpo": {"gold_sft": dpo["gold_reward"]["sft"], "gold_final": dpo["gold_reward"]["final"]},
        "grpo": {**sampled_gold(config, model, seed), "greedy_gold_sft": grpo["gold_reward"]["sft"],
                 "greedy_gold_final": grpo["gold_reward"]["final"]},
        "seconds": time.perf_counter() - start,
    }
    cell["holds"] = holds(cell)
    return cell


def holds(cell: dict) -> bool:
    """PPO's last-10 KL at most 2× its target, and every method's gold reward above the SFT policy's."""
    return bool(cell["ppo"]["kl_final_ratio"] <= 2.0
                and all(cell[m]["gold_final"] > cell[m]["gold_sft"] for m in ("ppo", "dpo", "grpo")))


def table(cells: list[dict]) -> str:
    """The markdown table of every cell."""
    lines = ["| model | seed | RM agreement | PPO gold SFT → final | KL/target last half (last 10) | "
             "last half in 0.5–2× | final β | hacking | DPO gold SFT → final | GRPO gold SFT → final | holds |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        p, d, g = c["ppo"], c["dpo"], c["grpo"]
        lines.append(
            f"| {c['model']} | {c['seed']} | {c['rm_gold_agreement']:.1%} | "
            f"{p['gold_sft']:.2f} → {p['gold_final']:.2f} | "
            f"{p['kl_last_half_ratio']:.2f} ({p['kl_final_ratio']:.2f}) | {p['kl_last_half_in_band']:.0%} | "
            f"{p['final_ref_kl_coef']:.3g} | {'yes' if p['reward_hacking'] else 'no'} | "
            f"{d['gold_sft']:.2f} → {d['gold_final']:.2f} | {g['gold_sft']:.2f} → {g['gold_final']:.2f} | "
            f"{'yes' if c['holds'] else '**no**'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m llm.bench_transfer", description=__doc__.split("\n")[0])
    add_arguments(parser, TransferConfig)
    config = from_arguments(TransferConfig, parser.parse_args(argv))
    try:
        models = _parse_list(config.models, "models", tuple(MODELS))
        seeds = [int(s) for s in _parse_list(config.seeds, "seeds")]
        if config.ref_kl_controller not in ("", "fixed", "adaptive", "proportional"):
            raise ValueError("--ref-kl-controller must be fixed, adaptive or proportional, "
                             f"got {config.ref_kl_controller!r}")
    except ValueError as exc:
        parser.error(str(exc))
    torch.set_num_threads(config.threads)
    cells_dir = Path(config.out) / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    cells = []
    for model in models:
        for seed in seeds:
            path = cells_dir / f"{model}-s{seed}.json"
            if path.is_file():
                cell = json.loads(path.read_text(encoding="utf-8"))
                if "greedy_gold_sft" not in cell["grpo"]:  # a cell of an earlier version: GRPO's greedy figures
                    cell["grpo"] = {**sampled_gold(config, model, seed), "greedy_gold_sft": cell["grpo"]["gold_sft"],
                                    "greedy_gold_final": cell["grpo"]["gold_final"]}
                    cell["holds"] = holds(cell)
                    path.write_text(json.dumps(cell), encoding="utf-8")
            else:
                cell = run_cell(config, model, seed)
                path.write_text(json.dumps(cell), encoding="utf-8")
            print(f"[llm.bench_transfer] {model} seed {seed}: holds {cell['holds']} ({cell['seconds']:.0f}s)",
                  file=sys.stderr)
            cells.append(cell)
    print(table(cells))
    result = {"config": dataclasses.asdict(config), "cells": cells,
              "held": sum(c["holds"] for c in cells), "total": len(cells)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
