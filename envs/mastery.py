"""When is a Flappy Bird policy solved, and when mastered? The one check the trainer and the benchmarks use.

The greedy policy plays 100 held-out episodes (seeds 10 000..10 099, one env copy each, all
stepped together by `envs.evaluate.evaluate_policy`) with the 500-pipe cap. Solved: mean ≥ 100
pipes and ≥ 90% of the episodes past 40 pipes. Mastered: ≥ 95% of the episodes at the cap.

`SolvedCheck` is that check as `stop_when` for `envs.train.train`: every `every` env steps,
its time kept apart from training time (the trainer's check stops playing once 6 of the 100
episodes have ended below the cap: mastery is then out of reach). With `fresh_seed` set, a policy
that passes on the held-out seeds then plays `episodes` more on seeds no check has used (a new block of them each
time: `fresh_seed + k·episodes` for the k-th confirmation), and the run is done only when it
passes there too: mastery that holds, not a policy that passed one check by luck while it
oscillates. `python -m envs.train` stops the Flappy Bird presets this way (`stop_when_mastered`);
`python -m envs.bench_train` times the same check.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

import torch

from envs.evaluate import evaluate_policy

__all__ = ["FLAPPY_ID", "HELD_OUT_SEED", "FRESH_SEED", "FLAPPY_CAP", "MASTERED_SHARE", "SolvedCheck",
           "flappy_check", "flappy_solved", "flappy_mastered", "at_cap", "out_of_reach"]

FLAPPY_ID = "proximal/FlappyBird-v0"
FLAPPY_CAP = 500  # pipes: an episode that reaches it is truncated, and counts as at the cap
HELD_OUT_SEED = 10_000  # the held-out check's seeds: 10 000..10 099, away from the training seeds
FRESH_SEED = 1_000_000  # the fresh seeds' first block: far from the held-out ones
MASTERED_SHARE = 0.95  # mastered: at least this share of the episodes at the cap


def at_cap(scores: list[float], cap: int = FLAPPY_CAP) -> float:
    """The share of episodes that reached the cap."""
    return sum(s >= cap for s in scores) / len(scores)


def flappy_solved(scores: list[float]) -> bool:
    return sum(scores) / len(scores) >= 100 and sum(s > 40 for s in scores) / len(scores) >= 0.9


def flappy_mastered(scores: list[float]) -> bool:
    return at_cap(scores) >= MASTERED_SHARE


def out_of_reach(episodes: int) -> int:
    """How many of `episodes` ending below the cap rule mastery out: episodes − ⌈MASTERED_SHARE·episodes⌉ + 1
    (6 of 100)."""
    return episodes - math.ceil(MASTERED_SHARE * episodes - 1e-9) + 1


class SolvedCheck:
    """`stop_when` for `envs.train.train`: evaluate every `every` steps (evaluation time kept
    apart from training time in `eval_seconds`); note when `is_solved`, stop when `is_done`
    (default: solved), and, with `fresh_seed`, only when `is_done` on fresh seeds as well.

    Each check appends a record to `evaluations` (`last` is the latest): training seconds and
    steps so far, the held-out mean score, share at the cap (`at_cap`), whether solved, and with
    a confirmation on fresh seeds its share at the cap (`at_cap_fresh`) and `fresh_seed`;
    `seconds_spent` is what this check took. With `give_up_below_cap` = k an evaluation stops once k
    episodes have ended below the cap (`envs.evaluate.evaluate_policy`): the check then fails,
    `gave_up` is True and `mean`, `at_cap` and `solved` are None (not known: episodes were left
    unplayed). The trainer gives up at k = 6 of 100, when ≥ 95% at the cap is out of reach,
    so a check of a policy far from mastery costs a fraction of a full one. `give_up_once_solved`
    = k does the same only once the policy has been solved (the benchmark: its solved time needs
    the full mean, and after it only mastery is left to see). A check is due when
    `global_step` has reached the next multiple of `every` (so a resumed run checks at the same
    steps as an uninterrupted one).
    """

    def __init__(self, env_id: str, every: int, episodes: int, cap: int | None, is_solved: Callable,
                 is_done: Callable | None = None, seed: int = HELD_OUT_SEED, fresh_seed: int | None = None,
                 log: bool = True, give_up_below_cap: int | None = None, give_up_once_solved: int | None = None):
        self.env_id, self.every, self.episodes, self.cap, self.seed = env_id, every, episodes, cap, seed
        self.give_up_once_solved = give_up_once_solved
        self.is_solved, self.is_done, self.fresh_seed, self.log = is_solved, is_done or is_solved, fresh_seed, log
        self.next_check, self.eval_seconds, self.solved_at, self.done_at = every, 0.0, None, None
        self.confirmations, self.give_up_below_cap = 0, give_up_below_cap
        self.evaluations: list[dict] = []
        self.started = time.perf_counter()

    @property
    def last(self) -> dict | None:
        return self.evaluations[-1] if self.evaluations else None

    def _scores(self, agent, seed: int) -> list[float]:
        threads = torch.get_num_threads()  # evaluate_policy plays MLPs on one thread; training keeps its own
        give_up = self.give_up_below_cap if self.solved_at is None or self.give_up_once_solved is None \
            else self.give_up_once_solved
        try:
            return evaluate_policy(agent, self.env_id, episodes=self.episodes, cap=self.cap, seed=seed,
                                   device=next(agent.parameters()).device, give_up_below_cap=give_up)
        finally:
            torch.set_num_threads(threads)

    def __call__(self, agent, global_step: int) -> bool:
        if global_step < self.next_check:
            return False
        self.next_check = (global_step // self.every + 1) * self.every
        t0 = time.perf_counter()
        scores = self._scores(agent, self.seed)
        complete = not any(math.isnan(s) for s in scores)  # NaN: not played, the check gave up
        record = {"steps": global_step, "mean": sum(scores) / len(scores) if complete else None,
                  "at_cap": None if self.cap is None or not complete else at_cap(scores, self.cap),
                  "solved": self.is_solved(scores) if complete else None, "gave_up": not complete}
        done = complete and self.is_done(scores)
        if done and self.fresh_seed is not None:  # confirm on seeds no check has used
            fresh_seed = self.fresh_seed + self.confirmations * self.episodes
            self.confirmations += 1
            fresh = self._scores(agent, fresh_seed)
            fresh_complete = not any(math.isnan(s) for s in fresh)
            record.update(at_cap_fresh=at_cap(fresh, self.cap) if self.cap is not None and fresh_complete else None,
                          fresh_seed=fresh_seed)
            done = fresh_complete and self.is_done(fresh)
        agent.train()
        spent = time.perf_counter() - t0
        self.eval_seconds += spent
        now = (time.perf_counter() - self.started - self.eval_seconds, global_step)
        record = {"seconds": round(now[0], 1), **record, "done": done, "seconds_spent": spent}
        self.evaluations.append(record)
        if self.log:
            print(f"  eval at {global_step} steps, {now[0]:.0f} s: {record}", file=sys.stderr)
        if self.solved_at is None and record["solved"]:
            self.solved_at = now
        if done:
            self.done_at = now
        return done


def flappy_check(is_done: Callable = flappy_mastered, every: int = 81_920, fresh_seed: int | None = None,
                 log: bool = True, give_up_below_cap: int | None = None, env_id: str = FLAPPY_ID,
                 give_up_once_solved: int | None = None) -> SolvedCheck:
    """The one Flappy Bird check everything is judged by (the clock starts here): 100 held-out
    episodes with the 500-pipe cap every `every` steps; with `fresh_seed`, confirmed on fresh seeds.
    `env_id`: the features game, or its pixels (`proximal/FlappyBirdPixels-v0`) for a CNN agent."""
    return SolvedCheck(env_id, every=every, episodes=100, cap=FLAPPY_CAP, is_solved=flappy_solved,
                       is_done=is_done, fresh_seed=fresh_seed, log=log, give_up_below_cap=give_up_below_cap,
                       give_up_once_solved=give_up_once_solved)
