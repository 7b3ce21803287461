"""Do the defaults hold where nobody tuned them? Ours and Stable-Baselines3's PPO on a suite.

    python -m envs.bench_suite                  # every task, 3 seeds, ours and SB3 (about an hour here)
    python -m envs.bench_suite --quick          # CartPole-v1 and one unseen task, 1 seed, 4 096 steps
    python -m envs.bench_suite --tasks Acrobot-v1 --seeds 1 2 3 --no-sb3

Each task trains `python -m envs.train --env-id TASK --total-steps BUDGET --seed S` exactly as
a user gets it (every other field from its preset), and Stable-Baselines3's PPO with its own
defaults (`PPO("MlpPolicy", env)`, one env, one torch thread; the `bench` extra) on the same
task, budget and seeds, in the same run, two jobs at a time (one per core).

The tasks: CleanRL's published `ppo.py` tasks at CleanRL's budget (CartPole-v1, Acrobot-v1,
MountainCar-v0 at 500 k steps), Pendulum-v1 at its preset's budget, LunarLander-v3 (when Box2D
is installed; CleanRL publishes none, RL Zoo trains 1 M) at 500 k, and the discrete tasks of
`envs.unseen_tasks` that nobody here tuned on, reached as `module:EnvId` as a user would
(Flappy Bird's 12 features at 300 k steps, Minigrid's DoorKey-5x5 at 150 k).

The statistic is CleanRL's: the average episodic return of training episodes at the end of the
run (here the last 100 episodes of each seed, with the stochastic policy, as SB3's
`ep_rew_mean`), then mean ± std (population) over the seeds. RL Zoo's published figure is a
different statistic (one tuned run, its deterministic policy evaluated after training): shown
for scale only. For our discrete runs the table also shows how much of the entropy maximum
log|A| the policy kept (its minimum over the first 10% of the run) and how far it moved per update
afterwards (the median approx_kl of the other 90%). An entropy collapse is both at once: below
25% of log|A| early, then a policy that hardly moves (median approx_kl < 1e-4), so it stops
exploring before it has learned and never leaves what it found (`python -m envs.diagnose RUN`
prints the same symptoms for any run).

Each finished job appends one JSON line to `--results` (default runs/bench_suite/results.jsonl)
with its return, seconds and the load average at its end; a rerun skips the jobs already there
(an interrupted hour is not lost) and `--fresh` starts over. Our jobs are keyed by the resolved
configuration too, so a changed default never reuses an old result.

Ends with one JSON line: per task, ours and SB3's per-seed returns, mean and std, the published
figures, and ours' entropy figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from envs.diagnose import collapsed, entropy_kept, late_kl

__all__ = ["Task", "TASKS", "final_return", "main"]


@dataclass(frozen=True)
class Task:
    env_id: str
    steps: int
    """The budget in env steps, the same for ours and SB3."""
    cleanrl: tuple[float, float] | None = None
    """CleanRL's published ppo.py figure (mean, std over 3 seeds), docs/rl-algorithms/ppo.md."""
    zoo: tuple[float, float, str] | None = None
    """RL Zoo's published PPO figure (mean, std, its budget), benchmark.md: tuned, one run, greedy."""
    bar: float | None = None
    """The return ours must reach (mean over seeds) for the suite to pass; None: at least SB3's."""
    bar_statistic: str = "return"
    """Which figure the bar applies to: "return" (training episodes) or "greedy" (10 evaluation episodes)."""


TASKS = (
    Task("CartPole-v1", 500_000, cleanrl=(490.04, 6.12), zoo=(500.0, 0.0, "100k"), bar=470.0),
    Task("Acrobot-v1", 500_000, cleanrl=(-86.36, 1.32), zoo=(-73.5, 18.2, "1M"), bar=-88.4),
    Task("Pendulum-v1", 120_000, zoo=(-172.2, 104.2, "100k"), bar=-200.0, bar_statistic="greedy"),
    Task("envs.unseen_tasks:FlappyBirdFeatures-v0", 300_000),
    Task("envs.unseen_tasks:DoorKey5x5Flat-v0", 150_000, zoo=(0.964, 0.006, "100k, tuned wrapper")),
    Task("LunarLander-v3", 500_000, zoo=(242.1, 31.8, "1M, v2")),
    # CleanRL's own figure is its bar, as for CartPole and Acrobot (mean − std = −200: no PPO default
    # without observation normalisation reliably reaches the flag in 500 k steps)
    Task("MountainCar-v0", 500_000, cleanrl=(-200.0, 0.0), zoo=(-110.4, 19.5, "1M"), bar=-200.0),
)
QUICK = (Task("CartPole-v1", 4096), Task("envs.unseen_tasks:FlappyBirdFeatures-v0", 4096))
LAST_EPISODES = 100
GREEDY_EPISODES, GREEDY_SEED = 10, 10_000


def final_return(history: list[dict], episodes: int = LAST_EPISODES) -> float:
    """Mean return of the last `episodes` training episodes, from the per-update means and counts
    of `envs.train` (whole updates: it takes updates from the end until they hold ≥ `episodes`)."""
    total, count = 0.0, 0.0
    for row in reversed(history):
        n = row.get("charts/episodes", 0.0)
        if n:
            total += row["charts/episodic_return"] * n
            count += n
        if count >= episodes:
            break
    return total / count if count else float("nan")


def ours_config(env_id: str, steps: int, seed: int, out: str = "unused"):
    """The TrainConfig a user gets from `python -m envs.train --env-id ENV --total-steps N --seed S`, on one
    torch thread (the suite runs a job per core)."""
    from envs.config import TrainConfig

    return TrainConfig(env_id=env_id, total_steps=steps, seed=seed, out=out, overwrite=True, progress=False,
                       checkpoint_every=10**9, plot_every_seconds=float("inf"), device="cpu", cpu_threads=1)


def job_key(impl: str, env_id: str, steps: int, seed: int) -> str:
    """The identity of a job in the results file: ours includes a hash of its resolved configuration."""
    key = f"{impl}|{env_id}|{steps}|{seed}"
    if impl == "ours":
        from core.config import config_to_dict
        from envs.config import resolve

        fields = config_to_dict(resolve(ours_config(env_id, steps, seed)))
        if not fields.get("stop_when_mastered"):  # a check that never runs changes nothing: earlier keys stay valid
            fields = {k: v for k, v in fields.items() if k not in ("stop_when_mastered", "mastery_check_every")}
        # how a job runs, not what it learns (threads and compiling change only the rounding)
        fields = {k: v for k, v in fields.items() if k not in ("cpu_threads", "compile")}
        digest = hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:10]
        key += f"|{digest}"
    return key


def run_ours(env_id: str, steps: int, seed: int) -> dict:
    import gymnasium as gym
    import torch

    from envs.checkpoints import load_agent, load_normalizer_statistics
    from envs.evaluate import evaluate_policy
    from envs.train import train
    from envs.vector import env_spaces

    torch.set_num_threads(1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        history = train(ours_config(env_id, steps, seed, out))["history"]
        seconds = time.perf_counter() - started
        # RL Zoo's statistic: the final policy, greedy, on held-out seeds (normalisers frozen, as envs.evaluate)
        agent, _ = load_agent(Path(out) / "checkpoint.pt")
        greedy = evaluate_policy(agent, env_id, episodes=GREEDY_EPISODES, cap=None, seed=GREEDY_SEED,
                                 normalizers=load_normalizer_statistics(Path(out) / "checkpoint.pt"))
    action_space = env_spaces(env_id)[1]
    result = {"return": final_return(history), "greedy": sum(greedy) / len(greedy), "seconds": seconds}
    if isinstance(action_space, gym.spaces.Discrete):
        result["entropy_kept"] = entropy_kept(history, int(action_space.n))
        result["late_kl"] = late_kl(history)
    return result


def run_sb3(env_id: str, steps: int, seed: int) -> dict:
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    from envs.vector import resolve_env_id

    torch.set_num_threads(1)
    started = time.perf_counter()
    env = make_vec_env(resolve_env_id(env_id), n_envs=1, seed=seed)  # resolve: imports the module of module:EnvId
    model = PPO("MlpPolicy", env, seed=seed, device="cpu", verbose=0, stats_window_size=LAST_EPISODES)
    model.learn(total_timesteps=steps)
    seconds = time.perf_counter() - started
    returns = [info["r"] for info in model.ep_info_buffer]  # the last 100 training episodes (Monitor)
    env.close()
    eval_env = make_vec_env(resolve_env_id(env_id), n_envs=1, seed=GREEDY_SEED)
    greedy, _ = evaluate_policy(model, eval_env, n_eval_episodes=GREEDY_EPISODES, deterministic=True)
    eval_env.close()
    return {"return": sum(returns) / len(returns) if returns else float("nan"), "greedy": float(greedy),
            "seconds": seconds}


def _job(args: tuple[str, str, int, int, str]) -> tuple[str, str, int, dict]:
    impl, env_id, steps, seed, key = args
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result = (run_ours if impl == "ours" else run_sb3)(env_id, steps, seed)
    result.update(key=key, load_average=os.getloadavg()[0] if hasattr(os, "getloadavg") else None)
    print(f"  {impl:4s} {env_id} seed {seed}: return {result['return']:.2f} in {result['seconds']:.0f} s "
          f"(load {result['load_average']})", file=sys.stderr, flush=True)
    return impl, env_id, seed, result


def read_results(path: Path) -> dict[str, dict]:
    """Finished jobs of a results file, by key (a truncated last line is skipped)."""
    done = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[record["key"]] = record
    return done


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation (CleanRL's ± over seeds)."""
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def summarise(tasks, seeds, results: dict, with_sb3: bool) -> dict:
    summary = {}
    for task in tasks:
        row: dict = {"steps": task.steps, "seeds": list(seeds), "cleanrl": task.cleanrl, "rl_zoo": task.zoo}
        for impl in ("ours", "sb3") if with_sb3 else ("ours",):
            if any((impl, task.env_id, seed) not in results for seed in seeds):
                continue  # SB3's side of this task is not run yet: ours alone, against its own bar
            runs = [results[(impl, task.env_id, seed)] for seed in seeds]
            mean, std = mean_std([r["return"] for r in runs])
            row[impl] = {"returns": [round(r["return"], 3) for r in runs], "mean": round(mean, 3),
                         "std": round(std, 3), "seconds": round(sum(r["seconds"] for r in runs), 1)}
            if all("greedy" in r for r in runs):
                greedy_mean, greedy_std = mean_std([r["greedy"] for r in runs])
                row[impl].update(greedy=[round(r["greedy"], 3) for r in runs], greedy_mean=round(greedy_mean, 3),
                                 greedy_std=round(greedy_std, 3))
            if impl == "ours" and "entropy_kept" in runs[0]:
                row[impl]["entropy_kept"] = [round(r["entropy_kept"], 3) for r in runs]
                row[impl]["late_kl"] = [float(f"{r['late_kl']:.2e}") for r in runs]
                row[impl]["collapsed"] = any(collapsed(r["entropy_kept"], r["late_kl"]) for r in runs)
        bar = task.bar if task.bar is not None else (row["sb3"]["mean"] if "sb3" in row else None)
        figure = row["ours"].get("greedy_mean") if task.bar_statistic == "greedy" else row["ours"]["mean"]
        row["bar"], row["bar_statistic"] = bar, task.bar_statistic
        row["passed"] = None if bar is None or figure is None else figure >= bar and not row["ours"].get("collapsed")
        summary[task.env_id] = row
    return summary


def print_table(summary: dict, seeds) -> None:
    def cell(pair):  # three significant figures for returns in [−10, 10] (Minigrid's are in [0, 1])
        return "-" if pair is None else f"{pair[0]:.1f} ± {pair[1]:.1f}" if abs(pair[0]) >= 10 \
            else f"{pair[0]:.3f} ± {pair[1]:.3f}"

    print(f"final return: mean of the last {LAST_EPISODES} training episodes per seed, mean ± std over seeds "
          f"{list(seeds)}", file=sys.stderr)
    print("greedy: 10 evaluation episodes of the final policy, mean ± std over seeds (RL Zoo's statistic)",
          file=sys.stderr)
    header = f"{'task':26s} {'steps':>8s} {'ours':>15s} {'SB3 defaults':>15s} {'ours greedy':>15s} " \
             f"{'SB3 greedy':>15s} {'CleanRL ppo.py':>15s} {'RL Zoo (tuned)':>26s} {'entropy kept':>15s} " \
             f"{'late approx_kl':>24s} {'bar':>14s} pass"
    print(header, file=sys.stderr)
    for env_id, row in summary.items():
        ours = row["ours"]
        sb3 = row.get("sb3")
        zoo = "-" if row["rl_zoo"] is None else f"{cell(row['rl_zoo'][:2])} ({row['rl_zoo'][2]})"
        kept = ",".join(f"{k:.2f}" for k in ours.get("entropy_kept", [])) or "-"
        kls = ",".join(f"{k:.0e}" for k in ours.get("late_kl", [])) or "-"
        bar = "-" if row["bar"] is None else f"{cell((row['bar'], 0.0)).split(' ±')[0]} {row['bar_statistic']}"
        passed = {None: "-", True: "yes", False: "NO"}[row["passed"]]

        def greedy(side):
            return cell((side["greedy_mean"], side["greedy_std"]) if side and "greedy_mean" in side else None)

        print(f"{env_id.split(':')[-1]:26s} {row['steps']:8d} {cell((ours['mean'], ours['std'])):>15s} "
              f"{cell((sb3['mean'], sb3['std']) if sb3 else None):>15s} {greedy(ours):>15s} {greedy(sb3):>15s} "
              f"{cell(row['cleanrl']):>15s} {zoo:>26s} {kept:>15s} {kls:>24s} {bar:>14s} {passed}", file=sys.stderr)


def _fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 2 (as argparse)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = [t.env_id for t in TASKS]
    parser.add_argument("--tasks", nargs="+", default=None, metavar="ENV_ID",
                        help=f"a subset of the suite (default: all): {', '.join(names)}")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--quick", action="store_true", help="CartPole-v1 and Flappy Bird features, short budgets, "
                        "the first seed only (a smoke run)")
    parser.add_argument("--no-sb3", dest="sb3", action="store_false", help="train ours only")
    parser.add_argument("--workers", type=int, default=2, help="jobs at a time (default 2: one per core here)")
    parser.add_argument("--impl", choices=("both", "ours", "sb3"), default="both",
                        help="train only one side now (the table still shows what the results file holds)")
    parser.add_argument("--results", type=Path, default=Path("runs/bench_suite/results.jsonl"),
                        help="one JSON line per finished job; jobs already there are skipped")
    parser.add_argument("--fresh", action="store_true", help="ignore the results file's earlier jobs")
    args = parser.parse_args(argv)
    if args.quick:
        tasks, seeds = QUICK, args.seeds[:1]
    else:
        unknown = [t for t in args.tasks or [] if t not in names and t.split(":")[-1] not in
                   [n.split(":")[-1] for n in names]]
        if unknown:
            _fail(f"--tasks: unknown {unknown}; the suite's tasks are {names}")
        tasks = tuple(t for t in TASKS if args.tasks is None or t.env_id in args.tasks
                      or t.env_id.split(":")[-1] in args.tasks)
        seeds = args.seeds
    if args.workers < 1:
        _fail(f"--workers must be ≥ 1, got {args.workers}")
    available = []
    from envs.vector import env_spaces

    for task in tasks:
        try:
            env_spaces(task.env_id)
            available.append(task)
        except ValueError as exc:  # a package the task needs is not installed (box2d, the bench extra)
            print(f"{task.env_id}: skipped ({exc})", file=sys.stderr)
    tasks = tuple(available)
    if args.sb3:
        try:
            import stable_baselines3  # noqa: F401
        except ImportError:
            print("stable-baselines3 is not installed (pip install -e \".[bench]\"): ours only", file=sys.stderr)
            args.sb3 = False
    impls = ("ours", "sb3") if args.sb3 else ("ours",)
    done = {} if args.fresh else read_results(args.results)
    keys = {(impl, t.env_id, seed): job_key(impl, t.env_id, t.steps, seed)
            for impl in impls for t in tasks for seed in seeds}
    # SB3's jobs are the long ones: start them first so the two workers finish together
    jobs = [(impl, t.env_id, t.steps, seed, keys[impl, t.env_id, seed]) for impl in reversed(impls)
            for t in tasks for seed in seeds
            if keys[impl, t.env_id, seed] not in done and args.impl in ("both", impl)]
    print(f"{len(jobs)} jobs to run ({len(keys) - len(jobs)} others already in {args.results} or left to another "
          "--impl)", file=sys.stderr)
    started = time.perf_counter()
    args.results.parent.mkdir(parents=True, exist_ok=True)
    if jobs:
        with multiprocessing.get_context("spawn").Pool(args.workers, maxtasksperchild=1) as pool, \
                args.results.open("a", encoding="utf-8") as log:
            for _impl, _env_id, _seed, result in pool.imap_unordered(_job, jobs):
                log.write(json.dumps(result) + "\n")
                log.flush()
                done[result["key"]] = result
    results = {job: done[key] for job, key in keys.items() if key in done}
    missing = sorted({f"{impl} {env_id}" for (impl, env_id, _), key in keys.items() if key not in done})
    if missing:
        print(f"not in the table (some seeds not run yet): {missing}", file=sys.stderr)
    tasks = tuple(t for t in tasks if f"ours {t.env_id}" not in missing)
    summary = summarise(tasks, seeds, results, args.sb3)
    print_table(summary, seeds)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    loads = [r["load_average"] for r in results.values() if r.get("load_average") is not None]
    out = {"seconds": round(time.perf_counter() - started, 1), "load_average": load,
           "job_load_average": [round(min(loads), 1), round(max(loads), 1)] if loads else None, "tasks": summary}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
