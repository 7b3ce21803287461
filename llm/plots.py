"""Plots of RLHF runs: proxy score, gold reward, KL and β over training (matplotlib, PNG).

The panels are a list of (metric name, title): `PANELS` for PPO, `PREFERENCE_PANELS` for the
direct preference methods (which have no proxy score and no β controller), `GROUP_PANELS` for
the group methods (held-out accuracy, training reward, reply lengths, entropy).
"""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure  # the object API: no pyplot state, no backend switched

__all__ = ["plot_rlhf", "plot_group", "read_ppo_history", "PANELS", "PREFERENCE_PANELS", "GROUP_PANELS"]

PANELS = [
    ("rlhf/score", "proxy score R_φ (reward model)"),
    ("rlhf/gold_reward", "gold reward (hidden)"),
    ("rlhf/ref_kl", "KL to reference, nats per reply"),
    ("charts/ref_kl_coef", "β"),
]

PREFERENCE_PANELS = [
    ("rlhf/gold_reward", "gold reward (hidden), sampled replies"),
    ("rlhf/ref_kl", "KL to reference, nats per reply"),
    ("pref/margin", "log-ratio margin h, chosen − rejected (nats)"),
    ("pref/loss", "training loss"),
]

GROUP_PANELS = [
    ("group/accuracy", "held-out exact match (greedy)"),
    ("group/train_reward", "mean reward of sampled replies"),
    ("rlhf/response_length", "mean reply length (tokens)"),
    ("group/wrong_length", "mean length of wrong replies (GR-3)"),
    ("losses/entropy", "entropy, nats per token"),
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


def plot_rlhf(
    runs: dict[str, list[dict]],
    path: str | Path,
    *,
    ref_kl_target: float | None = None,
    best_gold: float | None = None,
    sft_gold: float | None = None,
    title: str = "",
    panels: list[tuple[str, str]] = PANELS,
    xlabel: str = "PPO iteration",
    lines: dict[str, tuple[float, str]] | None = None,
) -> Path:
    """One panel per quantity of `panels`, one line per run (label → list of records with a
    "step"; a record without a panel's metric is skipped in that panel). `lines` adds a dashed
    horizontal line with a label to a panel: metric name → (value, label)."""
    fig = Figure(figsize=(4.25 * len(panels), 3.8))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (name, label) in zip(axes[0], panels):
        for run_label, records in runs.items():
            xs = [r.get("step", i) for i, r in enumerate(records) if r.get(name) is not None]
            ys = [r[name] for r in records if r.get(name) is not None]
            ax.plot(xs, ys, label=run_label, lw=1.4)
        if name == "rlhf/ref_kl" and ref_kl_target:
            ax.axhline(ref_kl_target, color="k", ls="--", lw=0.8, label="target")
            ax.axhspan(
                0.5 * ref_kl_target, 2 * ref_kl_target, color="k", alpha=0.06, label="0.5×–2× target"
            )
        if name == "rlhf/gold_reward":
            if best_gold is not None:
                ax.axhline(best_gold, color="g", ls="--", lw=0.8, label="best reachable")
            if sft_gold is not None:
                ax.axhline(sft_gold, color="gray", ls=":", lw=0.8, label="SFT policy")
        if lines and name in lines:
            ax.axhline(lines[name][0], color="k", ls="--", lw=0.8, label=lines[name][1])
        ax.set_title(label, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def plot_group(
    runs: dict[str, list[dict]], path: str | Path, *, sft_accuracy: float | None = None, title: str = ""
) -> Path:
    """`GROUP_PANELS` over the iterations of the group methods (`llm.group`), one line per run."""
    lines = {"group/accuracy": (sft_accuracy, "SFT policy")} if sft_accuracy is not None else None
    return plot_rlhf(runs, path, title=title, panels=GROUP_PANELS, xlabel="iteration", lines=lines)
