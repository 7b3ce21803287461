"""Every method of the LLM front end side by side, on the same tiny model and the same data.

    python -m llm.compare                        # the default comparison (about 20 min on a 2-core CPU)
    python -m llm.compare --only reviews         # or --only arithmetic
    python -m llm.compare --pref-ref-kl-coefs 0.1,0.3   # other β for DPO and KTO

`reviews` (preference data, hidden gold reward): one SFT model and one reward model, then PPO
at several KL targets and DPO, IPO and KTO at several β (τ for IPO), each from the same SFT
weights. Each run gives one point (KL to the reference, gold reward) of the **gold reward vs
KL frontier** — the small-scale version of the DPO paper's sentiment experiment (Rafailov et
al. 2023, Fig. 2): how much gold reward a method buys per nat of drift from π_ref.

`arithmetic` (verifiable reward): one SFT model, then GRPO, DAPO and Dr. GRPO; curves of
held-out exact-match accuracy, mean reply length, mean length of *wrong* replies (GR-3's
length bias), entropy and the share of groups whose rewards are all equal (zero advantage,
what DAPO's dynamic sampling drops, DA-2).

Outputs under `--out` (default runs/llm-compare): the runs' checkpoints and metrics in
`reviews/` and `arithmetic/`, `frontier.png`, `group_methods.png`, `compare.json`. The last
line printed is one JSON object: `{"seconds": …, "reviews": {"sft": …, "ppo": …, "dpo": …,
"ipo": …, "kto": …}, "arithmetic": {"sft": …, "grpo": …, "dapo": …, "dr_grpo": …}}`, the
values being the final gold reward on `reviews` (each method at its default setting, the
first of its list) and the held-out exact-match accuracy on `arithmetic`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from matplotlib.figure import Figure  # the object API: no pyplot state, no backend switched

from core.config import check_choices, parse_into
from core.metrics import read_metrics
from llm.config import GROUP_ALGOS, PREFERENCE_ALGOS, PipelineConfig
from llm.pipeline import run_pipeline

__all__ = ["CompareConfig", "compare", "main"]


@dataclass
class CompareConfig:
    only: Literal["all", "reviews", "arithmetic"] = "all"
    """'all', 'reviews' (PPO, DPO, IPO, KTO) or 'arithmetic' (GRPO, DAPO, Dr. GRPO)."""
    out: str = "runs/llm-compare"
    """Folder of every run, the figures and compare.json."""
    seed: int = 0
    """Seed of every run."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'."""
    threads: int = 1
    """CPU threads for torch (1 is fastest on a busy 2-core machine)."""
    ppo_ref_kl_targets: str = "3,1"
    """d_targ of the PPO runs (ref_kl_controller_target, KL to π_ref in nats per reply),
    comma-separated; the first is the default."""
    ppo_iterations: int = 40
    """PPO iterations per run (the pipeline's default is 80; fewer keep the comparison short)."""
    pref_ref_kl_coefs: str = "1,0.3,3"
    """β (ref_kl_coef) of the DPO and KTO runs, comma-separated; the first is the default."""
    ipo_taus: str = "0.1,0.03,0.3"
    """τ of the IPO runs, comma-separated; the first is the default."""
    progress: bool = False
    """Show the pipeline's progress bars."""

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("ppo_ref_kl_targets", "pref_ref_kl_coefs", "ipo_taus"):
            values = _floats(getattr(self, name), name)
            if any(v <= 0 for v in values):
                raise ValueError(f"{name} must all be > 0, got {getattr(self, name)!r}")


def _floats(text: str, name: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{name} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise ValueError(f"{name} needs at least one value")
    return values


def _tag(value: float) -> str:
    return f"{value:g}".replace(".", "p").replace("-", "m")


def _run(config: CompareConfig, **fields) -> dict:
    pipeline = PipelineConfig(
        seed=config.seed, device=config.device, threads=config.threads, progress=config.progress, **fields
    )
    print(f"[llm.compare] {fields}", file=sys.stderr)
    return run_pipeline(pipeline)


def compare_reviews(config: CompareConfig, out: Path) -> dict:
    """SFT + RM once, then PPO, DPO, IPO, KTO at each setting: the frontier points."""
    base = dict(task="reviews", out=str(out))
    _run(config, **base, stage="sft")
    _run(config, **base, stage="rm")
    runs = [  # (method, the setting's label, pipeline fields)
        ("ppo", f"target KL {t:g}", dict(stage="ppo", ref_kl_controller_target=t,
                                          ppo_iterations=config.ppo_iterations, tag=f"kl{_tag(t)}"))
        for t in _floats(config.ppo_ref_kl_targets, "ppo_ref_kl_targets")
    ]
    # (field, symbol, values, the tag's prefix: the file names of llm/results predate the field names)
    strengths = {"dpo": ("ref_kl_coef", "β", config.pref_ref_kl_coefs, "beta"),
                 "ipo": ("tau", "τ", config.ipo_taus, "tau"),
                 "kto": ("ref_kl_coef", "β", config.pref_ref_kl_coefs, "beta")}
    for algo in PREFERENCE_ALGOS:
        field, symbol, values, prefix = strengths[algo]
        runs += [
            (algo, f"{symbol} {v:g}", {"algo": algo, "stage": algo, field: v, "tag": f"{prefix}{_tag(v)}"})
            for v in _floats(values, field)
        ]
    points: dict[str, list[dict]] = {}
    for algo, setting, fields in runs:
        summary = _run(config, **base, **fields)
        points.setdefault(algo, []).append(
            dict(setting=setting, kl=summary["kl"]["final"], gold=summary["gold_reward"]["final"])
        )
    gold = summary["gold_reward"]  # the SFT policy's and the best reachable are the same in every run
    return {"sft": gold["sft"], "best": gold["best"], "points": points}


def compare_arithmetic(config: CompareConfig, out: Path) -> dict:
    """SFT once, then GRPO, DAPO, Dr. GRPO: final accuracy and the histories for the curves."""
    base = dict(task="arithmetic", out=str(out))
    _run(config, **base, stage="sft")
    results: dict = {}
    for algo in GROUP_ALGOS:
        s = _run(config, **base, algo=algo, stage=algo)
        results[algo] = dict(accuracy=s["accuracy"]["final"], history=read_metrics(out / f"metrics-{algo}.jsonl"))
        results["sft"] = s["accuracy"]["sft"]
    return results


def plot_frontier(reviews: dict, path: Path) -> Path:
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    ax.scatter([0.0], [reviews["sft"]], color="k", marker="*", s=120, label="SFT policy", zorder=3)
    for algo, points in reviews["points"].items():
        kls = [p["kl"] for p in points]
        golds = [p["gold"] for p in points]
        ax.scatter(kls, golds, label=algo.upper(), s=40, zorder=3)
        for p in points:
            ax.annotate(p["setting"], (p["kl"], p["gold"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.axhline(reviews["best"], color="g", ls="--", lw=0.8, label="best reachable gold")
    ax.set_xlabel("KL[π_θ ‖ π_ref], nats per reply (sampled replies)")
    ax.set_ylabel("mean gold reward")
    ax.set_title("'reviews': gold reward vs KL to the reference")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


GROUP_PANELS = [
    ("group/accuracy", "held-out exact-match accuracy"),
    ("rlhf/response_length", "mean reply length (tokens)"),
    ("group/wrong_length", "mean length of wrong replies"),
    ("losses/entropy", "entropy (nats per token)"),
    ("group/uniform_share", "share of groups all right or all wrong (DA-2)"),
]


def plot_group_methods(arithmetic: dict, path: Path) -> Path:
    fig = Figure(figsize=(4 * len(GROUP_PANELS), 3.6))
    axes = fig.subplots(1, len(GROUP_PANELS))
    for ax, (name, label) in zip(axes, GROUP_PANELS):
        for algo in GROUP_ALGOS:
            records = [r for r in arithmetic[algo]["history"] if r.get(name) is not None]
            ax.plot([r["step"] for r in records], [r[name] for r in records], label=algo, lw=1.4)
        if name == "group/accuracy":
            ax.axhline(arithmetic["sft"], color="gray", ls=":", lw=0.8, label="SFT")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("'arithmetic': GRPO, DAPO and Dr. GRPO from the same SFT model", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def compare(config: CompareConfig) -> dict:
    """Run the comparison; return the summary printed as the last line."""
    start = time.perf_counter()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"seconds": None}
    details: dict = {}
    if config.only in ("all", "reviews"):
        reviews = compare_reviews(config, out / "reviews")
        plot_frontier(reviews, out / "frontier.png")
        details["reviews"] = reviews
        summary["reviews"] = {"sft": reviews["sft"], **{a: p[0]["gold"] for a, p in reviews["points"].items()}}
    if config.only in ("all", "arithmetic"):
        arithmetic = compare_arithmetic(config, out / "arithmetic")
        plot_group_methods(arithmetic, out / "group_methods.png")
        details["arithmetic"] = {k: (v if k == "sft" else v["accuracy"]) for k, v in arithmetic.items()}
        summary["arithmetic"] = {"sft": arithmetic["sft"], **{a: arithmetic[a]["accuracy"] for a in GROUP_ALGOS}}
    summary["seconds"] = round(time.perf_counter() - start, 1)
    (out / "compare.json").write_text(json.dumps({"summary": summary, "details": details}, indent=1) + "\n")
    return summary


def main(argv: list[str] | None = None) -> dict:
    config = parse_into(CompareConfig, argv, prog="python -m llm.compare", description=__doc__.split("\n")[0])
    torch.set_num_threads(config.threads)
    summary = compare(config)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
