"""The small-LM RLHF pipeline end to end: SFT → reward model → PPO-RLHF, on a CPU in minutes.

    python -m llm.pipeline                       # every stage, task 'reviews', runs/llm-reviews
    python -m llm.pipeline --task arithmetic     # the verifiable-reward task
    python -m llm.pipeline --stage ppo           # one stage, from the earlier stages' checkpoints
    python -m llm.pipeline --resume true         # skip stages whose checkpoint exists
    python -m llm.pipeline --stage ppo --kl-kind fixed --init-beta 0 --tag beta0 \
                           --ppo-iterations 150  # the overoptimisation run: no KL term

Outputs in the run folder: `sft.pt`, `rm.pt`, `ppo.pt` (one checkpoint per stage, written
atomically at the end of the stage), `metrics.jsonl` (one JSON object per line under the fixed
metric names, documented in `METRIC_DOCS`), `ppo.png` (proxy score, gold reward, KL and β over
training), `report.md` (sample replies before and after RL). With `--tag T` the PPO outputs
are `ppo-T.pt`, `metrics-T.jsonl`, `ppo-T.png`, `report-T.md`, and the plot also shows the
untagged run for comparison. The last line printed is one JSON object with the headline numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from core.checkpoint import CheckpointError, load_checkpoint
from core.checks import NonFiniteError
from core.config import add_arguments, config_to_dict, from_arguments
from core.device import resolve_device, seed_everything
from core.metrics import MetricsWriter
from llm.checkpoints import STAGE_KINDS, load_stage, save_stage
from llm.config import PREFERENCE_ALGOS, PipelineConfig, model_config, resolve, stages_of, tag_suffix
from llm.model import GPT
from llm.plots import plot_rlhf, read_ppo_history
from llm.reward_model import score_replies, train_reward_model
from llm.rlhf import evaluate_policy, train_ppo
from llm.sft import train_sft
from llm.tasks import get_task
from llm.tokenizer import CharTokenizer

__all__ = ["run_pipeline", "main", "METRIC_DOCS"]

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


def _print_start(
    config: PipelineConfig, out: Path, device: torch.device, tok: CharTokenizer
) -> None:
    task = get_task(config.task)
    n_params = GPT(model_config(config, tok)).num_params()
    print(
        f"[llm.pipeline] task={config.task} stage={config.stage} device={device} out={out}",
        file=sys.stderr,
    )
    print(
        f"[llm.pipeline] model: {config.n_layer} layers × {config.n_embd} channels, "
        f"{n_params / 1e6:.2f}M parameters, context {config.block_size}; vocabulary "
        f"{tok.vocab_size}; reply budget {task.max_new_tokens} tokens",
        file=sys.stderr,
    )
    sft = f"[llm.pipeline] sft: {config.sft_steps} steps × {config.sft_batch_size}; "
    if config.algo == "ppo":
        last = (
            f"rm: {config.rm_steps} steps × {config.rm_batch_size} pairs; "
            f"ppo: {config.ppo_iterations} iterations × {config.rollout_batch_size} replies, "
            f"{config.ppo_epochs} epochs, reward={config.reward_source}, "
            f"β {config.kl_kind} from {config.init_beta}, target KL {config.target_kl}, "
            f"estimator {config.kl_estimator}"
        )
    elif config.algo in PREFERENCE_ALGOS:
        strength = f"τ {config.tau}" if config.algo == "ipo" else f"β {config.beta}"
        last = f"{config.algo}: {config.pref_steps} steps × {config.pref_batch_size}, {strength}, lr {config.pref_lr}"
    else:
        last = f"{config.algo}: the group method's settings are printed when its stage starts"
    print(sft + last, file=sys.stderr)


def run_pipeline(config: PipelineConfig) -> dict:
    """Run the stages `config.stage` asks for; return the summary printed as the last line."""
    config = resolve(config)
    tok = CharTokenizer()
    task = get_task(config.task)
    device = resolve_device(config.device)
    out = Path(config.out or f"runs/llm-{config.task}")
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    _print_start(config, out, device, tok)
    expected = model_config(config, tok)
    all_stages = stages_of(config.algo)
    stages = all_stages if config.stage == "all" else [config.stage]
    paths = {
        "sft": out / "sft.pt",
        "rm": out / "rm.pt",
        config.algo: out / f"{config.algo}{tag_suffix(config.tag)}.pt",
    }
    # SFT, the reward model and PPO log to metrics[-TAG].jsonl; every other method's own stage
    # to metrics-ALGO[-TAG].jsonl. A fresh full run or a tagged run starts a new file; a single
    # stage and a resumed run append to the run's file (a method's own stage starts its file anew).
    tagged = config.tag and config.algo == "ppo"
    writer = MetricsWriter(
        out / f"metrics{tag_suffix(config.tag) if tagged else ''}.jsonl",
        extra_names=tuple(METRIC_DOCS),
        append=config.resume or (config.stage != "all" and not tagged),
    )
    log = writer.write
    summary: dict = {
        "task": config.task,
        "seconds": {stage: None for stage in all_stages},
        "rm_gold_agreement": None,
        "gold_reward": {"sft": None, "final": None, "best": task.best_gold()},
        "kl": {"final": None, "target": config.target_kl},
    }
    models: dict = {}
    current = None
    try:
        for stage in all_stages:
            current = stage
            run_it = stage in stages and not (config.resume and paths[stage].is_file())
            if stage in stages and not run_it:
                print(
                    f"[llm.pipeline] {stage}: found {paths[stage]}, skipped (--resume)",
                    file=sys.stderr,
                )
            if stage == "sft":
                if run_it:
                    sft, stats = train_sft(
                        config, task, tok, device, progress=config.progress, log=log
                    )
                    save_stage(
                        paths["sft"],
                        STAGE_KINDS["sft"],
                        {"model": sft},
                        tok,
                        {
                            "task": config.task,
                            "config": config_to_dict(config),
                            "seconds": stats["seconds"],
                            "stats": stats,
                        },
                    )
                    summary["seconds"]["sft"] = stats["seconds"]
                    models["sft"] = sft
                    print(
                        f"[llm.pipeline] sft: loss {stats['final_loss']:.3f} "
                        f"in {stats['seconds']:.0f}s → {paths['sft']}",
                        file=sys.stderr,
                    )
            elif stage == "rm":
                if run_it:
                    sft = (
                        models.get("sft")
                        or _load(paths["sft"], "sft", tok, expected, device, summary)["model"]
                    )
                    rm, stats = train_reward_model(
                        config, task, tok, sft, device, progress=config.progress, log=log
                    )
                    save_stage(
                        paths["rm"],
                        STAGE_KINDS["rm"],
                        {"reward_model": rm},
                        tok,
                        {
                            "task": config.task,
                            "config": config_to_dict(config),
                            "seconds": stats["seconds"],
                            "stats": stats,
                        },
                    )
                    summary["seconds"]["rm"] = stats["seconds"]
                    summary["rm_gold_agreement"] = stats["gold_agreement"]
                    models["rm"] = rm
                    print(
                        "[llm.pipeline] rm: held-out agreement with the gold ranking "
                        f"{stats['gold_agreement']:.3f} ({stats['gold_pairs']} pairs), "
                        f"label accuracy {stats['label_accuracy']:.3f}, "
                        f"in {stats['seconds']:.0f}s → {paths['rm']}",
                        file=sys.stderr,
                    )
            elif stage == "ppo":
                if run_it:
                    _run_ppo(config, task, tok, device, out, paths, models, expected, summary, log)
            elif run_it:  # the last stage of a direct preference or group method
                _run_method(config, task, tok, device, out, paths, models, expected, summary)
            if not run_it and paths[stage].is_file() and stage in ("sft", "rm"):
                # a skipped or not-requested stage still reports what its checkpoint recorded
                meta = _meta(paths[stage], stage)
                if meta is not None:
                    summary["seconds"][stage] = summary["seconds"][stage] or meta.get("seconds")
                    if stage == "rm":
                        summary["rm_gold_agreement"] = meta.get("stats", {}).get("gold_agreement")
    except KeyboardInterrupt:
        writer.close()
        kept = [str(p) for s, p in paths.items() if p.is_file()]
        print(
            f"\n[llm.pipeline] interrupted during stage {current!r}; checkpoints intact: "
            f"{kept or 'none'}. Run again with --resume true to continue from them.",
            file=sys.stderr,
        )
        raise
    writer.close()
    return summary


def _meta(path: Path, stage: str) -> dict | None:
    try:
        return load_checkpoint(path, kind=STAGE_KINDS[stage])["meta"]
    except CheckpointError:
        return None


def _load(path: Path, stage: str, tok, expected, device, summary) -> dict:
    """Load an earlier stage's models, with a message that says which stage to run first."""
    if not path.is_file():
        raise SystemExit(
            f"[llm.pipeline] {path} does not exist: run the {stage!r} stage first "
            f"(python -m llm.pipeline --stage {stage} --out {path.parent})"
        )
    models, meta = load_stage(
        path, tok, kind=STAGE_KINDS[stage], expected_config=expected, device=device
    )
    if summary["seconds"].get(stage) is None:
        summary["seconds"][stage] = meta.get("seconds")
    if stage == "rm":
        summary["rm_gold_agreement"] = meta.get("stats", {}).get("gold_agreement")
    return models


def _run_ppo(config, task, tok, device, out: Path, paths, models, expected, summary, log) -> None:
    sft = models.get("sft") or _load(paths["sft"], "sft", tok, expected, device, summary)["model"]
    rm = None
    if config.reward_source == "rm" or paths["rm"].is_file() or "rm" in models:
        rm = (
            models.get("rm")
            or _load(paths["rm"], "rm", tok, expected, device, summary)["reward_model"]
        )
    from llm.rlhf import gold_scorer, reward_model_scorer

    score_fn = reward_model_scorer(rm) if config.reward_source == "rm" else gold_scorer(task)
    before = evaluate_policy(
        sft, task, tok, config.eval_prompts, config.seed + 100, device, score_fn
    )
    policy, value, stats = train_ppo(
        config, task, tok, sft, rm, device, progress=config.progress, log=log
    )
    after = evaluate_policy(
        policy, task, tok, config.eval_prompts, config.seed + 100, device, score_fn
    )
    history = stats["history"]
    tail = history[-10:]
    kl_final = sum(r["rlhf/ref_kl"] for r in tail) / len(tail)
    best = task.best_gold()
    gap = best - before["gold_reward"]
    closed = (after["gold_reward"] - before["gold_reward"]) / gap if gap > 0 else float("nan")
    in_band = None
    if config.target_kl:
        later = history[len(history) // 4 :]
        in_band = sum(
            0.5 * config.target_kl <= r["rlhf/ref_kl"] <= 2 * config.target_kl for r in later
        ) / len(later)
    ppo_stats = {
        "gold_sft": before["gold_reward"],
        "gold_final": after["gold_reward"],
        "gold_best": best,
        "score_sft": before["score"],
        "score_final": after["score"],
        "gap_closed": closed,
        "kl_final": kl_final,
        "kl_in_band_after_first_quarter": in_band,
        "final_beta": stats["final_beta"],
        "eos_rate_final": after["eos_rate"],
        "response_length_final": after["response_length"],
    }
    save_stage(
        paths["ppo"],
        STAGE_KINDS["ppo"],
        {"policy": policy, "value": value},
        tok,
        {
            "task": config.task,
            "config": config_to_dict(config),
            "seconds": stats["seconds"],
            "stats": ppo_stats,
        },
    )
    summary["seconds"]["ppo"] = stats["seconds"]
    summary["gold_reward"].update(sft=before["gold_reward"], final=after["gold_reward"])
    summary["kl"]["final"] = kl_final
    summary["gap_closed"] = closed

    suffix = tag_suffix(config.tag)
    runs = {f"ppo{suffix or ''} ({config.kl_kind} β={config.init_beta:g})": history}
    if config.tag:
        default_history = read_ppo_history(out / "metrics.jsonl")
        if default_history:
            runs = {"default run (adaptive KL)": default_history, **runs}
    plot_rlhf(
        runs,
        out / f"ppo{suffix}.png",
        target_kl=config.target_kl,
        best_gold=best,
        sft_gold=before["gold_reward"],
        title=f"PPO-RLHF on '{config.task}'",
    )
    _write_report(
        out / f"report{suffix}.md", config, task, tok, before, after, ppo_stats, rm, device
    )
    print(
        f"[llm.pipeline] ppo: gold reward {before['gold_reward']:.3f} → "
        f"{after['gold_reward']:.3f} (best {best:.3f}, gap closed {closed:.0%}), "
        f"final KL {kl_final:.2f} (target {config.target_kl}), "
        f"in {stats['seconds']:.0f}s → {paths['ppo']}",
        file=sys.stderr,
    )


def _run_method(config, task, tok, device, out: Path, paths, models, expected, summary) -> None:
    """The last stage of a direct preference method (`llm.preference`) or a group method
    (`llm.group`): train from the SFT model, save `<algo>.pt`, fill the summary.

    Both modules expose `train(config, task, tok, sft, device, out, progress, log)` returning
    (policy, stats); `stats` holds "seconds" and "summary", the entries this method adds to the
    pipeline's last line.
    """
    sft = models.get("sft") or _load(paths["sft"], "sft", tok, expected, device, summary)["model"]
    if config.algo in PREFERENCE_ALGOS:
        from llm.preference import train
    else:
        from llm.group import train
    metrics_path = out / f"metrics-{config.algo}{tag_suffix(config.tag)}.jsonl"
    with MetricsWriter(metrics_path, extra_names=tuple(METRIC_DOCS), append=config.resume) as method_writer:
        policy, stats = train(config, task, tok, sft, device, out, progress=config.progress, log=method_writer.write)
    save_stage(
        paths[config.algo],
        STAGE_KINDS[config.algo],
        {"policy": policy},
        tok,
        {"task": config.task, "config": config_to_dict(config), "seconds": stats["seconds"], "stats": stats["summary"]},
    )
    summary["algo"] = config.algo
    summary["seconds"][config.algo] = stats["seconds"]
    summary.update(stats["summary"])


def _write_report(
    path: Path, config, task, tok, before: dict, after: dict, stats: dict, rm, device
) -> None:
    n = 12
    prompts = [p for p, _ in before["samples"][:n]]
    sft_replies = [r for _, r in before["samples"][:n]]
    ppo_replies = [r for _, r in after["samples"][:n]]
    rm_sft = rm_ppo = None
    if rm is not None:
        rm_sft = score_replies(rm, tok, prompts, sft_replies, device).tolist()
        rm_ppo = score_replies(rm, tok, prompts, ppo_replies, device).tolist()
    lines = [
        f"# PPO-RLHF report: task '{config.task}'{' (' + config.tag + ')' if config.tag else ''}",
        "",
        f"β schedule {config.kl_kind} from {config.init_beta}, target KL {config.target_kl}, "
        f"{config.ppo_iterations} iterations × {config.rollout_batch_size} replies, "
        f"reward source {config.reward_source}.",
        "",
        "| | SFT policy | after PPO |",
        "|---|---|---|",
        f"| mean gold reward ({config.eval_prompts} prompts) | {stats['gold_sft']:.3f} | "
        f"{stats['gold_final']:.3f} |",
        f"| mean proxy score | {stats['score_sft']:.3f} | {stats['score_final']:.3f} |",
        f"| best reachable gold | {stats['gold_best']:.3f} | |",
        f"| share of the gap closed | | {stats['gap_closed']:.1%} |",
        f"| KL to the reference (last 10 iterations) | 0 | {stats['kl_final']:.2f} |",
        f"| EOS rate | {before['eos_rate']:.3f} | {after['eos_rate']:.3f} |",
        "",
        f"Best reachable gold: {task.best_gold_note}.",
        "",
        "## Sample replies (same prompts, temperature 1)",
        "",
        "| prompt | SFT reply | gold | RM | PPO reply | gold | RM |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, p in enumerate(prompts):
        rs = f"{rm_sft[i]:.2f}" if rm_sft else "–"
        rp = f"{rm_ppo[i]:.2f}" if rm_ppo else "–"
        lines.append(
            f"| `{p}` | `{sft_replies[i]}` | {before['golds'][i]:.1f} | {rs} | "
            f"`{ppo_replies[i]}` | {after['golds'][i]:.1f} | {rp} |"
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m llm.pipeline",
        description="SFT → Bradley–Terry reward model → PPO-RLHF on a tiny GPT, "
        "on tasks the project generates.",
    )
    add_arguments(parser, PipelineConfig)
    args = parser.parse_args(argv)
    try:
        config = from_arguments(PipelineConfig, args)
    except ValueError as exc:
        parser.error(str(exc))
    torch.set_num_threads(config.threads)
    start = time.perf_counter()
    try:
        summary = run_pipeline(config)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except (CheckpointError, NonFiniteError, FloatingPointError) as exc:
        print(f"llm.pipeline: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"[llm.pipeline] total {time.perf_counter() - start:.0f}s", file=sys.stderr)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
