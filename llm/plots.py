"""Plots of RLHF runs: proxy score, gold reward, KL and β over training (matplotlib, PNG)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = ["plot_rlhf", "read_ppo_history"]

PANELS = [
    ("rlhf/score", "proxy score R_φ (reward model)"),
    ("rlhf/gold_reward", "gold reward (hidden)"),
    ("rlhf/kl", "KL to reference, nats per reply"),
    ("charts/beta", "β"),
]


def read_ppo_history(path: str | Path) -> list[dict]:
    """The PPO records (those with `rlhf/score`) of a metrics.jsonl file, in order."""
    out = []
    path = Path(path)
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "rlhf/score" in record:
            out.append(record)
    return out


def plot_rlhf(
    runs: dict[str, list[dict]], path: str | Path, *, target_kl: float | None = None,
    best_gold: float | None = None, sft_gold: float | None = None, title: str = "",
) -> Path:
    """One panel per quantity, one line per run (label → list of per-iteration records)."""
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for ax, (name, label) in zip(axes, PANELS):
        for run_label, records in runs.items():
            xs = [r.get("step", i) for i, r in enumerate(records) if r.get(name) is not None]
            ys = [r[name] for r in records if r.get(name) is not None]
            ax.plot(xs, ys, label=run_label, lw=1.4)
        if name == "rlhf/kl" and target_kl:
            ax.axhline(target_kl, color="k", ls="--", lw=0.8, label="target")
            ax.axhspan(0.5 * target_kl, 2 * target_kl, color="k", alpha=0.06, label="0.5×–2× target")
        if name == "rlhf/gold_reward":
            if best_gold is not None:
                ax.axhline(best_gold, color="g", ls="--", lw=0.8, label="best reachable")
            if sft_gold is not None:
                ax.axhline(sft_gold, color="gray", ls=":", lw=0.8, label="SFT policy")
        if name == "charts/beta":
            ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("PPO iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
