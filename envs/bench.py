"""Steps per second of the Flappy Bird envs: `python -m envs.bench`.

Measures, in one run, with random actions: the single env
(`gymnasium.make("proximal/FlappyBird-v0")`), the batched env on the CPU at N = 1, 64, 1024
and 8192, with its default step (the C kernel `envs/flappy_bird/step.c` where a C compiler is
found) and with its torch ops (`step_kernel="torch"`, the reference step and the GPU's), the
batched env at N = 65,536 on CUDA when a GPU is present, and, when the `flappy-bird-gymnasium`
package is installed, its `FlappyBird-v0` with `use_lidar=False` (the reference). Each figure
is the best of `repeats` timed windows of `seconds` each, taken in turns (window 1 of every
workload, then window 2, ...): on a shared machine the best window is the one least disturbed
by others, and taking turns spreads any disturbance over all the workloads alike. One CPU
thread by default. The C kernel is compiled before any timing (on first use, about a second;
then cached).

Two ways of feeding random actions to a single env are timed:

- "env only": actions drawn in advance, so only `step` (and `reset`) is timed. The batched env
  is always timed this way (a `(16, N)` tensor of random actions, reused in turn).
- "sampled": `env.step(env.action_space.sample())`, the usual random-agent loop. Gymnasium's
  `Discrete.sample()` costs about as much as a whole Flappy Bird step, so this figure is
  much lower (about 45,000 steps/s for the reference); it is the one the project's targets
  were first stated against.

Ends with one JSON line (ratios are batched steps/s over the reference's steps/s):

    {"single_sps": ..., "batched_sps": {"1": ..., "64": ..., "1024": ..., "8192": ...},
     "reference_sps": ... or null, "ratio_1024": ... or null, "ratio_8192": ... or null,
     "device": "cpu", "cuda_sps": {"65536": ...} or null, "threads": ...,
     "single_sps_sampled": ..., "reference_sps_sampled": ... or null,
     "ratio_1024_sampled": ... or null, "ratio_8192_sampled": ... or null,
     "step_kernel": "c" or "torch", "batched_sps_torch": {"1": ..., ...} or null}

`batched_sps` and the ratios are the batched env's default step, `step_kernel` says which one
that was ("c", or "torch" without a C compiler), and `batched_sps_torch` is the torch-op step
at the same sizes (null with `--no-torch-ops`). `single_sps`, `reference_sps` and `ratio_*`
are "env only"; the `*_sampled` keys are the same with actions from `action_space.sample()`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from core.config import add_arguments, from_arguments

__all__ = ["BenchConfig", "Workload", "batched_workload", "main", "single_workload"]

SINGLE = "single env (proximal/FlappyBird-v0)"
REFERENCE = "flappy-bird-gymnasium FlappyBird-v0"


@dataclass
class BenchConfig:
    seconds: float = 1.0
    """Length of one timed window, in seconds."""
    repeats: int = 3
    """Timed windows per measurement; the best one is reported."""
    sizes: str = "1,64,1024,8192"
    """Numbers of envs of the batched env on the CPU, comma-separated."""
    cuda_envs: int = 65_536
    """Number of envs of the batched env on CUDA (measured only when a GPU is present)."""
    obs_type: str = "features"
    """Observation of the batched env: "features" or "pixels"."""
    threads: int = 1
    """torch CPU threads (0: torch's default). One thread by default: the reference runs on
    one core too, so the ratios are per core, and one thread is steadier on a shared machine."""
    reference: bool = True
    """Measure flappy-bird-gymnasium's FlappyBird-v0 when it is installed."""
    torch_ops: bool = True
    """Also measure the batched env's torch-op step on the CPU (its default step there is the
    C kernel)."""
    seed: int = 0
    """Seed of the envs and of the random actions."""

    def __post_init__(self) -> None:
        if not self.seconds > 0:
            raise ValueError(f"seconds must be > 0, got {self.seconds}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be ≥ 1, got {self.repeats}")
        if self.obs_type not in ("features", "pixels"):
            raise ValueError(f"obs_type must be 'features' or 'pixels', got {self.obs_type!r}")
        if self.threads < 0:
            raise ValueError(f"threads must be ≥ 0, got {self.threads}")


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, BenchConfig)
    return from_arguments(BenchConfig, parser.parse_args(argv))


class Workload:
    """A piece of work to time: `run()` does a chunk of steps and returns how many."""

    def __init__(self, run: Callable[[], int], sync: Callable[[], None] | None = None,
                 close: Callable[[], None] | None = None, step_kernel: str | None = None):
        self.run, self.sync, self.close = run, sync, close
        self.step_kernel = step_kernel  # the batched env's step ("c" or "torch"), else None
        self.run()  # warm-up (allocations, caches, lazy initialisation)

    def window(self, seconds: float) -> float:
        """Steps/s over one timed window of at least `seconds`."""
        steps, start = 0, time.perf_counter()
        while True:
            steps += self.run()
            if self.sync is not None:
                self.sync()  # CUDA runs asynchronously: wait for the work to be done
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return steps / elapsed


def single_workload(make_env: Callable[[], object], seed: int = 0,
                    sampled: bool = False) -> Workload:
    """One gymnasium env with random actions, reset whenever an episode ends.

    `sampled=False`: actions drawn in advance; `sampled=True`: `action_space.sample()`.
    """
    env = make_env()
    env.reset(seed=seed)
    env.action_space.seed(seed)
    actions = np.random.default_rng(seed).integers(0, 2, 4096).tolist()
    position = 0

    def run() -> int:
        nonlocal position
        step, sample = env.step, env.action_space.sample
        for i in range(1000):
            action = sample() if sampled else actions[(position + i) & 4095]
            _, _, terminated, truncated, _ = step(action)
            if terminated or truncated:
                env.reset()
        position += 1000
        return 1000

    return Workload(run, close=env.close)


def batched_workload(num_envs: int, device: str, obs_type: str = "features",
                     seed: int = 0, step_kernel: str = "auto") -> Workload:
    """The batched env with random actions (env steps: N per call); `step_kernel` as for
    `BatchedFlappyBird` (the one used is the workload's `step_kernel`)."""
    from envs.flappy_bird import BatchedFlappyBird

    env = BatchedFlappyBird(num_envs, device=device, obs_type=obs_type, step_kernel=step_kernel)
    env.reset(seed=seed)
    generator = torch.Generator(device=env.device).manual_seed(seed)
    actions = torch.randint(0, 2, (16, num_envs), device=env.device, generator=generator)
    calls = max(1, min(200, 2_000_000 // (num_envs * (50 if obs_type == "pixels" else 1))))

    def run() -> int:
        for i in range(calls):
            env.step(actions[i & 15])
        return calls * num_envs

    sync = torch.cuda.synchronize if env.device.type == "cuda" else None
    return Workload(run, sync=sync, close=env.close, step_kernel=env.step_kernel)


def _reference_maker():
    """A maker for flappy-bird-gymnasium's env, or None when the package is absent."""
    try:
        import flappy_bird_gymnasium  # noqa: F401  (registers FlappyBird-v0)
    except ImportError:
        return None
    import gymnasium

    return lambda: gymnasium.make("FlappyBird-v0", use_lidar=False)


def main(argv: list[str] | None = None) -> dict:
    import gymnasium
    from tqdm import tqdm

    import envs

    cfg = parse_args(argv)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    sizes = [int(s) for s in cfg.sizes.split(",") if s.strip()]
    reference = _reference_maker() if cfg.reference else None
    cuda = torch.cuda.is_available()

    def ours():
        return gymnasium.make(envs.FLAPPY_ID)

    builders: list[tuple[str, Callable[[], Workload]]] = []
    for sampled in (False, True):
        tag = " (sampled)" if sampled else ""
        builders.append((SINGLE + tag, lambda s=sampled: single_workload(ours, cfg.seed, s)))
        if reference is not None:
            builders.append((REFERENCE + tag,
                             lambda s=sampled: single_workload(reference, cfg.seed, s)))
    for n in sizes:
        builders.append((f"batched, cpu, N={n}",
                         lambda n=n: batched_workload(n, "cpu", cfg.obs_type, cfg.seed)))
    for n in sizes if cfg.torch_ops else ():
        builders.append((f"batched, torch ops, cpu, N={n}", lambda n=n: batched_workload(
            n, "cpu", cfg.obs_type, cfg.seed, step_kernel="torch")))
    if cuda:
        builders.append((f"batched, cuda, N={cfg.cuda_envs}", lambda: batched_workload(
            cfg.cuda_envs, "cuda", cfg.obs_type, cfg.seed)))

    # Round robin: window r of every workload runs before window r + 1 of any, so a burst of
    # load from other programs hits all of them alike and the ratios stay fair.
    workloads = {name: build() for name, build in builders}
    results = dict.fromkeys(workloads, 0.0)
    with tqdm(total=cfg.repeats * len(workloads), desc="bench", file=sys.stderr,
              leave=False) as bar:
        for _ in range(cfg.repeats):
            for name, workload in workloads.items():
                results[name] = max(results[name], workload.window(cfg.seconds))
                bar.update()
    for workload in workloads.values():
        if workload.close is not None:
            workload.close()

    ref = results.get(REFERENCE)
    ref_sampled = results.get(REFERENCE + " (sampled)")
    kernels = {workloads[f"batched, cpu, N={n}"].step_kernel for n in sizes}
    step_kernel = kernels.pop() if len(kernels) == 1 else None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s), "
          f"obs_type={cfg.obs_type}, best of {cfg.repeats} x {cfg.seconds:g} s, "
          f"batched step on the CPU: {step_kernel}")
    print(f"{'environment':<46}{'steps/s':>14}{'x ref':>9}{'x ref (sampled)':>17}")
    for name, rate in results.items():
        ratio = f"{rate / ref:,.1f}" if ref else "-"
        ratio_sampled = f"{rate / ref_sampled:,.1f}" if ref_sampled else "-"
        print(f"{name:<46}{rate:>14,.0f}{ratio:>9}{ratio_sampled:>17}")

    batched = {str(n): round(results[f"batched, cpu, N={n}"]) for n in sizes}
    batched_torch = ({str(n): round(results[f"batched, torch ops, cpu, N={n}"]) for n in sizes}
                     if cfg.torch_ops else None)

    def ratio(n: str, base: float | None) -> float | None:
        return round(batched[n] / base, 1) if base and n in batched else None

    summary = {
        "single_sps": round(results[SINGLE]),
        "batched_sps": batched,
        "reference_sps": round(ref) if ref else None,
        "ratio_1024": ratio("1024", ref),
        "ratio_8192": ratio("8192", ref),
        "device": "cpu",
        "cuda_sps": ({str(cfg.cuda_envs): round(results[f"batched, cuda, N={cfg.cuda_envs}"])}
                     if cuda else None),
        "threads": torch.get_num_threads(),
        "single_sps_sampled": round(results[SINGLE + " (sampled)"]),
        "reference_sps_sampled": round(ref_sampled) if ref_sampled else None,
        "ratio_1024_sampled": ratio("1024", ref_sampled),
        "ratio_8192_sampled": ratio("8192", ref_sampled),
        "step_kernel": step_kernel,
        "batched_sps_torch": batched_torch,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
