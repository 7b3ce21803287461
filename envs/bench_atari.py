"""Atari steps per second: ale-py's native vector env against the gymnasium-wrapper stack.

    python -m envs.bench_atari                          # ALE/Breakout-v5, 8 envs, 4000 vector steps each
    python -m envs.bench_atari --env ALE/Pong-v5 --num-envs 16 --steps 2000

Both backends run through `envs.vector.make_vector_env`, the path the trainer uses: the same
tensor interface, (N, 4, 84, 84) uint8 frames, clipped rewards and whole-game returns. Actions
are uniformly random (drawn beforehand, the same for both), so only the environments are timed;
one agent step is 4 emulator frames. Steps per second of wall-clock and of CPU time (all the
process's threads): on a machine shared with other jobs the second shows the cost of each
path, the first what this machine delivered. Ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from envs.vector import make_vector_env

__all__ = ["steps_per_second", "main"]


def steps_per_second(env_id: str, backend: str, num_envs: int, steps: int, seed: int = 0) -> dict:
    """Agent steps per second (over all envs) of `steps` vector steps with random actions."""
    envs = make_vector_env(env_id, num_envs, torch.device("cpu"), atari_backend=backend)
    n_actions = int(envs.single_action_space.n)
    actions = torch.as_tensor(np.random.default_rng(seed).integers(0, n_actions, (steps, num_envs)))
    envs.reset(seed=seed)
    for t in range(min(50, steps)):  # warm up (first frames, lazy allocations)
        envs.step(actions[t])
    games = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    for t in range(steps):
        games += int(envs.step(actions[t]).game_over.sum())
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    envs.close()
    return {"backend": backend, "steps_per_second": steps * num_envs / seconds, "seconds": seconds,
            "steps_per_cpu_second": steps * num_envs / cpu_seconds, "games_ended": games}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--env", default="ALE/Breakout-v5", help="an ALE id")
    parser.add_argument("--num-envs", type=int, default=8, help="parallel games (the Atari preset's)")
    parser.add_argument("--steps", type=int, default=4000, help="vector steps timed per backend")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = {backend: steps_per_second(args.env, backend, args.num_envs, args.steps, args.seed)
               for backend in ("native", "wrappers")}
    for r in results.values():
        print(f"{args.env} {r['backend']:<8} {args.num_envs} envs: {r['steps_per_second']:>9,.0f} steps/s, "
              f"{r['steps_per_cpu_second']:>9,.0f} per CPU second ({r['seconds']:.1f} s, "
              f"{r['games_ended']} games ended)")
    ratio = results["native"]["steps_per_second"] / results["wrappers"]["steps_per_second"]
    cpu_ratio = results["native"]["steps_per_cpu_second"] / results["wrappers"]["steps_per_cpu_second"]
    print(f"native / wrappers: {ratio:.1f}× wall-clock, {cpu_ratio:.1f}× CPU time")
    print(json.dumps({"env": args.env, "num_envs": args.num_envs, "steps": args.steps, "cpus": os.cpu_count(),
                      "load_average": os.getloadavg()[0],
                      "native_steps_per_second": results["native"]["steps_per_second"],
                      "wrappers_steps_per_second": results["wrappers"]["steps_per_second"],
                      "native_steps_per_cpu_second": results["native"]["steps_per_cpu_second"],
                      "wrappers_steps_per_cpu_second": results["wrappers"]["steps_per_cpu_second"],
                      "ratio": ratio, "cpu_ratio": cpu_ratio}))


if __name__ == "__main__":
    main()
