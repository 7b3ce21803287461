"""The benchmark for a CUDA machine, in one command: `python -m envs.bench_gpu`.

    python -m envs.bench_gpu                              # env steps/s at 8 192 and 65 536 envs, then training
    python -m envs.bench_gpu --no-train --sizes 8192,65536,262144
    python -m envs.bench_gpu --device cpu --sizes 64 --total-steps 16384   # a smoke test of the script itself

Measures, on the GPU:

1. the batched Flappy Bird env's steps/s (features, random actions) at each of `--sizes`
   envs, each the best of `--repeats` windows of `--seconds` (`envs.bench.batched_workload`);
2. the default training (`python -m envs.train` with the flappy preset, `--device cuda`): its
   steps/s and its seconds and steps to "solved" and to "mastered", judged as
   `python -m envs.bench_train` judges the CPU run (`SolvedCheck`: 100 held-out greedy episodes
   with the 500-pipe cap every 10 updates; solved = mean ≥ 100 pipes and ≥ 90% past 40,
   mastered = ≥ 95% at the cap), the evaluations' time excluded. The run stops once mastered,
   or at `--total-steps` (the preset's 20 M by default); the policy it stopped with then plays
   100 episodes on fresh seeds (`envs.bench_train.bench_flappy`, the same code as the CPU run).

Prints a table on stderr and ends with one JSON line on stdout:

    {"device": "cuda", "gpu": ..., "torch": ..., "env_sps": {"8192": ..., "65536": ...},
     "train": {"num_envs": 64, "steps": ..., "training_seconds": ..., "steps_per_second": ...,
               "seconds_to_solved": ..., "steps_to_solved": ..., "seconds_to_mastered": ...,
               "steps_to_mastered": ..., "eval_seconds": ..., "final_at_cap_fresh_seeds": ...,
               "final_mastered_fresh_seeds": ...} or null}

Exit codes: 0 measured; 2 bad arguments (one line, `error: ...`); 3 no CUDA GPU present (one
line, nothing measured: the script does not fall back to the CPU unless told `--device cpu`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

NO_GPU = 3
"""Exit status when CUDA was asked for (the default) and no GPU is present."""


class _OneLineParser(argparse.ArgumentParser):
    """Bad arguments are refused in one line (`error: ...`), exit status 2, no usage block."""

    def error(self, message: str):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected env counts such as 8192,65536, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"env counts must be ≥ 1, got {text!r}")
    return sizes


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return value

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _OneLineParser(description=__doc__.splitlines()[0],
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N (cpu: a smoke test of this script)")
    parser.add_argument("--sizes", type=_sizes, default=[8192, 65_536], metavar="N,N",
                        help="env counts for the batched env's steps/s")
    parser.add_argument("--seconds", type=_positive(float), default=1.0, help="length of one timed window")
    parser.add_argument("--repeats", type=_positive(int), default=3, help="timed windows per size (best kept)")
    parser.add_argument("--no-train", dest="train", action="store_false", help="only the env's steps/s")
    parser.add_argument("--total-steps", type=_positive(int), default=None,
                        help="stop training here if not mastered before (default: the flappy preset's 20 M)")
    parser.add_argument("--num-envs", type=_positive(int), default=None,
                        help="training envs (default: the flappy preset's 64, as the CPU figures)")
    parser.add_argument("--seed", type=int, default=1, help="training seed (the env benchmark uses 0)")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"--seed must be ≥ 0, got {args.seed}")
    device = args.device.strip().lower()
    if device != "cpu" and device != "cuda" and not (device.startswith("cuda:") and device[5:].isdigit()):
        parser.error(f"--device must be cuda, cuda:N or cpu, got {args.device!r}")
    args.device = device
    return args


def bench_env(sizes: list[int], device: str, seconds: float, repeats: int) -> dict[str, int]:
    """Best-of-`repeats` steps/s of the batched env at each size, windows taken in turns (as `envs.bench`)."""
    from envs.bench import batched_workload

    workloads = {n: batched_workload(n, device, "features", seed=0) for n in sizes}
    best = dict.fromkeys(sizes, 0.0)
    for _ in range(repeats):
        for n, workload in workloads.items():
            best[n] = max(best[n], workload.window(seconds))
    for workload in workloads.values():
        workload.close()
    return {str(n): round(rate) for n, rate in best.items()}


def bench_train(device: str, seed: int, total_steps: int | None, num_envs: int | None) -> dict:
    """The flappy preset on `device` until mastered (or `total_steps`): `envs.bench_train.bench_flappy`."""
    from envs.bench_train import bench_flappy

    overrides = {name: value for name, value in (("total_steps", total_steps), ("num_envs", num_envs))
                 if value is not None}
    return bench_flappy(seed, device=device, **overrides)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print(f"no CUDA GPU present (torch {torch.__version__}, torch.cuda.is_available() is False): "
                  f"nothing measured; run envs.bench_gpu on a machine with a GPU (exit {NO_GPU})", file=sys.stderr)
            sys.exit(NO_GPU)
        index = torch.device(args.device).index or 0
        if index >= torch.cuda.device_count():
            print(f"error: --device {args.device}: only {torch.cuda.device_count()} CUDA device(s)", file=sys.stderr)
            sys.exit(2)
        gpu = torch.cuda.get_device_name(index)
    else:
        gpu = None
    torch.set_num_threads(1)  # the host side: one thread, as the CPU figures
    started = time.perf_counter()
    print(f"torch {torch.__version__} · {args.device}" + (f" · {gpu}" if gpu else ""), file=sys.stderr)
    env_sps = bench_env(args.sizes, args.device, args.seconds, args.repeats)
    for n, rate in env_sps.items():
        print(f"batched env, {args.device}, N={int(n):,}: {rate:,} steps/s", file=sys.stderr)
    train_result = None
    if args.train:
        train_result = bench_train(args.device, args.seed, args.total_steps, args.num_envs)
        t = train_result

        def when(seconds, steps):
            return f"{seconds:.1f} s ({steps:,} steps)" if seconds is not None else "not reached"

        print(f"training, flappy preset, {t['num_envs']} envs: {t['steps']:,} steps in {t['training_seconds']} s "
              f"({t['steps_per_second']:,} steps/s; the evaluations' {t['eval_seconds']} s not counted); "
              f"solved {when(t['seconds_to_solved'], t['steps_to_solved'])}, "
              f"mastered {when(t['seconds_to_mastered'], t['steps_to_mastered'])}; the final policy at the cap "
              f"in {t['final_at_cap_fresh_seeds']:.0%} of 100 episodes on fresh seeds", file=sys.stderr)
    result = {"device": args.device, "gpu": gpu, "torch": torch.__version__, "env_sps": env_sps, "train": train_result,
              "wall_seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
