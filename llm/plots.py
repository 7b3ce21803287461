"""Plots of RLHF runs (proxy score, gold reward, KL and β) and of the group methods (held-out
accuracy, reward, reply lengths, entropy) over training (matplotlib, PNG)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = ["plot_panels", "plot_rlhf", "plot_group", "read_ppo_history"]

PANELS = [
    ("rlhf/score", "proxy score R_φ (reward model)"),
    ("rlhf/gold_reward", "gold reward (hidden)"),
    ("rlhf/kl", "KL to reference, nats per reply"),
    ("charts/beta", "β"),
]


def read_ppo_history(path: str | Path) -> list[dict]:
    """The PPO records (those with `rlhf/score`) of the last PPO run in a metrics.jsonl file."""
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
            if record.get("step") == 0:
                out = []  # a later PPO run appended to the same file: keep the last one
            out.append(record)
    return out


def plot_panels(
    runs: dict[str, list[dict]],
    panels: list[tuple[str | tuple[str, ...], str]],
    path: str | Path,
    *,
    title: str = "",
    xlabel: str = "iteration",
    decorate=None,
) -> Path:
    """One panel per (metric name(s), label), one line per run and metric (label → records).

    A panel given several names draws each as its own line, solid, dashed, dotted (e.g. the
    length of all replies and of wrong ones); a run keeps its colour in every panel.
    `decorate(ax, name)` adds reference lines to the panel of `name` (its first name). Records
    without a metric are skipped, so metrics logged every few steps still draw.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(4.25 * len(panels), 3.8))
    for ax, (names, label) in zip(axes, panels):
        names = (names,) if isinstance(names, str) else names
        for colour, (run_label, records) in enumerate(runs.items()):
            for style, name in zip(("-", "--", ":"), names):
                xs = [r.get("step", i) for i, r in enumerate(records) if r.get(name) is not None]
                ys = [r[name] for r in records if r.get(name) is not None]
                line_label = run_label if len(names) == 1 else f"{run_label}: {name.split('/')[-1]}"
                ax.plot(xs, ys, label=line_label, lw=1.4, color=f"C{colour % 10}", ls=style)
        if decorate is not None:
            decorate(ax, names[0])
        ax.set_title(label, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_rlhf(
    runs: dict[str, list[dict]],
    path: str | Path,
    *,
    target_kl: float | None = None,
    best_gold: float | None = None,
    sft_gold: float | None = None,
    title: str = "",
) -> Path:
    """One panel per quantity, one line per run (label → list of per-iteration records)."""

    def decorate(ax, name: str) -> None:
        if name == "rlhf/kl" and target_kl:
            ax.axhline(target_kl, color="k", ls="--", lw=0.8, label="target")
            ax.axhspan(
                0.5 * target_kl, 2 * target_kl, color="k", alpha=0.06, label="0.5×–2× target"
            )
        if name == "rlhf/gold_reward":
            if best_gold is not None:
                ax.axhline(best_gold, color="g", ls="--", lw=0.8, label="best reachable")
            if sft_gold is not None:
                ax.axhline(sft_gold, color="gray", ls=":", lw=0.8, label="SFT policy")

    return plot_panels(runs, PANELS, path, title=title, xlabel="PPO iteration", decorate=decorate)


GROUP_PANELS = [
    ("group/accuracy", "held-out exact match (greedy)"),
    ("group/train_reward", "mean reward of sampled replies"),
    (("rlhf/response_length", "group/wrong_length"), "reply length in tokens: all (solid), wrong (dashed)"),
    ("losses/entropy", "entropy, nats per token"),
]


def plot_group(
    runs: dict[str, list[dict]], path: str | Path, *, sft_accuracy: float | None = None, title: str = ""
) -> Path:
    """Held-out accuracy, training reward, reply length (all and wrong replies: GR-3's length
    bias) and entropy over the iterations of the group methods (`llm.group`)."""

    def decorate(ax, name: str) -> None:
        if name == "group/accuracy" and sft_accuracy is not None:
            ax.axhline(sft_accuracy, color="gray", ls=":", lw=0.8, label="SFT policy")

    return plot_panels(runs, GROUP_PANELS, path, title=title, decorate=decorate)
