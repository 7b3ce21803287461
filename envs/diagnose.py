"""Read a finished (or running) `envs.train` run and say what its PPO update did.

    python -m envs.diagnose runs/CartPole-v1__1__20261207-031500
    python -m envs.diagnose RUN --points 20

Prints the run's curve at a few points — return, the policy's entropy as a share of its maximum
log|A|, approx_kl, clipfrac, explained variance, and the gradient norm before the clip with the
factor the clip shrank the step by — then one line per symptom it finds:

- entropy collapse: the entropy fell below 25% of log|A| in the first 10% of the run (the policy
  stopped exploring early; the flag `envs.bench_suite` uses);
- a binding clip: the median clip factor max_grad_norm/‖g‖ of the first 10% is below 0.5 (the
  critic's gradient, usually the larger, shrinks the actor's step too: one clip, one norm);
- a policy that hardly moves: median approx_kl below 1e-4 (each update changes almost nothing);
- a critic that explains nothing: median explained variance below 0.

Only metrics.jsonl and config.json are read: nothing is trained, any run folder works.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from core.metrics import read_metrics

__all__ = ["diagnose", "symptoms", "entropy_kept", "late_kl", "collapsed", "main"]

EARLY = 0.1
COLLAPSE_FRACTION = 0.25
STUCK_KL = 1e-4


def entropy_kept(history: list[dict], n_actions: int, early: float = EARLY) -> float:
    """The lowest entropy over the first `early` share of the updates, as a share of log|A|."""
    rows = history[: max(1, math.ceil(len(history) * early))]
    return min(row["losses/entropy"] for row in rows) / math.log(n_actions)


def late_kl(history: list[dict], early: float = EARLY) -> float:
    """The median approx_kl per update after the first `early` share of the updates."""
    rows = history[math.ceil(len(history) * early):] or history
    return statistics.median(row["losses/approx_kl"] for row in rows)


def collapsed(entropy_share: float, kl_after: float) -> bool:
    """An entropy collapse: early entropy below COLLAPSE_FRACTION·log|A|, then a stuck policy
    (median approx_kl below STUCK_KL): it stopped exploring and stopped moving."""
    return entropy_share < COLLAPSE_FRACTION and kl_after < STUCK_KL


def symptoms(history: list[dict], n_actions: int | None, max_grad_norm: float | None) -> list[str]:
    """The symptoms (module docstring) found in a run's metrics, one sentence each."""
    early = history[: max(1, math.ceil(len(history) * EARLY))]
    found = []
    kl_after = late_kl(history)
    if n_actions is not None and n_actions > 1:
        kept = entropy_kept(history, n_actions)
        if collapsed(kept, kl_after):
            found.append(f"entropy collapse: {kept:.0%} of log|A| within the first {EARLY:.0%} of the run, then a "
                         f"median approx_kl of {kl_after:.1e}: the policy stopped exploring and stopped moving")
    norms = [row["losses/grad_norm"] for row in early if row.get("losses/grad_norm")]
    if max_grad_norm and norms:
        factor = min(1.0, max_grad_norm / statistics.median(norms))
        if factor < 0.5:
            found.append(f"binding clip: the grad-norm clip shrank the early steps by a median factor {factor:.2f} "
                         f"(‖g‖ ≈ {statistics.median(norms):.2f} > max_grad_norm {max_grad_norm})")
    if kl_after < STUCK_KL:
        found.append(f"a policy that hardly moves: median approx_kl {kl_after:.1e} per update after the first "
                     f"{EARLY:.0%}")
    evs = [row["losses/explained_variance"] for row in history if row.get("losses/explained_variance") is not None]
    if evs and statistics.median(evs) < 0:
        found.append(f"a critic that explains nothing: median explained variance {statistics.median(evs):.2f}")
    return found


def diagnose(run: Path, points: int = 12) -> dict:
    """Print the table and the symptoms of one run folder; return them."""
    history = [row for row in read_metrics(run / "metrics.jsonl") if "losses/entropy" in row]
    if not history:
        raise ValueError(f"run: {run} holds no PPO updates in metrics.jsonl yet")
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    n_actions = _n_actions(config["env_id"])
    max_grad_norm = config.get("max_grad_norm")
    print(f"{run} · {config['env_id']} · {len(history)} updates · "
          + (f"|A| = {n_actions}" if n_actions else "continuous actions"))
    print(f"{'step':>10s} {'return':>9s} {'entropy':>8s} {'approx_kl':>9s} {'clipfrac':>8s} {'expl.var':>8s} "
          f"{'‖g‖':>7s} {'clip×':>6s}")
    stride = max(1, math.ceil(len(history) / points))
    for row in history[::stride]:
        norm = row.get("losses/grad_norm")
        factor = min(1.0, max_grad_norm / norm) if norm and max_grad_norm else float("nan")
        entropy = row["losses/entropy"] / math.log(n_actions) if n_actions and n_actions > 1 else row["losses/entropy"]
        print(f"{row['step']:10d} {row.get('charts/episodic_return', float('nan')):9.2f} "
              f"{entropy:8.2f} {row['losses/approx_kl']:9.1e} {row['losses/clipfrac']:8.3f} "
              f"{row.get('losses/explained_variance', float('nan')):8.2f} {norm or float('nan'):7.2f} {factor:6.2f}")
    found = symptoms(history, n_actions, max_grad_norm)
    print("\n".join(found) if found else "no symptom found")
    return {"updates": len(history), "symptoms": found}


def _n_actions(env_id: str) -> int | None:
    import gymnasium as gym

    from envs.vector import env_spaces

    action_space = env_spaces(env_id)[1]
    return int(action_space.n) if isinstance(action_space, gym.spaces.Discrete) else None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run folder of envs.train (config.json, metrics.jsonl)")
    parser.add_argument("--points", type=int, default=12, help="rows of the table")
    args = parser.parse_args(argv)
    try:
        if not (args.run / "metrics.jsonl").exists():
            raise ValueError(f"run: {args.run} holds no metrics.jsonl (give a folder written by envs.train)")
        if args.points < 1:
            raise ValueError(f"--points must be ≥ 1, got {args.points}")
        return diagnose(args.run, args.points)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
