"""Train a PPO agent on Flappy Bird (default), CartPole, Atari or any gymnasium id.

    python -m envs.train                                  # Flappy Bird from features, defaults below
    python -m envs.train --env CartPole-v1 --total-steps 200000
    python -m envs.train --env ALE/Pong-v5 --device cuda
    python -m envs.train --resume runs/flappy             # continue a stopped run

PPO as in Algorithm 1 of the PPO paper with the 13 core details of "The 37 Implementation
Details of PPO" (Huang et al. 2022): vectorised envs (1), orthogonal init (2), Adam ε = 1e-5
(3), learning-rate annealing (4), GAE (5), shuffled minibatches (6), advantage normalisation
(7), clipped surrogate (8), value clipping (9), entropy bonus (10), global grad-norm clipping
(11), debug metrics (12), separate or shared networks (13) — plus what CleanRL's `ppo.py`
lacks: a truncated episode bootstraps from V(final observation), a terminated one from 0.

Deviations: the objective may be `kl_penalty` (PPO paper §4, adaptive β) or both; the agent
handles Discrete action spaces only. Outputs in `--out DIR`: `metrics.jsonl` (names in
`core/metrics.py`), `learning_curve.png`, `checkpoint.pt` (atomic; Ctrl-C saves first).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from core.checkpoint import load_checkpoint, save_checkpoint
from core.config import add_arguments, config_to_dict, from_arguments
from core.device import resolve_device, seed_everything
from core.kl import make_kl_controller
from core.metrics import MetricsWriter
from core.ppo import PPOConfig, ppo_update
from core.rollout import RolloutBuffer
from envs.networks import ActorCritic
from envs.vector import make_vector_env, resolve_env_id

CHECKPOINT_KIND = "ppo_agent"


@dataclass
class TrainConfig(PPOConfig):
    """Everything one training run needs; the command line is generated from these fields."""

    env_id: str = "flappy"
    """Environment: 'flappy' (features), 'flappy-pixels', any proximal/… id, CartPole-v1, ALE/Pong-v5, …"""
    seed: int = 1
    """Seeds torch, NumPy, Python and the environments."""
    device: str = "auto"
    """'auto' (CUDA when present), 'cpu' or 'cuda'."""
    total_steps: int = 10_000_000
    """Environment steps to train for (over all parallel envs)."""
    num_envs: int = 64
    """N parallel environments (actors)."""
    num_steps: int = 128
    """T steps per env per rollout; a batch holds N·T transitions."""
    learning_rate: float = 3e-3
    """Adam's learning rate at the start (annealed linearly to 0 when anneal_lr)."""
    anneal_lr: bool = True
    """Anneal the learning rate linearly to 0 over the run (detail 4)."""
    gamma: float = 0.99
    """γ, the discount factor."""
    gae_lambda: float = 0.95
    """λ of GAE(λ) (AD-4)."""
    arch: str = "auto"
    """'mlp' (separate actor and critic), 'mlp_shared', 'cnn' (Nature CNN), or 'auto' (by observation shape)."""
    hidden: int = 64
    """Width of the MLP layers."""
    kl_controller: str = "adaptive"
    """β schedule for the kl_penalty objective: 'adaptive' (TR-3), 'proportional' (TR-4) or 'fixed'."""
    kl_coef: float = 1.0
    """Initial β of the kl_penalty objective."""
    kl_controller_target: float = 0.01
    """d_targ: the KL[π_old‖π_θ] per update the adaptive/proportional β controller steers to."""
    out: str = "runs/flappy"
    """Output folder: metrics.jsonl, learning_curve.png, checkpoint.pt."""
    checkpoint_every: int = 25
    """Save a checkpoint every this many updates (and at the end, and on Ctrl-C)."""
    plot_every_seconds: float = 15.0
    """Redraw learning_curve.png at most this often."""
    progress: bool = True
    """Show a progress bar."""
    cpu_threads: int = 0
    """Torch CPU threads; 0 = auto: 1 for MLPs (small ops run fastest on one thread), all cores for the CNN."""
    minibatch_size: int = 1024
    """Rows per minibatch (overrides PPOConfig's default for game batches)."""
    ent_coef: float = 0.01
    """c₂: weight of the entropy bonus (CL-4)."""

    def __post_init__(self) -> None:
        for name in ("total_steps", "num_envs", "num_steps", "checkpoint_every", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        for name in ("gamma", "gae_lambda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if self.arch not in ("auto", "mlp", "mlp_shared", "cnn"):
            raise ValueError(f"arch must be 'auto', 'mlp', 'mlp_shared' or 'cnn', got {self.arch!r}")
        self.batch_size = self.num_envs * self.num_steps
        super().__post_init__()  # validates the PPO fields, minibatch_size ≤ batch_size among them

    @property
    def num_iterations(self) -> int:
        return max(1, self.total_steps // self.batch_size)


# Defaults that differ by family; a flag given on the command line always wins.
PRESETS = {
    "flappy": dict(),
    "atari": dict(num_envs=8, num_steps=128, minibatch_size=256, learning_rate=2.5e-4, clip_coef=0.1,
                  ent_coef=0.01, total_steps=10_000_000, arch="cnn"),
    "classic": dict(num_envs=8, num_steps=128, minibatch_size=256, learning_rate=2.5e-4, ent_coef=0.01,
                    total_steps=500_000),
}


def preset_for(env_id: str) -> dict:
    env_id = resolve_env_id(env_id)
    if env_id.startswith("proximal/"):
        return dict(PRESETS["flappy"], **({"arch": "cnn"} if "Pixels" in env_id else {}))
    if env_id.startswith("ALE/"):
        return dict(PRESETS["atari"])
    return dict(PRESETS["classic"])


def build_agent(config: TrainConfig, obs_shape: tuple[int, ...], n_actions: int) -> ActorCritic:
    arch = config.arch if config.arch != "auto" else ("cnn" if len(obs_shape) == 3 else "mlp")
    return ActorCritic(obs_shape, n_actions, arch=arch, hidden=config.hidden)


class StopRequest:
    """First Ctrl-C: finish the current update, save, stop. Second Ctrl-C: stop at once
    (the last checkpoint on disk is intact: saves are atomic)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = signal.getsignal(signal.SIGINT)

    def __enter__(self) -> StopRequest:
        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            print("\nstopping after this update (Ctrl-C again to stop at once)", file=sys.stderr)

        try:
            signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            signal.signal(signal.SIGINT, self._previous)
        except ValueError:
            pass


def train(
    config: TrainConfig,
    resume: dict | None = None,
    stop_after_iterations: int | None = None,
    stop_when: Callable[[ActorCritic, int], bool] | None = None,
) -> dict:
    """Run PPO; return a summary. `resume` is a loaded checkpoint; `stop_after_iterations`
    stops as if interrupted (tests of resumption); `stop_when(agent, global_step)` is asked
    after each update whether the run is done (benchmarks stop once the task is solved)."""
    device = resolve_device(config.device)
    seed_everything(config.seed)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    envs = make_vector_env(config.env_id, config.num_envs, device)
    obs_shape = tuple(envs.single_observation_space.shape)
    agent = build_agent(config, obs_shape, int(envs.single_action_space.n)).to(device)
    if device.type == "cpu":
        torch.set_num_threads(config.cpu_threads or (1 if agent.arch != "cnn" else os.cpu_count() or 1))
    optimizer = torch.optim.Adam(agent.parameters(), lr=config.learning_rate, eps=1e-5)
    kl_controller = make_kl_controller(config.kl_controller, config.kl_coef, config.kl_controller_target) \
        if "kl_penalty" in config.objective else None
    shuffle = torch.Generator().manual_seed(config.seed)
    obs_dtype = torch.from_numpy(np.zeros(0, dtype=envs.single_observation_space.dtype)).dtype
    rollout = RolloutBuffer.allocate(config.num_steps, config.num_envs, obs_shape, obs_dtype=obs_dtype, device=device)

    start_iteration, global_step = 0, 0
    obs = envs.reset(seed=config.seed)
    if resume is not None:
        start_iteration, global_step, obs = restore_state(resume, agent, optimizer, kl_controller, shuffle, envs,
                                                          config, device)
    print(f"env {resolve_env_id(config.env_id)} · {config.num_envs} envs × {config.num_steps} steps = batch "
          f"{config.batch_size} · {config.num_iterations} updates · {agent.arch} · {device}", file=sys.stderr)

    metrics = MetricsWriter(out / "metrics.jsonl", append=resume is not None)
    progress = _progress_bar(config, start_iteration)
    finished = {name: torch.zeros((), device=device) for name in ("returns", "scores", "lengths", "count")}
    history: list[dict] = []
    started, steps_at_start = time.perf_counter(), global_step
    last_plot = started
    iteration = start_iteration
    with StopRequest() as stop:
        for iteration in range(start_iteration, config.num_iterations):
            if config.anneal_lr:  # detail 4: linear decay to 0 over the whole run
                optimizer.param_groups[0]["lr"] = config.learning_rate * (1.0 - iteration / config.num_iterations)

            # 1. Collect N × T transitions with the current policy (no gradients, no host syncs).
            for t in range(config.num_steps):
                actions, logprobs, values = agent.act(obs)
                step = envs.step(actions)
                rollout.obs[t], rollout.actions[t] = obs, actions
                rollout.logprobs[t], rollout.values[t] = logprobs, values
                rollout.rewards[t] = step.reward
                rollout.terminations[t], rollout.truncations[t] = step.terminated, step.truncated
                with torch.no_grad():  # V(s_{t+1}) of the true next state: the final obs where an episode ended
                    rollout.next_values[t] = agent.value(step.final_obs)
                finished["returns"] += step.episode_return.sum()
                finished["scores"] += step.episode_score.sum()
                finished["lengths"] += step.episode_length.sum()
                finished["count"] += step.game_over.sum()
                obs = step.obs
            global_step += config.batch_size

            # 2. Advantages by GAE(λ) with termination ≠ truncation, then K epochs of PPO.
            advantages, returns = rollout.compute_advantages(gamma=config.gamma, gae_lambda=config.gae_lambda)
            stats = ppo_update(agent.evaluate, rollout.flatten(advantages, returns), optimizer, config,
                               kl_controller=kl_controller, generator=shuffle)

            # 3. Log, plot, checkpoint.
            count = float(finished["count"])
            if count > 0:
                stats["charts/episodic_return"] = float(finished["returns"]) / count
                stats["charts/score"] = float(finished["scores"]) / count
                stats["charts/episodic_length"] = float(finished["lengths"]) / count
                stats["charts/episodes"] = count
                for value in finished.values():
                    value.zero_()
            stats["charts/learning_rate"] = optimizer.param_groups[0]["lr"]
            stats["charts/sps"] = (global_step - steps_at_start) / (time.perf_counter() - started)
            metrics.write(global_step, stats)
            history.append({"step": global_step, **stats})
            if progress is not None:
                progress.update(1)
                progress.set_postfix(sps=f"{stats['charts/sps']:.0f}",
                                     ret=f"{stats.get('charts/episodic_return', float('nan')):.1f}",
                                     score=f"{stats.get('charts/score', float('nan')):.1f}")
            if time.perf_counter() - last_plot > config.plot_every_seconds:
                plot_learning_curve(out / "metrics.jsonl", out / "learning_curve.png")
                last_plot = time.perf_counter()
            done_iterations = iteration + 1
            asked_to_stop = stop_when is not None and stop_when(agent, global_step)
            stopping = (asked_to_stop or stop.requested
                        or (stop_after_iterations is not None
                            and done_iterations - start_iteration >= stop_after_iterations))
            if done_iterations % config.checkpoint_every == 0 or done_iterations == config.num_iterations or stopping:
                save_training_state(out / "checkpoint.pt", config, agent, optimizer, kl_controller, shuffle, envs,
                                    obs, done_iterations, global_step)
            if stopping:
                break
    metrics.close()
    if progress is not None:
        progress.close()
    plot_learning_curve(out / "metrics.jsonl", out / "learning_curve.png")
    envs.close()
    return {"global_step": global_step, "iterations": iteration + 1, "seconds": time.perf_counter() - started,
            "history": history, "agent": agent}


def _progress_bar(config: TrainConfig, start: int):
    if not config.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=config.num_iterations, initial=start, unit="update", dynamic_ncols=True, file=sys.stderr)


def save_training_state(path, config, agent, optimizer, kl_controller, shuffle, envs, obs, iteration, global_step):
    """Everything needed to continue exactly where we are, written atomically."""
    state = {
        "model": agent.state_dict(),
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "shuffle_rng": shuffle.get_state(),
        "obs": obs,
    }
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    if envs.state_dict() is not None:
        state["env"] = envs.state_dict()
    meta = {
        "env_id": resolve_env_id(config.env_id),
        "network": agent.describe(),
        "config": config_to_dict(config),
        "iteration": iteration,
        "global_step": global_step,
        "beta": None if kl_controller is None else float(kl_controller.beta),
    }
    save_checkpoint(path, CHECKPOINT_KIND, state, meta)


def restore_state(payload, agent, optimizer, kl_controller, shuffle, envs, config, device):
    meta, state = payload["meta"], payload["state"]
    load_agent_weights(agent, payload)
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    shuffle.set_state(state["shuffle_rng"])
    if kl_controller is not None and meta.get("beta") is not None:
        kl_controller.beta = meta["beta"]
    if "env" in state:
        envs.load_state_dict(state["env"])
        obs = state["obs"].to(device)
    else:
        # gymnasium envs cannot be snapshot: start fresh episodes, seeded by the position in the run
        obs = envs.reset(seed=config.seed + meta["iteration"])
    return meta["iteration"], meta["global_step"], obs


def load_agent_weights(agent: ActorCritic, payload: dict) -> None:
    """Load weights, with a clear error when the checkpoint's network differs from `agent`'s."""
    saved = payload["meta"].get("network", {})
    if saved != agent.describe():
        raise ValueError(f"checkpoint network {saved} does not match this agent {agent.describe()} "
                         f"(env {payload['meta'].get('env_id')!r})")
    agent.load_state_dict(payload["state"]["model"])


def load_agent(path, device: torch.device | str = "cpu") -> tuple[ActorCritic, dict]:
    """Rebuild the agent saved in a checkpoint; returns (agent, meta)."""
    payload = load_checkpoint(path, kind=CHECKPOINT_KIND, map_location=device)
    net = payload["meta"]["network"]
    agent = ActorCritic(tuple(net["obs_shape"]), net["n_actions"], arch=net["arch"], hidden=net["hidden"])
    load_agent_weights(agent, payload)
    return agent.to(device).eval(), payload["meta"]


def plot_learning_curve(metrics_path: Path, png_path: Path) -> None:
    """Episodic return and score against environment steps (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from core.metrics import read_metrics

    records = [r for r in read_metrics(metrics_path) if r.get("charts/episodic_return") is not None]
    if not records:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    steps = [r["step"] for r in records]
    window = max(1, len(records) // 50)  # a running mean over ~2% of the run; raw values stay faint
    for ax, key, color, label in ((axes[0], "charts/episodic_return", "tab:blue", "episodic return"),
                                  (axes[1], "charts/score", "tab:green", "score (pipes)")):
        values = [r[key] for r in records]
        smooth = [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1])
                  for i in range(len(values))]
        ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
        ax.plot(steps, smooth, color=color)
        ax.set(xlabel="environment steps", ylabel=label, title=f"{label}, mean of episodes ending per update")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = png_path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(png_path)


def parse_config(argv: list[str] | None = None) -> tuple[TrainConfig, str | None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], argument_default=argparse.SUPPRESS,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser, TrainConfig, skip=("batch_size",))
    parser.add_argument("--env", dest="env_id", help="alias of --env-id")
    parser.add_argument("--resume", metavar="DIR", default=None, help="continue the run saved in DIR")
    for action in parser._actions:  # only flags the user gave land in `args`; presets fill the rest
        action.default = argparse.SUPPRESS
    args = parser.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if k != "resume"}
    resume_dir = getattr(args, "resume", None)
    if resume_dir is not None:
        saved = load_checkpoint(Path(resume_dir) / "checkpoint.pt", kind=CHECKPOINT_KIND)["meta"]["config"]
        saved.pop("batch_size", None)
        return replace(TrainConfig(**saved), **{k: v for k, v in given.items() if k in ("total_steps", "progress",
                                                                                          "device")}), resume_dir
    env_id = given.get("env_id", TrainConfig.env_id)
    values = {**preset_for(env_id), **given}
    return from_arguments(TrainConfig, argparse.Namespace(**values)), None


def main(argv: list[str] | None = None) -> None:
    try:
        config, resume_dir = parse_config(argv)
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    resume = load_checkpoint(Path(resume_dir) / "checkpoint.pt", kind=CHECKPOINT_KIND) if resume_dir else None
    summary = train(config, resume=resume)
    last = next((h for h in reversed(summary["history"]) if "charts/episodic_return" in h), {})
    print(f"done: {summary['global_step']} steps in {summary['seconds']:.0f} s; last return "
          f"{last.get('charts/episodic_return', math.nan):.1f}, score {last.get('charts/score', math.nan):.1f}; "
          f"checkpoint {Path(config.out) / 'checkpoint.pt'}", file=sys.stderr)


if __name__ == "__main__":
    main()
