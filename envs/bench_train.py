"""How fast does PPO solve Flappy Bird and CartPole here? Wall-clock and environment steps.

    python -m envs.bench_train                 # both tasks, ours and (if installed) SB3 on CartPole
    python -m envs.bench_train --only cartpole

- Flappy Bird: the default `python -m envs.train` configuration; after every few updates the
  greedy policy plays 100 held-out episodes with a 500-pipe cap. Solved = mean ≥ 100 pipes and
  ≥ 90% of episodes past 40 pipes; mastered = ≥ 95% of episodes at the cap.
- CartPole-v1: solved = mean return ≥ 475 over 10 greedy episodes on held-out seeds, checked
  every 2 048 steps, for our PPO and for Stable-Baselines3's PPO with the RL Zoo
  hyperparameters (when `stable-baselines3` is installed), in the same run.
Training wall-clock excludes the time spent in these evaluations, for both implementations.
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from envs.evaluate import evaluate_policy
from envs.train import TrainConfig, preset_for, train

CARTPOLE_EVAL_EVERY = 2048


class SolvedCheck:
    """`stop_when` for `envs.train.train`: evaluate every `every` steps (evaluation time kept
    apart from training time); note when `is_solved`, stop when `is_done` (default: solved)."""

    def __init__(self, env_id, every, episodes, cap, is_solved, is_done=None, seed=10_000):
        self.env_id, self.every, self.episodes, self.cap, self.seed = env_id, every, episodes, cap, seed
        self.is_solved, self.is_done = is_solved, is_done or is_solved
        self.next_check, self.eval_seconds, self.solved_at, self.done_at = every, 0.0, None, None
        self.evaluations: list[dict] = []
        self.started = time.perf_counter()

    def __call__(self, agent, global_step) -> bool:
        if global_step < self.next_check:
            return False
        self.next_check = global_step + self.every
        t0 = time.perf_counter()
        scores = evaluate_policy(agent, self.env_id, episodes=self.episodes, cap=self.cap, seed=self.seed,
                                 device=next(agent.parameters()).device)
        agent.train()
        self.eval_seconds += time.perf_counter() - t0
        now = (time.perf_counter() - self.started - self.eval_seconds, global_step)
        at_cap = None if self.cap is None else sum(s >= self.cap for s in scores) / len(scores)
        self.evaluations.append({"seconds": round(now[0], 1), "steps": global_step,
                                 "mean": sum(scores) / len(scores), "at_cap": at_cap})
        print(f"  eval at {global_step} steps, {now[0]:.0f} s: {self.evaluations[-1]}", file=sys.stderr)
        if self.solved_at is None and self.is_solved(scores):
            self.solved_at = now
        if self.is_done(scores):
            self.done_at = now
            return True
        return False


def flappy_solved(scores) -> bool:
    return sum(scores) / len(scores) >= 100 and sum(s > 40 for s in scores) / len(scores) >= 0.9


def flappy_mastered(scores) -> bool:
    return sum(s >= 500 for s in scores) / len(scores) >= 0.95


def cartpole_solved(scores) -> bool:
    return sum(scores) / len(scores) >= 475


def bench_flappy(seed: int) -> dict:
    config = TrainConfig(**preset_for("flappy"), seed=seed, out="runs/bench/flappy", overwrite=True,
                         progress=False)
    check = SolvedCheck("proximal/FlappyBird-v0", every=config.batch_size * 10, episodes=100, cap=500,
                        is_solved=flappy_solved, is_done=flappy_mastered)
    train(config, stop_when=check)
    seconds, steps = check.solved_at if check.solved_at else (None, None)
    mastered_seconds, mastered_steps = check.done_at if check.done_at else (None, None)
    return {"seconds_to_solved": seconds, "steps_to_solved": steps, "seconds_to_mastered": mastered_seconds,
            "steps_to_mastered": mastered_steps}


CARTPOLE_OURS = dict(env_id="CartPole-v1", num_envs=8, num_steps=32, minibatch_size=128, update_epochs=10,
                     learning_rate=2.5e-3, gamma=0.98, gae_lambda=0.8, ent_coef=0.0, total_steps=200_000,
                     plot_every_seconds=1e9)


def bench_cartpole_ours(seed: int) -> dict:
    config = TrainConfig(**CARTPOLE_OURS, seed=seed, out="runs/bench/cartpole", overwrite=True,
                         progress=False)
    check = SolvedCheck("CartPole-v1", every=CARTPOLE_EVAL_EVERY, episodes=10, cap=None, is_solved=cartpole_solved)
    train(config, stop_when=check)
    seconds, steps = check.solved_at if check.solved_at else (None, None)
    return {"seconds": seconds, "steps": steps}


def bench_cartpole_sb3(seed: int) -> dict | None:
    try:
        from stable_baselines3 import PPO
        from stable_baselines3.common.callbacks import BaseCallback
        from stable_baselines3.common.env_util import make_vec_env
    except ImportError:
        return None

    def linear(start):
        return lambda progress_remaining: progress_remaining * start

    class Solved(BaseCallback):
        def __init__(self):
            super().__init__()
            self.started, self.eval_seconds, self.solved_at, self.next_check = time.perf_counter(), 0.0, None, 0

        def _on_step(self) -> bool:
            if self.num_timesteps < self.next_check:
                return True
            self.next_check = self.num_timesteps + CARTPOLE_EVAL_EVERY
            t0 = time.perf_counter()
            scores = sb3_greedy_scores(self.model, episodes=10, seed=10_000)
            self.eval_seconds += time.perf_counter() - t0
            if cartpole_solved(scores):
                self.solved_at = (time.perf_counter() - self.started - self.eval_seconds, self.num_timesteps)
                return False
            return True

    torch.set_num_threads(1)  # the same as our MLP runs use, so the comparison is like for like
    env = make_vec_env("CartPole-v1", n_envs=8, seed=seed)
    # RL Zoo hyperparameters for CartPole-v1 (hyperparams/ppo.yml)
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20, ent_coef=0.0,
                learning_rate=linear(1e-3), clip_range=linear(0.2), seed=seed, device="cpu", verbose=0)
    callback = Solved()
    model.learn(total_timesteps=500_000, callback=callback)
    seconds, steps = callback.solved_at if callback.solved_at else (None, None)
    return {"seconds": seconds, "steps": steps}


def sb3_greedy_scores(model, episodes: int, seed: int) -> list[float]:
    import gymnasium as gym

    scores = []
    for i in range(episodes):
        env = gym.make("CartPole-v1")
        obs, _ = env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(int(action))
            total += reward
            done = terminated or truncated
        scores.append(total)
    return scores


def median_run(runs: list[dict]) -> dict:
    """The run with the median time (an unsolved run counts as slowest)."""
    ordered = sorted(runs, key=lambda r: float("inf") if r["seconds"] is None else r["seconds"])
    return ordered[len(ordered) // 2]


def warm_up() -> None:
    """Pay one-time import costs (torch's optimiser machinery, matplotlib) before any timer starts,
    so that whichever implementation runs first is not charged for them."""
    import matplotlib.pyplot  # noqa: F401

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    torch.set_num_threads(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["flappy", "cartpole"], default=None)
    parser.add_argument("--seed", type=int, default=1, help="Flappy Bird's seed; CartPole uses seed, seed+1, …")
    parser.add_argument("--cartpole-seeds", type=int, default=5, help="CartPole runs per implementation (medians)")
    args = parser.parse_args(argv)
    warm_up()
    result: dict = {"flappy": None, "cartpole": None}
    rows = []
    if args.only in (None, "flappy"):
        result["flappy"] = bench_flappy(args.seed)
        rows.append(("Flappy Bird solved (ours)", result["flappy"]["seconds_to_solved"],
                     result["flappy"]["steps_to_solved"]))
        rows.append(("Flappy Bird mastered (ours)", result["flappy"]["seconds_to_mastered"],
                     result["flappy"]["steps_to_mastered"]))
    if args.only in (None, "cartpole"):
        seeds = range(args.seed, args.seed + args.cartpole_seeds)
        ours_runs, sb3_runs = [], []
        for seed in seeds:  # alternate, so that a change in machine load hits both alike
            ours_runs.append(bench_cartpole_ours(seed))
            sb3_runs.append(bench_cartpole_sb3(seed))
        ours, sb3 = median_run(ours_runs), median_run(sb3_runs) if sb3_runs[0] is not None else None
        ratio = (ours["seconds"] / sb3["seconds"]) if sb3 and ours["seconds"] and sb3["seconds"] else None
        result["cartpole"] = {"ours_seconds": ours["seconds"], "ours_steps": ours["steps"],
                              "sb3_seconds": sb3["seconds"] if sb3 else None,
                              "sb3_steps": sb3["steps"] if sb3 else None, "ratio": ratio, "seeds": len(seeds)}
        for seed, o, s in zip(seeds, ours_runs, sb3_runs):
            rows.append((f"CartPole-v1 ≥ 475 (ours, seed {seed})", o["seconds"], o["steps"]))
            rows.append((f"CartPole-v1 ≥ 475 (SB3 RL Zoo, seed {seed})", s["seconds"] if s else None,
                         s["steps"] if s else None))
    print(f"{'task':42s} {'seconds':>10s} {'env steps':>12s}", file=sys.stderr)
    for name, seconds, steps in rows:
        s = f"{seconds:10.1f}" if seconds is not None else f"{'not solved':>10s}"
        n = f"{steps:12d}" if steps is not None else f"{'-':>12s}"
        print(f"{name:42s} {s} {n}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
