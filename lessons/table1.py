"""Table 1 of the PPO paper in miniature: every surrogate objective on the same budget.

    python -m lessons.table1                    # CartPole: 11 settings × 3 seeds × 20 000 steps (about 5 min)
    python -m lessons.table1 --long             # CartPole and Flappy Bird (400 000 steps a run; about 10 min)
    python -m lessons.table1 --seeds 1 --total-steps 512     # a smoke run of seconds

The rows are the paper's: no clipping or penalty (objective 'ratio'), clipping at ε = 0.1, 0.2,
0.3, the adaptive KL penalty with d_targ = 0.003, 0.01, 0.03, and a fixed β of 0.3, 1, 3, 10. Each
run trains with `envs.train.train`; its score is the mean of the logged per-update mean episodic
return over the last quarter of its updates (the paper: the last 100 episodes). Scores are
normalised per game (random policy 0, best setting 1), then averaged over games.

Lesson 9 (`python -m lessons run 9 --table1`) calls `run_table1` and reads its result; the
differences from the paper are listed in that lesson's docstring. Progress goes to stderr; the
last line on stdout is one JSON object with every score.
"""

from __future__ import annotations

import contextlib
import io
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from core.config import parse_into
from envs.config import TrainConfig, preset_for
from envs.train import train
from envs.vector import make_vector_env

__all__ = ["CARTPOLE", "FLAPPY_CHANGES", "QUIET", "SETTINGS", "Table1Config", "random_policy_return", "run_score",
           "run_table1", "main"]

# The quick CartPole configuration of lesson 9 (N = 8 envs × T = 32 steps, K = 10 epochs of 64).
CARTPOLE = dict(env_id="CartPole-v1", num_envs=8, num_steps=32, minibatch_size=64, update_epochs=10,
                learning_rate=2.5e-3, anneal_lr=True, gamma=0.98, gae_lambda=0.8, ent_coef=0.0, vf_coef=1.0,
                total_steps=20_000)
# Flappy Bird: the preset with a higher learning rate, larger minibatches and no annealing.
FLAPPY_CHANGES = dict(learning_rate=1e-3, minibatch_size=1024, anneal_lr=False,
                      stop_when_mastered=False)  # short runs that do not master: no mastery checks
QUIET = dict(progress=False, plot_every_seconds=1e9, overwrite=True)  # the caller prints its own progress

# (row of the paper's Table 1, the TrainConfig fields that select it, the paper's normalised score)
SETTINGS = (
    [("No clipping or penalty", dict(objective="ratio"), -0.39)]
    + [(f"Clipping, ε = {eps}", dict(objective="clip", clip_coef=eps), paper)
       for eps, paper in ((0.1, 0.76), (0.2, 0.82), (0.3, 0.70))]
    + [(f"Adaptive KL, d_targ = {d}", dict(objective="kl_penalty", kl_controller="adaptive",
                                                   kl_controller_target=d), paper)
       for d, paper in ((0.003, 0.68), (0.01, 0.74), (0.03, 0.71))]
    + [(f"Fixed KL, β = {b:g}", dict(objective="kl_penalty", kl_controller="fixed", kl_coef=b), paper)
       for b, paper in ((0.3, 0.62), (1.0, 0.71), (3.0, 0.72), (10.0, 0.69))]
)


@dataclass
class Table1Config:
    long: bool = False
    """Flappy Bird as well as CartPole (400 000 steps a run instead of CartPole's 20 000)."""
    seeds: int = 3
    """Runs per setting and game; their mean is the setting's score."""
    seed: int = 0
    """The first seed; the runs use seed, seed + 1, …"""
    total_steps: int | None = None
    """Environment steps per run; none: each game's own (CartPole 20 000, Flappy Bird 400 000)."""
    cartpole_learning_rate: float = 5e-3
    """CartPole's learning rate: twice the quick configuration's, so that an unconstrained objective can overshoot."""
    rows: str = "all"
    """Which rows of the table to train: 'all', or their numbers 1–11 separated by commas (e.g. '1,3')."""
    out: str = "runs/table1"
    """Where each run writes its metrics (overwritten run after run)."""
    threads: int = 1
    """torch threads (small networks: one is fastest)."""

    def __post_init__(self):
        if self.seeds < 1:
            raise ValueError(f"seeds must be at least 1; got {self.seeds}")
        if self.total_steps is not None and self.total_steps < 1:
            raise ValueError(f"total_steps must be positive; got {self.total_steps}")
        self.selected()  # names a bad `rows` now

    def selected(self) -> list[tuple[str, dict, float]]:
        """The rows of SETTINGS that `rows` picks, in the table's order."""
        if self.rows.strip().lower() == "all":
            return list(SETTINGS)
        try:
            numbers = {int(part) for part in self.rows.split(",") if part.strip()}
        except ValueError:
            raise ValueError(f"rows must be 'all' or numbers 1–{len(SETTINGS)} separated by commas; "
                             f"got {self.rows!r}") from None
        if not numbers or not numbers <= set(range(1, len(SETTINGS) + 1)):
            raise ValueError(f"rows must be 'all' or numbers 1–{len(SETTINGS)} separated by commas; got {self.rows!r}")
        return [row for i, row in enumerate(SETTINGS, start=1) if i in numbers]


def random_policy_return(env_id: str, episodes: int, seed: int) -> float:
    """Mean return of uniformly random actions: the 0 of the paper's normalisation."""
    envs = make_vector_env(env_id, episodes, torch.device("cpu"))
    envs.reset(seed=seed)
    g = torch.Generator().manual_seed(seed)
    n_actions = int(envs.single_action_space.n)
    returns = torch.zeros(episodes)
    finished = torch.zeros(episodes, dtype=torch.bool)
    while not bool(finished.all()):  # one episode per copy, as envs.evaluate counts them
        step = envs.step(torch.randint(n_actions, (episodes,), generator=g))
        ended = step.game_over & ~finished
        returns = torch.where(ended, step.episode_return, returns)
        finished |= ended
    envs.close()
    return float(returns.mean())


def run_score(history: list[dict], fraction: float = 0.25) -> float:
    """Mean of the logged per-update mean return over the last `fraction` of the updates."""
    logged = [h["charts/episodic_return"] for h in history if h.get("charts/episodic_return") is not None]
    if not logged:  # no episode ended in the whole run
        return float("nan")
    tail = logged[-max(1, int(len(logged) * fraction)):]
    return statistics.fmean(tail)


def games_of(config: Table1Config) -> dict[str, dict]:
    """Game name → the TrainConfig fields its runs share."""
    games = {"CartPole-v1": {**CARTPOLE, "learning_rate": config.cartpole_learning_rate}}
    if config.long:
        games["Flappy Bird"] = {**preset_for("flappy"), **FLAPPY_CHANGES, "env_id": "flappy", "total_steps": 400_000}
    if config.total_steps is not None:
        for fields in games.values():
            fields["total_steps"] = config.total_steps
    return games


def run_table1(config: Table1Config, log: Callable[[str], None] = print) -> dict:
    """Train the chosen rows of SETTINGS on every game for `config.seeds` seeds; return the scores.

    The result: games, seeds, the random policy's return per game, and per setting its paper score,
    raw scores per game and seed, the normalised score per game and their mean; plus the seconds.
    """
    started = time.perf_counter()
    games = games_of(config)
    rows = config.selected()
    seeds = [config.seed + k for k in range(config.seeds)]
    randoms = {game: random_policy_return(fields["env_id"], 100, seed=30_000) for game, fields in games.items()}
    raw: dict[str, dict[str, list[float]]] = {game: {} for game in games}
    for game, fields in games.items():
        log(f"    {game}: {len(rows)} settings × {len(seeds)} seeds × {fields['total_steps']:,} steps, "
            f"learning rate {fields['learning_rate']}; random policy {randoms[game]:.1f}")
        for name, objective, _ in rows:
            scores = []
            for seed in seeds:
                run_config = TrainConfig(**{**preset_for(fields["env_id"]), **fields, **objective, **QUIET,
                                            "seed": seed, "out": str(Path(config.out) / "run")})
                with contextlib.redirect_stderr(io.StringIO()):  # train() announces every run; one line per row
                    history = train(run_config)["history"]
                scores.append(run_score(history))
            raw[game][name] = scores
            log(f"      {name:<27} scores {', '.join(f'{s:6.1f}' for s in scores)}   "
                f"({time.perf_counter() - started:.0f} s)")
    normalised: dict[str, dict[str, float]] = {}
    for game in games:
        means = {name: statistics.fmean(scores) for name, scores in raw[game].items()}
        span = max(means.values()) - randoms[game]  # best setting − random policy
        normalised[game] = {name: (m - randoms[game]) / span if span else float("nan") for name, m in means.items()}
    settings = [{"name": name, "paper": paper,
                 "scores": {game: raw[game][name] for game in games},
                 "mean_score": {game: statistics.fmean(raw[game][name]) for game in games},
                 "normalised": {game: normalised[game][name] for game in games},
                 "mean_normalised": statistics.fmean(normalised[game][name] for game in games)}
                for name, _, paper in rows]
    return {"games": list(games), "seeds": seeds, "total_steps": {g: f["total_steps"] for g, f in games.items()},
            "random": randoms, "settings": settings, "seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> dict:
    config = parse_into(Table1Config, argv, prog="python -m lessons.table1", description=__doc__.split("\n")[0])
    torch.set_num_threads(config.threads)
    result = run_table1(config, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(f"\n    {'setting':<27} {'normalised':>10} {'PPO paper':>9}", file=sys.stderr)
    for row in result["settings"]:
        print(f"    {row['name']:<27} {row['mean_normalised']:10.2f} {row['paper']:9.2f}", file=sys.stderr)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
