"""How fast does PPO solve Flappy Bird and CartPole here? Wall-clock and environment steps.

    python -m envs.bench_train                 # everything below (the SB3 rows when it is installed)
    python -m envs.bench_train --only cartpole
    python -m envs.bench_train --only flappy flappy-sb3 --sb3-budget 300

- Flappy Bird: the default `python -m envs.train` configuration; after every 10 updates the
  greedy policy plays 100 held-out episodes with a 500-pipe cap (`envs.mastery`, the check the
  trainer stops with; once solved, a check stops playing when 6 episodes have ended below the
  cap, as the trainer's do, since only mastery is left to see). Solved = mean ≥ 100 pipes and
  ≥ 90% of episodes past 40 pipes; mastered = ≥ 95% of episodes at the cap. The run stops when
  mastered on those seeds (or at the preset's end); the policy it stopped with then plays 100
  episodes on fresh seeds that no check used (`final_at_cap_fresh_seeds`): mastery that holds,
  not a lucky check. (The trainer's own stop, which also demands the fresh seeds before it
  stops, is off here: this times the first pass.)
- Flappy Bird with Stable-Baselines3 (`flappy-sb3`, when `stable-baselines3` is installed: the
  `bench` extra): SB3's PPO on our `proximal/FlappyBird-v0` through its own single-env API
  (`make_vec_env`, 8 envs, RL Zoo's LunarLander hyperparameters, one torch thread), judged by
  the same solved check, on the same held-out seeds, by the same batched evaluation
  (`evaluate_policy` on SB3's greedy policy), every 81 920 steps as ours. It trains for at most
  `--sb3-budget` seconds (evaluations excluded) and reports "not solved within budget" past it;
  `--sb3-budget 0` skips it. The ratio is ours/SB3 seconds to solved (when SB3 does not solve,
  ours/budget bounds it from above).
- The update's cost: its matrix-product FLOPs per env step, counted from the network's shapes
  (`update_flops_per_step`: the rollout's forward pass plus K epochs of forward and backward),
  and the machine's bound for them, a 1024 × 64 × 64 product's GFLOP/s measured at the start
  on the update's threads (`matmul_gflops`, `matmul_threads`: two on a 2-core machine,
  `envs.run_support.cpu_threads`): `update_flops_per_step`, `matmul_gflops`,
  `bound_steps_per_second` and `fraction_of_bound` (training steps/s over that bound) in the
  JSON line's `flappy`.
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

from envs.config import TrainConfig, preset_for
from envs.evaluate import evaluate_policy
from envs.mastery import (
    FLAPPY_ID,
    FRESH_SEED,
    SolvedCheck,
    flappy_check,
    flappy_mastered,
    flappy_solved,
    out_of_reach,
)
from envs.run_support import cpu_threads
from envs.train import train

CARTPOLE_EVAL_EVERY = 2048
# Ours evaluates every 10 updates of 64 envs × 128 steps; SB3's 8 envs × 1 024 steps make the same
# 8 192-step batch, so both are checked at the same step counts: 81 920, 163 840, ...
FLAPPY_EVAL_EVERY = 81_920


def cartpole_solved(scores) -> bool:
    return sum(scores) / len(scores) >= 475


def update_flops_per_step(agent: torch.nn.Module, update_epochs: int) -> int:
    """Matrix-product FLOPs per env step of one PPO iteration of an MLP agent, from its layers' shapes:
    the rollout's forward pass of actor and critic, plus K = `update_epochs` epochs of forward and
    backward over the same rows (each env step is one row of the batch).

    A linear layer in → out costs 2·in·out FLOPs per row forward (a multiply and an add per weight),
    and backward 2·in·out for its weight's gradient plus 2·in·out for its input's gradient, except the
    first layer, whose input (the observation) needs none. So per env step
    F = Σ_layers 2·in·out  +  K·(Σ_layers 3·2·in·out − Σ_first layers 2·in·out).
    Biases, activations, the loss, Adam and GAE are left out: O(width) per row, not O(width²).
    The preset's 12 → 64 → 64 → {2, 1} actor and critic: 19 840 forward, 56 448 forward + backward,
    F = 245 632 with K = 4 (`torch.utils.flop_counter` counts the same: tests/test_bench_train.py).
    """
    layers = [m for m in agent.modules() if isinstance(m, torch.nn.Linear)]
    forward = sum(2 * m.in_features * m.out_features for m in layers)
    inputs = [getattr(agent, name) for name in ("actor", "critic", "trunk") if hasattr(agent, name)]
    first = sum(2 * seq[0].in_features * seq[0].out_features for seq in inputs)  # the layers the observation enters
    return forward + update_epochs * (3 * forward - first)


def matmul_gflops(rows: int = 1024, width: int = 64, seconds: float = 0.3, repeats: int = 5) -> float:
    """GFLOP/s of a (rows × width) @ (width × width) float32 product on this machine, torch's current
    thread count: the best of `repeats` windows of about `seconds` (2·rows·width² FLOPs a product)."""
    a, b = torch.randn(rows, width), torch.randn(width, width)
    out = torch.empty(rows, width)
    flops, best = 2 * rows * width * width, 0.0
    for _ in range(repeats):
        count, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds:
            for _ in range(100):
                torch.mm(a, b, out=out)
            count += 100
        best = max(best, flops * count / elapsed / 1e9)
    return best


def bench_flappy(seed: int, device: str = "cpu", **overrides) -> dict:
    """The flappy preset (with `overrides`, e.g. total_steps or num_envs) on `device` until mastered or
    its last step, checked every 10 updates; then the policy it stopped with on fresh seeds. The
    trainer's own stop (`stop_when_mastered`, the same check confirmed on fresh seeds) is off: this
    times the first pass on the held-out seeds, then reports the fresh seeds apart."""
    config = TrainConfig(**{**preset_for("flappy"), "stop_when_mastered": False, **overrides}, seed=seed,
                         device=device, out="runs/bench/flappy", overwrite=True, progress=False)
    # every 10 updates (the preset's FLAPPY_EVAL_EVERY, as SB3's); once solved, a check gives up as the trainer's do
    check = flappy_check(every=config.batch_size * 10, give_up_once_solved=out_of_reach(100))
    summary = train(config, stop_when=check)
    trained = summary["seconds"] - check.eval_seconds
    seconds, steps = check.solved_at if check.solved_at else (None, None)
    mastered_seconds, mastered_steps = check.done_at if check.done_at else (None, None)
    # The policy the run ended with, on 100 seeds no evaluation above has used: a policy that
    # oscillates can pass one check on the held-out seeds by luck; on fresh seeds it shows.
    fresh = evaluate_policy(summary["agent"], FLAPPY_ID, episodes=100, cap=500, seed=FRESH_SEED + seed * 1000,
                            device=device)
    return {"seconds_to_solved": seconds, "steps_to_solved": steps, "seconds_to_mastered": mastered_seconds,
            "steps_to_mastered": mastered_steps, "num_envs": config.num_envs, "steps": summary["global_step"],
            "training_seconds": round(trained, 1), "eval_seconds": round(check.eval_seconds, 1),
            "steps_per_second": round(summary["global_step"] / trained) if trained > 0 else None,
            "final_at_cap_fresh_seeds": sum(s >= 500 for s in fresh) / len(fresh),
            "final_mastered_fresh_seeds": flappy_mastered(fresh),
            "update_flops_per_step": update_flops_per_step(summary["agent"], config.update_epochs)}


class SB3Greedy(torch.nn.Module):
    """SB3's policy behind our agent's `greedy_action(obs)`, so that `evaluate_policy` (and so
    `SolvedCheck`) judges it exactly as it judges ours: a batch of observation tensors in, the
    policy's most likely action for each out (what `model.predict(obs, deterministic=True)` gives)."""

    arch = "mlp"
    continuous = False

    def __init__(self, policy):
        super().__init__()
        self.policy = policy

    @torch.no_grad()
    def greedy_action(self, obs: torch.Tensor) -> torch.Tensor:
        device = next(self.policy.parameters()).device
        return self.policy._predict(obs.to(device), deterministic=True).to(obs.device)


# RL Zoo (hyperparams/ppo.yml) has no Flappy Bird entry; of its discrete-action entries we take
# LunarLander-v2's (n_steps 1024, batch_size 64, gae_lambda 0.98, gamma 0.999, n_epochs 4, ent_coef 0.01,
# learning rate and clip range at SB3's defaults, 3e-4 and 0.2), with 8 envs instead of its 16. It is the
# zoo's long-episode discrete task (up to 1 000 steps, many small rewards, an entropy bonus), like Flappy
# Bird (thousands of frames, +0.1 per frame alive); CartPole-v1's entry (gamma 0.98, 32-step rollouts,
# 20 epochs) is tuned for a 500-step balancing task whose horizon is far shorter. 8 × 1 024 is also
# our preset's batch (64 × 128), so both are evaluated at the same step counts.
SB3_FLAPPY = dict(n_steps=1024, batch_size=64, gae_lambda=0.98, gamma=0.999, n_epochs=4, ent_coef=0.01)
SB3_FLAPPY_ENVS = 8


def bench_flappy_sb3(seed: int, budget: float, every: int = FLAPPY_EVAL_EVERY,
                     max_steps: int | None = None) -> dict | None:
    """SB3's PPO on our Flappy Bird until solved, `budget` seconds of training (evaluations
    excluded) or `max_steps` env steps; None when SB3 is not installed."""
    try:
        from stable_baselines3 import PPO
        from stable_baselines3.common.callbacks import BaseCallback
        from stable_baselines3.common.env_util import make_vec_env
    except ImportError:
        return None
    import envs  # noqa: F401  (registers proximal/FlappyBird-v0 for gymnasium.make)

    check = flappy_check(is_done=flappy_solved)
    check.every = check.next_check = every

    class Check(BaseCallback):
        """Evaluates after each update (at rollout start, as ours after each update), stops when
        solved or when the training time (evaluations excluded) passes the budget."""

        def __init__(self):
            super().__init__()
            self.stop, self.over_budget = False, False

        def _on_rollout_start(self) -> None:
            self.stop = check(SB3Greedy(self.model.policy), self.num_timesteps)
            self.model.policy.set_training_mode(False)  # as SB3 collects rollouts (check's train() undone)

        def _on_step(self) -> bool:
            if time.perf_counter() - check.started - check.eval_seconds > budget:
                self.over_budget = True
            return not (self.stop or self.over_budget)

    torch.set_num_threads(1)
    env = make_vec_env(FLAPPY_ID, n_envs=SB3_FLAPPY_ENVS, seed=seed)
    model = PPO("MlpPolicy", env, **SB3_FLAPPY, seed=seed, device="cpu", verbose=0)
    callback = Check()
    model.learn(total_timesteps=max_steps or 10**12, callback=callback)  # stopped by the callback
    trained = time.perf_counter() - check.started - check.eval_seconds
    env.close()
    seconds, steps = check.solved_at if check.solved_at else (None, None)
    return {"seconds_to_solved": seconds, "steps_to_solved": steps, "budget_seconds": budget,
            "trained_seconds": round(trained, 1), "trained_steps": int(model.num_timesteps),
            "steps_per_second": round(model.num_timesteps / trained) if trained > 0 else None,
            "best_mean": max((e["mean"] for e in check.evaluations), default=None),
            "evaluations": len(check.evaluations)}


def sb3_ratio(ours: dict | None, sb3: dict | None) -> dict:
    """ours/SB3 seconds to solved; when SB3 did not solve, ours/budget is an upper bound of it."""
    ours_s = ours["seconds_to_solved"] if ours else None
    sb3_s = sb3["seconds_to_solved"] if sb3 else None
    ratio = ours_s / sb3_s if ours_s is not None and sb3_s else None
    bound = ours_s / sb3["budget_seconds"] if ours_s is not None and sb3 and sb3_s is None else None
    if ours is None or sb3 is None:
        met = None  # only one of the two ran
    else:  # the target: ours ≤ 0.1 × SB3's time, or SB3 not solving within its budget (ours solving)
        met = ours_s is not None and (sb3_s is None or ratio <= 0.1)
    return {"ratio": ratio, "ratio_below": bound, "target_met": met}


# Our CartPole recipe, chosen for wall-clock to solved on seeds 101–120 (never reported), then timed on
# seeds 1–5. The update is op-overhead bound at this size, so the number of gradient steps sets the
# time: RL Zoo's shape (8 × 32 steps, 10 epochs of 2 × 128 rows) took a median 14 336 steps and 1 120
# gradient steps, 5.8 s of CPU; one 256-row minibatch × 4 epochs with γ 0.99, λ 0.95 and no value
# clipping took 10 240 steps and 160 gradient steps, 2.3 s of CPU, and solved all 20 seeds (80th
# percentile 22 528 steps). More envs, larger minibatches, a shared trunk or no annealing were slower;
# 3 epochs with lr 5e-3 was as fast on the selection seeds but slower on seeds 1–5 (0.30 of SB3's time).
# (vf_coef 1.0 × ½(V − V^targ)²: as chosen)
CARTPOLE_OURS = dict(env_id="CartPole-v1", num_envs=8, num_steps=32, minibatch_size=256, update_epochs=4,
                     learning_rate=2.5e-3, gamma=0.99, gae_lambda=0.95, clip_vloss=False, ent_coef=0.0,
                     vf_coef=1.0, anneal_lr=True, total_steps=200_000, plot_every_seconds=1e9)


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


ONLY = ("flappy", "flappy-sb3", "cartpole")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=ONLY, default=None,
                        help="run only these (default: all); `--only flappy flappy-sb3` gives the Flappy Bird ratio")
    parser.add_argument("--seed", type=int, default=1, help="Flappy Bird's seed; CartPole uses seed, seed+1, …")
    parser.add_argument("--cartpole-seeds", type=int, default=5, help="CartPole runs per implementation (medians)")
    parser.add_argument("--sb3-budget", type=float, default=600.0, metavar="SECONDS",
                        help="training seconds SB3 gets on Flappy Bird (evaluations excluded); 0 skips it")
    parser.add_argument("--sb3-every", type=int, default=FLAPPY_EVAL_EVERY, metavar="STEPS",
                        help="env steps between SB3's Flappy Bird evaluations")
    args = parser.parse_args(argv)
    if args.sb3_budget < 0 or args.sb3_every < 1 or args.cartpole_seeds < 1:
        parser.error("--sb3-budget must be ≥ 0, --sb3-every and --cartpole-seeds ≥ 1")
    selected = set(args.only or ONLY)
    if args.sb3_budget == 0:
        selected.discard("flappy-sb3")
    warm_up()
    result: dict = {"flappy": None, "flappy_sb3": None, "cartpole": None}
    rows = []
    if "flappy" in selected:
        threads = cpu_threads(0, "mlp")[1]  # the update's threads (the trainer's choice for the MLP)
        torch.set_num_threads(threads)
        gflops = matmul_gflops()  # the machine's bound for the update's products, before anything runs
        torch.set_num_threads(1)
        result["flappy"] = flappy = bench_flappy(args.seed)
        flops = flappy["update_flops_per_step"]
        flappy["matmul_gflops"], flappy["matmul_threads"] = round(gflops, 2), threads
        flappy["bound_steps_per_second"] = round(gflops * 1e9 / flops)
        flappy["fraction_of_bound"] = round(flappy["steps_per_second"] * flops / (gflops * 1e9), 3) \
            if flappy["steps_per_second"] else None
        print(f"Flappy Bird (ours): {flops / 1e6:.3f} MFLOP of matrix products per env step (rollout forward + "
              f"{preset_for('flappy')['update_epochs']} epochs of forward and backward); a 1024×64×64 product "
              f"runs at {gflops:.1f} GFLOP/s here on {threads} thread(s), the update's, a bound of "
              f"{flappy['bound_steps_per_second']} steps/s; "
              f"training ran at {flappy['steps_per_second']} steps/s, {flappy['fraction_of_bound']} of it",
              file=sys.stderr)
        rows.append(("Flappy Bird solved (ours)", result["flappy"]["seconds_to_solved"],
                     result["flappy"]["steps_to_solved"]))
        rows.append(("Flappy Bird mastered (ours)", result["flappy"]["seconds_to_mastered"],
                     result["flappy"]["steps_to_mastered"]))
        print(f"Flappy Bird (ours): the final policy at the 500 cap in "
              f"{result['flappy']['final_at_cap_fresh_seeds']:.0%} of 100 episodes on fresh seeds", file=sys.stderr)
    if "flappy-sb3" in selected:
        sb3 = bench_flappy_sb3(args.seed, args.sb3_budget, args.sb3_every)
        if sb3 is None:
            print("flappy-sb3: stable-baselines3 is not installed (pip install -e \".[bench]\"); skipped",
                  file=sys.stderr)
        else:
            result["flappy_sb3"] = {**sb3, **sb3_ratio(result["flappy"], sb3)}
            rows.append((f"Flappy Bird solved (SB3 RL Zoo, ≤ {args.sb3_budget:g} s)", sb3["seconds_to_solved"],
                         sb3["steps_to_solved"]))
    if "cartpole" in selected:
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
    print(f"{'task':46s} {'seconds':>26s} {'env steps':>12s}", file=sys.stderr)
    for name, seconds, steps in rows:
        s = f"{seconds:26.1f}" if seconds is not None else f"{'not solved':>26s}"
        if seconds is None and "SB3" in name and "Flappy" in name:
            s = f"{'not solved within budget':>26s}"
        n = f"{steps:12d}" if steps is not None else f"{'-':>12s}"
        print(f"{name:46s} {s} {n}", file=sys.stderr)
    flappy_sb3 = result["flappy_sb3"]
    if flappy_sb3 is not None:
        print(f"SB3 on Flappy Bird: {flappy_sb3['trained_steps']} steps in {flappy_sb3['trained_seconds']} s "
              f"({flappy_sb3['steps_per_second']} steps/s), best greedy mean {flappy_sb3['best_mean']} pipes",
              file=sys.stderr)
        if flappy_sb3["ratio"] is not None:
            print(f"ours/SB3, seconds to solved: {flappy_sb3['ratio']:.3f} (target ≤ 0.1)", file=sys.stderr)
        elif flappy_sb3["ratio_below"] is not None:
            print(f"ours/SB3, seconds to solved: below {flappy_sb3['ratio_below']:.3f} (SB3 not solved within "
                  f"{flappy_sb3['budget_seconds']:g} s)", file=sys.stderr)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
