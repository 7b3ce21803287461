"""The small-LM RLHF pipeline end to end: SFT → reward model → PPO-RLHF, on a CPU in minutes.

    python -m llm.pipeline                       # every stage, task 'reviews', runs/llm-reviews
    python -m llm.pipeline --task arithmetic     # the verifiable-reward task
    python -m llm.pipeline --stage ppo           # one stage, from the earlier stages' checkpoints
    python -m llm.pipeline --resume              # skip stages whose checkpoint exists
    python -m llm.pipeline --stage ppo --ref-kl-controller fixed --ref-kl-coef 0 --tag beta0 \
                           --ppo-iterations 150  # the overoptimisation run: no KL term

Every stage function has the same shape, `train_X(config, task, tok, *earlier models, device,
out, progress, log) -> (models, summary)` (`STAGES`: `llm.sft.train_sft`,
`llm.reward_model.train_reward_model`, `llm.rlhf.train_ppo`, `llm.preference.train_preference`,
`llm.group.train_group`): it trains, evaluates, writes its own figures and prints its own
result line; this module only resolves the configuration, runs the stages in order, loads and
saves their checkpoints and writes the metrics.

Outputs in the run folder: `config.json` (the resolved configuration, also printed at the
start), `sft.pt`, `rm.pt`, `ppo.pt` (one checkpoint per stage, written atomically at the end
of the stage), `metrics.jsonl` (one JSON object per line under the fixed metric names,
documented in `METRIC_DOCS`), `ppo.png` (proxy score, gold reward, KL and β over training),
`report.md` (sample replies before and after RL). With `--tag T` the PPO outputs are
`ppo-T.pt`, `config-T.json`, `metrics-T.jsonl`, `ppo-T.png`, `report-T.md`, and the plot also
shows the untagged run for comparison; another method's are `ALGO[-T].pt`, `config-ALGO[-T].json`,
`metrics-ALGO[-T].jsonl`, `ALGO[-T].png`. The last line printed is one JSON object with the
headline numbers.

Several processes: `torchrun --standalone --nproc_per_node=2 -m llm.pipeline` runs every stage
data-parallel (`core.distributed`): the batch sizes stay those of the run (each rank takes its
share: `sft_batch_size`, `rm_batch_size`, `pref_batch_size`, `rollout_batch_size`,
`group_prompts` and `minibatch_size` must be multiples of N), the gradients are averaged over
the ranks, and only rank 0 writes config.json, the metrics, the checkpoints, plots and reports.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

from core import distributed
from core.checkpoint import CheckpointError, load_checkpoint
from core.checks import NonFiniteError
from core.config import add_arguments, config_to_dict, format_config, from_arguments, given_flags, save_config
from core.device import resolve_device, seed_everything
from core.metrics import MetricsWriter
from llm.checkpoints import STAGE_KINDS, load_stage, save_stage
from llm.config import (
    GROUP_ALGOS,
    PREFERENCE_ALGOS,
    PRESETS,
    STAGE_ARGS,
    PipelineConfig,
    model_config,
    resolve,
    stages_of,
    tag_suffix,
)
from llm.gpt import GPT
from llm.group import train_group
from llm.model_interface import check_model, load_tokenizer
from llm.preference import train_preference
from llm.reward_model import train_reward_model
from llm.rlhf import train_ppo
from llm.sft import train_sft
from llm.tasks import get_task
from llm.tokenizer import CharTokenizer

__all__ = ["run_pipeline", "main", "METRIC_DOCS", "STAGES", "ignored_flags", "config_file"]

# The function that runs each stage.
STAGES = {
    "sft": train_sft,
    "rm": train_reward_model,
    "ppo": train_ppo,
    **{algo: train_preference for algo in PREFERENCE_ALGOS},
    **{algo: train_group for algo in GROUP_ALGOS},
}
# The fields every run reads, whichever stages it runs (where to write, how to show progress).
_ALWAYS_READ = {f.name for f in dataclasses.fields(PipelineConfig)} - {
    f.name for cls in set(STAGE_ARGS.values()) for f in dataclasses.fields(cls)
} | {"task", "algo"}

# Metric names of this front end beyond the shared ones of `core.metrics.METRICS` (where
# rlhf/score, rlhf/gold_reward, rlhf/ref_kl, rlhf/response_length, charts/ref_kl_coef and the PPO losses
# are documented). With reward_source='gold', rlhf/score is the verifier's reward.
METRIC_DOCS = {
    "sft/loss": "cross-entropy of the reply tokens (and EOS) on a training batch",
    "rm/loss": "Bradley–Terry loss −log σ(R⁺ − R⁻) on a training batch (RM-1)",
    "rm/accuracy": "share of training pairs whose chosen reply scores higher",
    "rlhf/eos_rate": "share of sampled replies that ended with EOS within the budget",
    "rlhf/shaped_return": "mean Σ_t r_t = score − β·KL − missing-EOS penalty per reply "
    "(what PPO maximises)",
    # direct preference methods (llm/preference.py); r_θ = log π_θ(y|x) − log π_ref(y|x)
    "pref/loss": "DPO, IPO or KTO loss on the training batch (DP-1, DP-2, DP-3)",
    "pref/accuracy": "share of the batch's pairs whose implicit reward ranks the chosen reply above the rejected "
    "one (DPO, IPO; the held-out figure is in the summary)",
    "pref/margin": "mean r_θ of the chosen (desirable) replies minus that of the rejected (undesirable) ones, "
    "in nats: the mean h of DPO and IPO",
    "pref/chosen_reward": "mean implicit reward β·r_θ of the chosen (desirable) replies (τ·r_θ for IPO)",
    "pref/rejected_reward": "mean implicit reward β·r_θ of the rejected (undesirable) replies (τ·r_θ for IPO)",
    "pref/kto_z0": "KTO's reference point z₀ = max(0, mean r_θ of the batch's mismatched pairs)",
    # the group methods (llm.group); lengths are in tokens with EOS
    "group/accuracy": "exact-match accuracy on held-out (test-split) prompts, greedy, every few iterations",
    "group/train_reward": "mean reward of the replies sampled this iteration (checker + DAPO's overlong penalty)",
    "group/train_accuracy": "share of the replies sampled this iteration that are right",
    "group/wrong_length": "mean length of the wrong sampled replies (GRPO's 1/|o| favours long wrong ones, GR-3)",
    "group/truncated_share": "share of sampled replies cut off by the budget without EOS",
    "group/uniform_share": "share of sampled groups whose rewards were all equal (zero advantage, DA-2)",
    "group/dropped_share": "share of sampled groups left out of the batch by dynamic sampling (DA-2); 0 without it",
}


def config_file(config: PipelineConfig) -> str:
    """The name of the run's `config.json`, beside the metrics file of its last stage:
    `config[-TAG].json` for PPO (and for SFT or the reward model alone), `config-ALGO[-TAG].json`
    for another method (whose metrics go to `metrics-ALGO[-TAG].jsonl`)."""
    if config.algo != "ppo" and config.stage in ("all", config.algo):
        return f"config-{config.algo}{tag_suffix(config.tag)}.json"
    return f"config{tag_suffix(config.tag) if config.algo == 'ppo' else ''}.json"


def ignored_flags(given: set[str], stages_run: list[str]) -> list[str]:
    """The fields among `given` (set on the command line) that no stage of `stages_run` reads:
    each stage reads its own settings class (`llm.config.STAGE_ARGS`). Sorted."""
    read = set(_ALWAYS_READ)
    for stage in stages_run:
        read |= {f.name for f in dataclasses.fields(STAGE_ARGS[stage])}
    return sorted(given - read)


def _print_start(config: PipelineConfig, out: Path, device: torch.device, tok: CharTokenizer) -> None:
    task = get_task(config.task)
    print(format_config(config, "[llm.pipeline] resolved configuration"), file=sys.stderr)
    if config.model:
        described = f"model: {config.model} (transformers)"
    else:
        n_params = GPT(model_config(config, tok)).num_params()
        described = (f"model: {config.n_layer} layers × {config.n_embd} channels, {n_params / 1e6:.2f}M parameters, "
                     f"context {config.block_size}")
    print(
        f"[llm.pipeline] task={config.task} algo={config.algo} stage={config.stage} device={device} out={out}; "
        f"{described}; vocabulary {tok.vocab_size}; reply budget {task.max_new_tokens} tokens",
        file=sys.stderr,
    )


def run_pipeline(config: PipelineConfig, given: set[str] = frozenset()) -> dict:
    """Run the stages `config.stage` asks for; return the summary printed as the last line.

    `given`: the fields set on the command line (`core.config.given_flags`); those that no stage
    of this run reads (a stage skipped by --resume, or one another --algo has) are named.
    """
    config = resolve(config)
    tok = load_tokenizer(config.model)  # the character tokenizer, or the wrapped model's own
    task = get_task(config.task)
    device = distributed.setup(config.device)  # under torchrun: join the group, this rank's GPU
    main = distributed.is_main()  # only rank 0 writes files and shows progress
    out = Path(config.out or f"runs/llm-{config.task}")
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)  # the same on every rank: same weights; each stage seeds its own streams
    if main:
        _print_start(config, out, device, tok)
        save_config(config, out, config_file(config))
    expected = None if config.model else model_config(config, tok)  # a wrapped model: its folder is checked
    all_stages = stages_of(config.algo)
    requested = all_stages if config.stage == "all" else [config.stage]
    paths = {stage: out / f"{stage}.pt" for stage in ("sft", "rm")}
    paths[config.algo] = out / f"{config.algo}{tag_suffix(config.tag)}.pt"
    skipped = [s for s in requested if config.resume and paths[s].is_file()]
    to_run = [s for s in requested if s not in skipped]
    for stage in skipped:
        print(f"[llm.pipeline] {stage}: found {paths[stage]}, skipped (--resume)", file=sys.stderr)
    ignored = ignored_flags(set(given), to_run)
    if ignored:
        why = f"--resume skipped {', '.join(skipped)}" if skipped else f"the stages run are {to_run}"
        print(
            f"[llm.pipeline] ignored flags ({why}, and no stage that runs reads them): "
            + ", ".join("--" + name.replace("_", "-") for name in ignored),
            file=sys.stderr,
        )
    # SFT, the reward model and PPO log to metrics[-TAG].jsonl; every other method's own stage
    # to metrics-ALGO[-TAG].jsonl. A fresh full run or a tagged run starts a new file; a single
    # stage and a resumed run append to the run's file (a method's own stage starts its file anew).
    tagged = config.tag and config.algo == "ppo"
    writer = MetricsWriter(
        out / f"metrics{tag_suffix(config.tag) if tagged else ''}.jsonl",
        extra_names=tuple(METRIC_DOCS),
        append=config.resume or (config.stage != "all" and not tagged),
        track=config.track,
    ) if main else None
    summary: dict = {
        "task": config.task,
        "algo": config.algo,
        "seconds": {stage: None for stage in all_stages},
        "rm_gold_agreement": None,
        "gold_reward": {"sft": None, "final": None, "best": task.best_gold()},
        "kl": {"final": None, "target": config.ref_kl_controller_target if config.algo == "ppo" else None},
    }
    models: dict[str, dict[str, GPT]] = {}

    def earlier(stage: str) -> dict[str, GPT]:
        if stage not in models:
            models[stage] = _load(paths[stage], stage, tok, expected, device)
        return models[stage]

    current = None
    try:
        for stage in all_stages:
            current = stage
            if stage not in to_run:
                if paths[stage].is_file():  # a skipped or not-requested stage reports what it recorded
                    meta = _meta(paths[stage], stage) or {}
                    summary["seconds"][stage] = meta.get("seconds")
                    if stage == "rm":
                        summary["rm_gold_agreement"] = meta.get("stats", {}).get("gold_agreement")
                continue
            # the earlier stages' models this stage starts from
            if stage == "sft":
                inputs = ()
            elif stage == "ppo":  # the reward model only where it scores (or exists, for the report)
                sft_model = earlier("sft")["model"]
                rm = earlier("rm")["reward_model"] if config.reward_source == "rm" or paths["rm"].is_file() else None
                inputs = (sft_model, rm)
            else:
                inputs = (earlier("sft")["model"],)
            own_file = stage not in ("sft", "rm", "ppo")
            stage_writer = (
                MetricsWriter(out / f"metrics-{stage}{tag_suffix(config.tag)}.jsonl", extra_names=tuple(METRIC_DOCS),
                              append=config.resume, track=config.track)
                if own_file and main else writer
            )
            try:
                trained, stage_summary = STAGES[stage](
                    config, task, tok, *inputs, device, out=out if main else None,
                    progress=config.progress and main, log=stage_writer.write if main else None,
                )
            finally:
                if own_file and main:
                    stage_writer.close()
            stats = {k: v for k, v in stage_summary.items() if k != "history"}
            if main:
                save_stage(paths[stage], STAGE_KINDS[stage], trained, tok,
                           {"task": config.task, "config": config_to_dict(config), "seconds": stats["seconds"],
                            "stats": stats})
            distributed.barrier()  # the checkpoint is on disk before any rank goes on
            models[stage] = trained
            summary["seconds"][stage] = stats["seconds"]
            if stage == "rm":
                summary["rm_gold_agreement"] = stats["gold_agreement"]
            elif stage == config.algo:
                summary.update({k: v for k, v in stats.items() if k != "seconds"})
            if main:
                print(f"[llm.pipeline] {stage}: {stats['seconds']:.0f}s → {paths[stage]}", file=sys.stderr)
    except KeyboardInterrupt:
        if writer is not None:
            writer.close()
        kept = [str(p) for p in paths.values() if p.is_file()]
        print(
            f"\n[llm.pipeline] interrupted during stage {current!r}; checkpoints intact: "
            f"{kept or 'none'}. Run again with --resume to continue from them.",
            file=sys.stderr,
        )
        raise
    if writer is not None:
        writer.close()
    return summary


def _meta(path: Path, stage: str) -> dict | None:
    try:
        return load_checkpoint(path, kind=STAGE_KINDS[stage])["meta"]
    except CheckpointError:
        return None


def _load(path: Path, stage: str, tok, expected, device) -> dict[str, GPT]:
    """Load an earlier stage's models, with a message that says which stage to run first."""
    if not path.is_file():
        raise SystemExit(
            f"[llm.pipeline] {path} does not exist: run the {stage!r} stage first "
            f"(python -m llm.pipeline --stage {stage} --out {path.parent})"
        )
    loaded, _ = load_stage(path, tok, kind=STAGE_KINDS[stage], expected_config=expected, device=device)
    return loaded


def main(argv: list[str] | None = None) -> dict:
    presets = "\n".join(
        f"  {kind} {name:<11} " + ", ".join(f"{k}={v}" for k, v in values.items())
        for kind, table in PRESETS.items() for name, values in table.items() if values
    )
    parser = argparse.ArgumentParser(
        prog="python -m llm.pipeline",
        description="SFT → Bradley–Terry reward model → PPO-RLHF on a tiny GPT, "
        "on tasks the project generates.",
        epilog=f"presets (the value of a field whose default is None), by --task and by --algo:\n{presets}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser, PipelineConfig)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    # bad input is said in one line, before anything is built or written (nothing saved is lost)
    try:
        config = resolve(from_arguments(PipelineConfig, args))  # a preset that conflicts is refused here
        resolve_device(config.device)  # --device cuda without a GPU
        if config.model:
            check_model(config.model)  # a causal LM with a tokenizer whose every id it can embed
    except ValueError as exc:
        print(f"llm.pipeline: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    torch.set_num_threads(config.threads)
    start = time.perf_counter()
    try:
        summary = run_pipeline(config, given_flags(argv, parser))
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except (CheckpointError, NonFiniteError, FloatingPointError) as exc:
        print(f"llm.pipeline: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        distributed.cleanup()
    if os.environ.get("RANK", "0") != "0":
        return summary  # rank 0 alone prints the summary
    print(f"[llm.pipeline] total {time.perf_counter() - start:.0f}s", file=sys.stderr)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
