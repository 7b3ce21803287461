"""The fixed metric names, documented once, and a JSON-lines writer (optionally mirrored to TensorBoard).

Both front ends log under these names so that one plotting script and one reader's memory
serve every run. Names follow CleanRL's `losses/…` and `charts/…`, so with `--track tensorboard`
the event files of a proximal run and of a CleanRL run overlay in one TensorBoard.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Literal, get_args

__all__ = ["METRICS", "MetricsWriter", "read_metrics", "Tracker", "TRACKERS"]

# Where metrics go besides metrics.jsonl (always written): nowhere else, or TensorBoard event files.
Tracker = Literal["none", "tensorboard"]
TRACKERS = get_args(Tracker)

METRICS: dict[str, str] = {
    # PPO update (core.ppo.ppo_update)
    "losses/policy_loss": "−L^CLIP (or −L^KLPEN) averaged over minibatches; what the optimiser lowers",
    "losses/value_loss": "½(V − V^targ)², clipped if enabled, averaged over minibatches",
    "losses/entropy": "mean entropy H[π(·|s)] of the current policy on the batch",
    "losses/approx_kl": "mean k3 estimate of KL[π_old‖π_θ] while updating; large values mean big policy moves",
    "losses/clipfrac": "share of ratios outside [1 − ε, 1 + ε_high]; how often clipping was active",
    "losses/explained_variance": "1 − Var[V^targ − V]/Var[V^targ] of the rollout's values; 1 is a perfect critic",
    "losses/grad_norm": "global gradient norm before the clip at max_grad_norm, averaged over minibatches; "
                        "max_grad_norm / grad_norm < 1 is the factor the clip shrank the step by",
    "losses/ref_kl": "in-loss KL to the reference policy π_ref (GRPO's k3 term, weight ref_kl_coef), when used",
    "ppo/epochs": "epochs actually run (fewer than configured after an early stop at target_kl)",
    "ppo/minibatches": "minibatch updates actually run",
    "ppo/kl_after_update": "KL[π_old‖π_θ] measured on the whole batch after the update (input to the β controller)",
    # Charts
    "charts/learning_rate": "the optimiser's learning rate (annealed linearly to 0 by default)",
    "charts/kl_coef": "β of the penalty on KL[π_old‖π_θ] (kl_penalty objective, TR-2/TR-3) this update",
    "charts/ref_kl_coef": "β of the KL to the reference policy π_ref (RLHF reward shaping or GRPO's in-loss term)",
    "charts/episodic_return": "mean undiscounted return of the episodes that finished since the last log",
    "charts/episodic_length": "mean length of those episodes, in agent steps",
    "charts/episodes": "number of episodes that finished since the last log",
    "charts/score": "mean game score (pipes for Flappy Bird) of those episodes",
    "charts/sps": "environment steps per second since the start of the run, mastery checks' time excluded",
    # the mastery check of a game run that stops when mastered (envs.mastery), logged at the update it ran after
    "eval/mean_score": "mean score of the greedy policy over the 100 held-out episodes of the mastery check "
                       "(absent when the check gave up: 6 episodes below the cap, mastery out of reach)",
    "eval/at_cap": "share of the 100 held-out greedy episodes that reached the score cap (mastered: ≥ 0.95); absent "
                   "when the check gave up",
    "eval/at_cap_fresh": "share at the cap over 100 episodes on fresh seeds, played once eval/at_cap passed",
    "eval/seconds": "wall-clock seconds the mastery check took (not counted in charts/sps)",
    # RLHF
    "rlhf/score": "mean reward-model score R_φ of the sampled replies (the proxy reward)",
    "rlhf/gold_reward": "mean hidden gold reward of the sampled replies (what we actually want)",
    "rlhf/ref_kl": "mean per-reply KL estimate Σ_t (log π_θ − log π_ref) to the reference model π_ref",
    "rlhf/response_length": "mean reply length in tokens",
    "rlhf/ref_kl_over_target": "rlhf/ref_kl divided by the β controller's target KL (0 without a target): "
    "1 on target; above 2 for several iterations is a KL that ran away",
    "rlhf/reward_hacking": "1 from the iteration at which the KL ran away (over 2× its target for 3 iterations, "
    "or past 2× while rising fast with the proxy score), else 0; the run prints one warning line then",
}


class MetricsWriter:
    """Append one JSON object per line: `{"step": …, name: value, …}`.

    Unknown names are refused (a typo would silently start a new curve); NaN and inf are
    written as null so the file stays valid JSON. Each line is flushed at once, so a crash
    loses nothing already logged.

    `track="tensorboard"` mirrors every value into TensorBoard event files (`add_scalar(name,
    value, step)` under the same name; NaN/inf are skipped there), so `tensorboard --logdir runs`
    shows every run: `metrics.jsonl`'s events go to its own folder, those of another file such
    as `metrics-dpo.jsonl` to the subfolder `metrics-dpo/` (one TensorBoard run per file).
    """

    def __init__(self, path: str | os.PathLike, extra_names: tuple[str, ...] = (), append: bool = False,
                 track: Tracker = "none"):
        if track not in TRACKERS:
            raise ValueError(f"track must be one of {', '.join(map(repr, TRACKERS))}; got {track!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.allowed = set(METRICS) | set(extra_names)
        self._tensorboard = None
        if track == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter  # imported here: only runs that track need it

            log_dir = self.path.parent if self.path.stem == "metrics" else self.path.parent / self.path.stem
            self._tensorboard = SummaryWriter(log_dir=str(log_dir), flush_secs=10)
        self._file = open(self.path, "a" if append else "w", encoding="utf-8")

    def write(self, step: int, values: dict[str, Any]) -> None:
        unknown = sorted(set(values) - self.allowed)
        if unknown:
            raise KeyError(f"unknown metric name(s) {unknown}; add them to core.metrics.METRICS")
        record: dict[str, Any] = {"step": int(step)}
        for name, value in values.items():
            value = float(value)
            record[name] = value if math.isfinite(value) else None
            if self._tensorboard is not None and math.isfinite(value):
                self._tensorboard.add_scalar(name, value, int(step))
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file, in order (a truncated last line is skipped)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records
