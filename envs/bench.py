"""Steps per second of the Flappy Bird envs: `python -m envs.bench`.

Measures, in one run and with random actions drawn in advance (so that only the env is
timed): the single env (`gymnasium.make("proximal/FlappyBird-v0")`), the batched env on the
CPU at N = 1, 64, 1024 and 8192, the batched env at N = 65,536 on CUDA when a GPU is present,
and, when the `flappy-bird-gymnasium` package is installed, its `FlappyBird-v0` with
`use_lidar=False` (the reference). Each figure is the best of `repeats` timed windows of
`seconds` each: on a shared machine the best window is the one least disturbed by others.
Ends with one JSON line:

    {"single_sps": ..., "batched_sps": {"1": ..., "64": ..., "1024": ..., "8192": ...},
     "reference_sps": ... or null, "ratio_1024": ... or null, "ratio_8192": ... or null,
     "device": "cpu", "cuda_sps": {"65536": ...} or null, "threads": ...}

`ratio_N` is batched steps/s at N envs over the reference's steps/s.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["BenchConfig", "main", "measure_single", "measure_batched"]


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
    seed: int = 0
    """Seed of the envs and of the random actions."""


def _field_docs(cls) -> dict[str, str]:
    """The docstrings written under the fields of a dataclass (used as --help texts)."""
    docs, body = {}, ast.parse(inspect.getsource(cls)).body[0].body
    for node, following in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr):
            docs[node.target.id] = str(following.value.value)
    return docs


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    docs = _field_docs(BenchConfig)
    for field in dataclasses.fields(BenchConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.type in (bool, "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction,
                                default=field.default, help=docs.get(field.name))
        else:
            kind = {"float": float, "int": int, "str": str}[str(field.type)]
            parser.add_argument(flag, type=kind, default=field.default, help=docs.get(field.name))
    return BenchConfig(**vars(parser.parse_args(argv)))


def _best_rate(run: Callable[[], int], seconds: float, repeats: int, sync=None) -> float:
    """Best steps/s over `repeats` windows; `run()` does a chunk of work, returns its steps."""
    run()  # warm-up (allocations, caches, lazy initialisation)
    best = 0.0
    for _ in range(repeats):
        steps, start = 0, time.perf_counter()
        while True:
            steps += run()
            if sync is not None:
                sync()
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
        best = max(best, steps / elapsed)
    return best


def measure_single(make_env: Callable[[], object], seconds: float, repeats: int,
                   seed: int = 0) -> float:
    """Steps/s of one gymnasium env with random actions, resetting when an episode ends."""
    env = make_env()
    env.reset(seed=seed)
    actions = np.random.default_rng(seed).integers(0, 2, 4096).tolist()
    position = 0

    def run() -> int:
        nonlocal position
        step = env.step
        for i in range(1000):
            _, _, terminated, truncated, _ = step(actions[(position + i) & 4095])
            if terminated or truncated:
                env.reset()
        position += 1000
        return 1000

    rate = _best_rate(run, seconds, repeats)
    env.close()
    return rate


def measure_batched(num_envs: int, device: str, seconds: float, repeats: int,
                    obs_type: str = "features", seed: int = 0) -> float:
    """Steps/s (env steps, i.e. N per call) of the batched env with random actions."""
    from envs.flappy_bird import BatchedFlappyBird

    env = BatchedFlappyBird(num_envs, device=device, obs_type=obs_type)
    env.reset(seed=seed)
    generator = torch.Generator(device=env.device).manual_seed(seed)
    actions = torch.randint(0, 2, (16, num_envs), device=env.device, generator=generator)
    calls = max(1, min(200, 2_000_000 // (num_envs * (50 if obs_type == "pixels" else 1))))

    def run() -> int:
        for i in range(calls):
            env.step(actions[i & 15])
        return calls * num_envs

    sync = torch.cuda.synchronize if env.device.type == "cuda" else None
    return _best_rate(run, seconds, repeats, sync)


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

    jobs: list[tuple[str, Callable[[], float]]] = []
    jobs.append(("single env (proximal/FlappyBird-v0)", lambda: measure_single(
        lambda: gymnasium.make(envs.FLAPPY_ID), cfg.seconds, cfg.repeats, cfg.seed)))
    if reference is not None:
        jobs.append(("flappy-bird-gymnasium FlappyBird-v0", lambda: measure_single(
            reference, cfg.seconds, cfg.repeats, cfg.seed)))
    for n in sizes:
        jobs.append((f"batched, cpu, N={n}", lambda n=n: measure_batched(
            n, "cpu", cfg.seconds, cfg.repeats, cfg.obs_type, cfg.seed)))
    if cuda:
        jobs.append((f"batched, cuda, N={cfg.cuda_envs}", lambda: measure_batched(
            cfg.cuda_envs, "cuda", cfg.seconds, cfg.repeats, cfg.obs_type, cfg.seed)))

    results: dict[str, float] = {}
    for name, job in tqdm(jobs, desc="bench", file=sys.stderr, leave=False):
        results[name] = job()

    ref = results.get("flappy-bird-gymnasium FlappyBird-v0")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s), "
          f"obs_type={cfg.obs_type}, best of {cfg.repeats} x {cfg.seconds:g} s")
    print(f"{'environment':<40}{'steps/s':>16}{'x reference':>14}")
    for name, rate in results.items():
        ratio = f"{rate / ref:,.1f}" if ref else "-"
        print(f"{name:<40}{rate:>16,.0f}{ratio:>14}")

    batched = {str(n): round(results[f"batched, cpu, N={n}"]) for n in sizes}
    summary = {
        "single_sps": round(results["single env (proximal/FlappyBird-v0)"]),
        "batched_sps": batched,
        "reference_sps": round(ref) if ref else None,
        "ratio_1024": round(batched["1024"] / ref, 1) if ref and "1024" in batched else None,
        "ratio_8192": round(batched["8192"] / ref, 1) if ref and "8192" in batched else None,
        "device": "cpu",
        "cuda_sps": ({str(cfg.cuda_envs): round(results[f"batched, cuda, N={cfg.cuda_envs}"])}
                     if cuda else None),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
