"""Everything a game run needs besides PPO itself: setting it up, its logs, plots, checkpoints and
Ctrl-C. `envs.train.train` holds the loop (collect → advantages → update → log); `Run` holds the
rest, so the loop reads on one screen.

Outputs in the run folder (`--out DIR`): `config.json` (the resolved configuration, also printed
at the start), `metrics.jsonl` (names in `core/metrics.py`), `learning_curve.png`,
`checkpoint.pt` (atomic; Ctrl-C saves first).

Several processes (`core.distributed`; CleanRL's `ppo_atari_multigpu.py` convention):

    torchrun --standalone --nproc_per_node=2 -m envs.train   # OMP_NUM_THREADS=1 on a CPU

Each of the N ranks steps its own `num_envs` envs for `num_steps` steps, so a rank's batch is
num_envs·num_steps rows and the run's batch is N·num_envs·num_steps; each rank shuffles its own
rows (seed + rank) into batch/minibatch_size minibatches of `minibatch_size` rows, and the
gradients of the N minibatches are averaged before each step (an effective minibatch of
N·minibatch_size). `total_steps` counts the steps of all ranks, so the run does
total_steps / (N·num_envs·num_steps) updates and anneals the learning rate to 0 over those: the
same schedule per update as one process, N times fewer updates of N times more data. Rank 0's
weights are broadcast at the start; rank r seeds torch, NumPy and its shuffling with seed + r
and its envs with seed + r·num_envs (no env seed shared between ranks). Episode statistics and
losses are averaged over all ranks, and the early stop at `target_kl` tests the rank-averaged KL.
Only rank 0 writes config.json, metrics.jsonl, the plot and checkpoint.pt; the checkpoint holds
every rank's envs, observations and random streams (rank 0 gathers them), and `--resume` under
torchrun with the same N gives each rank its own back.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import torch

from core import distributed
from core.config import format_config, save_config
from core.device import seed_everything
from core.kl import make_kl_controller
from core.metrics import MetricsWriter
from envs.checkpoints import rank_state, restore_training_state, save_training_state
from envs.config import PRESET_NOTES, TrainConfig, env_family
from envs.mastery import FLAPPY_CAP, FRESH_SEED, flappy_check, out_of_reach
from envs.networks import ActorCritic
from envs.normalize import NormalizedEnv
from envs.vector import make_vector_env, resolve_env_id

__all__ = ["Run", "StopRequest", "build_agent", "cpu_threads", "use_compile", "check_run_folder",
           "plot_learning_curve", "print_start", "print_end"]

EPISODE_SUMS = ("returns", "scores", "lengths", "count")


def cpu_threads(requested: int, arch: str, world: int = 1) -> tuple[int, int]:
    """Torch CPU threads while collecting and while updating: (`requested`, `requested`) when it is
    set; otherwise the measured choice for the machine's cores (those this process may use, shared
    among the `world` processes of a torchrun):

    - MLP agents collect on 1 thread: the rollout's ops are 64 rows and run slower split in two
      (35 against 39–40 ms a rollout of the Flappy Bird preset on 2 cores);
    - they update on up to 2 threads: its 1 024-row minibatches run faster on two (training 63 k
      against 60 k steps/s eager, idle 2-core machine, `envs.bench_dist`; envs/README.md).
      More than 2 was never measured, so 2 is the most `auto` takes;
    - the CNN uses every core for both: its convolutions are large.
    """
    if requested:
        return requested, requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cores = max(1, cores // world)
    return (cores, cores) if arch == "cnn" else (1, min(2, cores))


COMPILE_FROM_STEPS = 2_000_000


def use_compile(requested: bool | None, arch: str, device: torch.device, total_steps: int) -> bool:
    """Whether the update runs `torch.compile`d (`core.ppo.ppo_update(compile=...)`): `requested` when
    given; otherwise on for an MLP on the CPU in a run of at least `COMPILE_FROM_STEPS` steps. There
    a minibatch of the Flappy Bird preset took 1.86 ms compiled against 2.34 ms (two threads) and
    compiling took 1–18 s (warm cache, cold): a run of 2 M steps (about 250 updates, 15 ms saved
    each, 3.7 s) gains about what compiling from the cache costs, and the default Flappy Bird run
    (5–14 M steps) 10–27 s. The CNN and CUDA were not measured."""
    if requested is not None:
        return requested
    return arch != "cnn" and device.type == "cpu" and total_steps >= COMPILE_FROM_STEPS


class Run:
    """One training run: its envs, agent, optimiser, β controller and shuffling stream, where it is
    (`iteration`, `global_step`, the current observations `obs`), and its outputs.

    `Run(config, resume)` sets everything up in the order that makes a run reproducible (seeds,
    envs, weights, optimiser, streams, then a checkpoint's state over them); `end_update` logs an
    update and saves a checkpoint when one is due; `finish` closes the outputs and returns the
    summary `envs.train.train` returns.
    """

    def __init__(self, config: TrainConfig, resume: dict | None = None, stop_after_iterations: int | None = None,
                 stop_when: Callable[[ActorCritic, int], bool] | None = None):
        self.ppo_config = config.ppo
        self.device = distributed.setup(config.device)  # under torchrun: join the group, this rank's GPU
        self.world, self.main = distributed.world_size(), distributed.is_main()
        # rank 0's folder (its name holds a time)
        self.config = config = replace(config, out=distributed.broadcast_object(config.out))
        self.stop_after_iterations, self.stop_when = stop_after_iterations, stop_when
        seed_everything(distributed.rank_seed(config.seed))
        env_seed = distributed.rank_seed(config.seed, config.num_envs)  # rank r's envs: no seed shared with another
        self.out = Path(config.out)
        check_run_folder(self.out, resuming=resume is not None, overwrite=config.overwrite)
        distributed.barrier()  # every rank has looked at the folder before rank 0 writes into it
        if self.main:
            save_config(config, self.out)
        self.num_iterations = max(1, config.total_steps // (config.batch_size * self.world))  # over every rank
        self.envs = make_vector_env(config.env_id, config.num_envs, self.device, atari_backend=config.atari_backend)
        if config.norm_obs or config.norm_reward:
            self.envs = NormalizedEnv(self.envs, obs=config.norm_obs, reward=config.norm_reward, gamma=config.gamma)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the initial weights do not depend on the cores (orthogonal init's QR
        # differs in the last bit between one thread and two)
        self.agent = build_agent(config, tuple(self.envs.single_observation_space.shape),
                                 self.envs.single_action_space).to(self.device)
        torch.set_num_threads(threads)
        distributed.broadcast_parameters(self.agent)  # every rank starts from rank 0's weights
        self.rollout_threads, self.update_threads = cpu_threads(config.cpu_threads, self.agent.arch, self.world) \
            if self.device.type == "cpu" else (threads, threads)
        self.compile = use_compile(config.compile, self.agent.arch, self.device, config.total_steps)
        if self.compile:  # a machine where it cannot compile (no C++ compiler) runs the update eagerly, with a warning
            torch._dynamo.config.suppress_errors = True
        # foreach (the default on CUDA only): each Adam op runs once over every parameter instead of once
        # per parameter, ~100 fewer torch calls per minibatch on the CPU and bit-for-bit the same update.
        # (fused=True is 3× faster a step, but differs in the last bit, and so draws another run of every
        # seed: the published figures would no longer reproduce. envs/README.md, "Using the machine")
        self.optimizer = torch.optim.Adam(self.agent.parameters(), lr=config.learning_rate, eps=1e-5, foreach=True)
        self.kl_controller = make_kl_controller(config.kl_controller, config.kl_coef, config.kl_controller_target) \
            if "kl_penalty" in config.objective else None
        self.shuffle = torch.Generator().manual_seed(distributed.rank_seed(config.seed))
        self.start_iteration, self.global_step = 0, 0
        self.obs = self.envs.reset(seed=env_seed)
        if resume is not None:
            self.start_iteration, self.global_step, self.obs = restore_training_state(
                resume, self.agent, self.optimizer, self.kl_controller, self.shuffle, self.envs, env_seed,
                self.device, distributed.rank(), self.world)
        self.iteration = self.start_iteration
        # the mastery check (rank 0 alone plays it; every rank stops with it): `envs.mastery`
        self.mastery = flappy_check(every=config.mastery_check_every, fresh_seed=FRESH_SEED, log=False,
                                    give_up_below_cap=out_of_reach(100), env_id=resolve_env_id(config.env_id)) \
            if config.stop_when_mastered and self.main else None
        if self.mastery is not None:  # a resumed run checks at the same steps as an uninterrupted one
            self.mastery.next_check = (self.global_step // config.mastery_check_every + 1) * config.mastery_check_every
        self._open_outputs(append=resume is not None)

    def _open_outputs(self, append: bool) -> None:
        config = self.config
        if self.main:
            print(f"env {resolve_env_id(config.env_id)} · {config.num_envs} envs × {config.num_steps} steps = "
                  f"batch {config.batch_size}" + (f" per process × {self.world} processes" if self.world > 1 else "")
                  + f" · {self.num_iterations} updates · {self.agent.arch} · {self.device}"
                  + (f" (torch threads: {self.rollout_threads} collecting, {self.update_threads} updating)"
                     if self.device.type == "cpu" else "")
                  + (" · compiled update (torch.compile; the first update compiles it)" if self.compile else "")
                  + (f" · stops when mastered (checked every {config.mastery_check_every} steps)"
                     if config.stop_when_mastered else ""), file=sys.stderr)
        self.metrics = MetricsWriter(self.out / "metrics.jsonl", append=append, track=config.track) \
            if self.main else None
        self.progress = _progress_bar(config, self.start_iteration, self.num_iterations) if self.main else None
        # the sums of the episodes that ended since the last log, on the device (`envs.train.collect` adds to them)
        self.episodes = {name: torch.zeros((), device=self.device) for name in EPISODE_SUMS}
        self.history: list[dict] = []
        self.started, self.steps_at_start = time.perf_counter(), self.global_step
        self.check_seconds = 0.0  # spent in mastery checks: not training time (kept out of charts/sps)
        self.last_plot = self.started

    def end_update(self, iteration: int, stats: dict, obs: torch.Tensor, stop: StopRequest) -> bool:
        """Check mastery when due, log the update that ended (episodes, learning rate, steps/s, the check),
        redraw the plot when due, save a checkpoint when due or when stopping (so the checkpoint of a run
        that stops when mastered is the policy that passed); return whether the run stops here (every rank
        decides the same)."""
        self.iteration, self.obs = iteration, obs
        mastered = self._check_mastery(stats)
        self._log(stats)
        done_iterations = iteration + 1
        asked_to_stop = self.stop_when is not None and self.stop_when(self.agent, self.global_step)
        stopping = distributed.any_rank(  # all ranks stop together (a Ctrl-C may reach one first)
            mastered or asked_to_stop or stop.requested
            or (self.stop_after_iterations is not None
                and done_iterations - self.start_iteration >= self.stop_after_iterations))
        if done_iterations % self.config.checkpoint_every == 0 or done_iterations == self.num_iterations or stopping:
            others = distributed.gather_objects(rank_state(self.shuffle, self.envs, obs))  # each rank's, on rank 0
            if self.main:
                save_training_state(self.out / "checkpoint.pt", self.config, self.agent, self.optimizer,
                                    self.kl_controller, self.shuffle, self.envs, obs, done_iterations,
                                    self.global_step, other_ranks=others[1:])
        return stopping

    def _check_mastery(self, stats: dict) -> bool:
        """Run the mastery check when due; add its figures to `stats`: eval/mean_score and eval/at_cap
        (held-out seeds; absent when the check gave up, mastery out of reach), eval/at_cap_fresh (fresh
        seeds, when the held-out ones passed), eval/seconds (the check's time). Returns whether the
        policy is mastered on both."""
        if self.mastery is None:
            return False
        checks = len(self.mastery.evaluations)
        mastered = self.mastery(self.agent, self.global_step)
        if len(self.mastery.evaluations) > checks:
            record = self.mastery.last
            if not record["gave_up"]:  # a check that gave up (mastery out of reach) knows neither figure
                stats["eval/mean_score"], stats["eval/at_cap"] = record["mean"], record["at_cap"]
            if record.get("at_cap_fresh") is not None:
                stats["eval/at_cap_fresh"] = record["at_cap_fresh"]
            stats["eval/seconds"] = record["seconds_spent"]
            self.check_seconds += record["seconds_spent"]
        return mastered

    def _log(self, stats: dict) -> None:
        episodes = distributed.sum_over_ranks(torch.stack(list(self.episodes.values())))  # every rank's episodes
        ended = dict(zip(self.episodes, episodes.tolist()))
        count = ended["count"]
        if count > 0:
            stats["charts/episodic_return"] = ended["returns"] / count
            stats["charts/score"] = ended["scores"] / count
            stats["charts/episodic_length"] = ended["lengths"] / count
            stats["charts/episodes"] = count
            for value in self.episodes.values():
                value.zero_()
        stats["charts/learning_rate"] = self.optimizer.param_groups[0]["lr"]
        stats["charts/sps"] = (self.global_step - self.steps_at_start) / (time.perf_counter() - self.started
                                                                         - self.check_seconds)
        if self.metrics is not None:
            self.metrics.write(self.global_step, stats)
        self.history.append({"step": self.global_step, **stats})
        if self.progress is not None:
            self.progress.update(1)
            postfix = dict(sps=f"{stats['charts/sps']:.0f}",
                           ret=f"{stats.get('charts/episodic_return', float('nan')):.1f}",
                           score=f"{stats.get('charts/score', float('nan')):.1f}")
            if self.mastery is not None and self.mastery.last is not None:  # the last check, and checks' time
                last = self.mastery.last
                postfix["at_cap"] = ("<95%" if last["gave_up"] else f"{last['at_cap']:.0%}") + (
                    f"/{last['at_cap_fresh']:.0%} fresh" if last.get("at_cap_fresh") is not None else
                    "/<95% fresh" if "fresh_seed" in last else "")
                postfix["checks"] = f"{self.check_seconds:.0f}s"
            self.progress.set_postfix(postfix)
        if self.main and time.perf_counter() - self.last_plot > self.config.plot_every_seconds:
            plot_learning_curve(self.out / "metrics.jsonl", self.out / "learning_curve.png")
            self.last_plot = time.perf_counter()

    def finish(self) -> dict:
        """Close the outputs (rank 0 draws the final plot) and the envs; return the run's summary."""
        if self.main:
            self.metrics.close()
            if self.progress is not None:
                self.progress.close()
            plot_learning_curve(self.out / "metrics.jsonl", self.out / "learning_curve.png")
        self.envs.close()
        distributed.barrier()  # every rank leaves once rank 0 has written its files
        mastery = self.mastery
        return {"global_step": self.global_step, "iterations": self.iteration + 1,
                "seconds": time.perf_counter() - self.started, "check_seconds": self.check_seconds,
                "history": self.history, "agent": self.agent,
                "mastered": mastery.last if mastery is not None and mastery.done_at is not None else None,
                "last_check": mastery.last if mastery is not None else None}


def check_run_folder(out: Path, resuming: bool, overwrite: bool) -> None:
    """Refuse to start a new run in a folder that holds one (unless told to overwrite it)."""
    held = [name for name in ("checkpoint.pt", "metrics.jsonl") if (out / name).exists()]
    if held and not resuming and not overwrite:
        raise ValueError(f"out: {out} already holds a run ({', '.join(held)}); pass --resume {out} to continue "
                         f"it, --overwrite to replace it, or another --out")



def build_agent(config: TrainConfig, obs_shape: tuple[int, ...], action_space: gym.Space) -> ActorCritic:
    """A categorical policy for a Discrete space, a diagonal Gaussian for a Box one."""
    arch = config.arch if config.arch != "auto" else ("cnn" if len(obs_shape) == 3 else "mlp")
    continuous = isinstance(action_space, gym.spaces.Box)
    n_actions = int(action_space.shape[0]) if continuous else int(action_space.n)
    return ActorCritic(obs_shape, n_actions, arch=arch, hidden=config.hidden, continuous=continuous)



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


def print_start(config: TrainConfig, resume: dict | None) -> None:
    """The resolved configuration and the preset it took its defaults from, on stderr (rank 0 only)."""
    if os.environ.get("RANK", "0") != "0":  # torchrun's rank, before the group is joined
        return
    print(format_config(config, title="resumed configuration" if resume else "configuration"), file=sys.stderr)
    print(f"preset '{env_family(config.env_id)}': {PRESET_NOTES[env_family(config.env_id)]}; a flag overrides "
          "any field", file=sys.stderr)


def print_end(config: TrainConfig, summary: dict) -> None:
    """The run's length, its last mean return and score, and where the checkpoint is (rank 0 only)."""
    if os.environ.get("RANK", "0") != "0":
        return
    last = next((h for h in reversed(summary["history"]) if "charts/episodic_return" in h), {})
    checks = f" ({summary['check_seconds']:.0f} s of them in mastery checks)" if config.stop_when_mastered else ""
    mastered, last_check = summary.get("mastered"), summary.get("last_check")
    if mastered is not None:
        outcome = (f"mastered at {mastered['steps']} steps: {mastered['at_cap']:.0%} of 100 held-out and "
                   f"{mastered['at_cap_fresh']:.0%} of 100 fresh episodes at the {FLAPPY_CAP}-pipe cap; checkpoint "
                   f"{Path(config.out) / 'checkpoint.pt'} is the policy that passed")
    else:
        not_yet = "" if not config.stop_when_mastered else (
            "not mastered" + (f" (last check at {last_check['steps']} steps: " + (
                "6 held-out episodes ended below the cap" if last_check["gave_up"]
                else f"{last_check['at_cap']:.0%} of held-out episodes at the cap") + ")" if last_check else "") + "; ")
        outcome = f"{not_yet}checkpoint {Path(config.out) / 'checkpoint.pt'}"
    print(f"done: {summary['global_step']} steps in {summary['seconds']:.0f} s{checks}; last return "
          f"{last.get('charts/episodic_return', math.nan):.1f}, score {last.get('charts/score', math.nan):.1f}; "
          f"{outcome}", file=sys.stderr)


def _progress_bar(config: TrainConfig, start: int, total: int):
    if not config.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="update", dynamic_ncols=True, file=sys.stderr)


def plot_learning_curve(metrics_path: Path, png_path: Path) -> None:
    """Episodic return and score against environment steps (written atomically)."""
    from matplotlib.figure import Figure  # the object API: no pyplot state, no backend switched

    from core.metrics import read_metrics

    records = [r for r in read_metrics(metrics_path) if r.get("charts/episodic_return") is not None]
    if not records:
        return
    fig = Figure(figsize=(10, 3.5))
    axes = fig.subplots(1, 2)
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
    tmp.replace(png_path)
