"""Training steps per second of the default Flappy Bird run with 1 and with N processes.

    python -m envs.bench_dist                      # 1 and 2 processes, 20 updates each, one thread each
    python -m envs.bench_dist --procs 1 2 4 --updates 10
    python -m envs.bench_dist --llm                # also PPO-RLHF's tokens/s (the default 4 × 144 model)

Each run is `torchrun --standalone --nproc_per_node=P -m envs.train` (plain `python -m envs.train`
for P = 1) with the default flappy preset, `OMP_NUM_THREADS=1`, for `--updates` updates of every
rank (P × 64 envs × 128 steps an update), in a temporary folder. The figure is the last
`charts/sps` of its metrics.jsonl: environment steps of all ranks per second of the training
loop (start-up excluded).

With `--llm`, a short SFT and reward model are trained once (one process; their quality does not
matter here), then `python -m llm.pipeline --stage ppo` runs `--llm-iterations` iterations with P
processes: the figure is reply tokens (sampled, scored and trained on) per second of the stage,
Σ over iterations of rollout_batch_size × mean reply length / the stage's seconds (the short
evaluations before and after included). The last line printed is one JSON object with the figures and the load
average, since on a shared machine the load decides much of them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from core.metrics import read_metrics
from envs.train import PRESETS


def run(procs: int, updates: int) -> dict:
    preset = PRESETS["flappy"]
    steps = updates * procs * preset["num_envs"] * preset["num_steps"]
    with tempfile.TemporaryDirectory() as tmp:
        launcher = [sys.executable, "-m", "envs.train"] if procs == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", "-m",
            "envs.train"]
        start = time.perf_counter()
        subprocess.run([*launcher, "--total-steps", str(steps), "--out", tmp, "--overwrite", "--no-progress",
                        "--device", "cpu", "--checkpoint-every", str(updates + 1)],
                       check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True)
        wall = time.perf_counter() - start
        last = read_metrics(Path(tmp) / "metrics.jsonl")[-1]
    return {"procs": procs, "updates": updates, "steps": last["step"], "sps": round(last["charts/sps"]),
            "wall_s": round(wall, 1)}


def run_llm(procs: int, iterations: int, folder: Path) -> dict:
    launcher = [sys.executable, "-m", "llm.pipeline"] if procs == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", "-m",
        "llm.pipeline"]
    tag = f"bench{procs}"
    result = subprocess.run([*launcher, "--stage", "ppo", "--ppo-iterations", str(iterations), "--eval-prompts", "32",
                             "--out", str(folder), "--tag", tag, "--no-progress", "--device", "cpu"],
                            check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    records = [r for r in read_metrics(folder / f"metrics-{tag}.jsonl") if "rlhf/response_length" in r]
    config = json.loads((folder / f"config-{tag}.json").read_text())
    tokens = sum(r["rlhf/response_length"] for r in records) * config["rollout_batch_size"]
    seconds = summary["seconds"]["ppo"]
    return {"procs": procs, "iterations": iterations, "tokens": round(tokens), "tokens_per_s": round(tokens / seconds),
            "stage_s": round(seconds, 1)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts to measure")
    parser.add_argument("--updates", type=int, default=20, help="updates of every rank per run")
    parser.add_argument("--llm", action="store_true", help="also measure PPO-RLHF's tokens/s")
    parser.add_argument("--llm-iterations", type=int, default=6, help="PPO-RLHF iterations per run")
    parser.add_argument("--no-flappy", dest="flappy", action="store_false", help="skip the Flappy Bird runs")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    summary: dict = {}
    if args.flappy:
        summary["flappy_sps"] = [run(p, args.updates) for p in args.procs]
        for r in summary["flappy_sps"]:
            print(f"{r['procs']} process(es): {r['sps']:,} steps/s ({r['steps']:,} steps, {r['wall_s']} s wall-clock)",
                  file=sys.stderr)
    if args.llm:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "llm.pipeline", "--stage", "sft", "--sft-steps", "60", "--out", tmp,
                            "--no-progress", "--device", "cpu"], check=True, capture_output=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
            subprocess.run([sys.executable, "-m", "llm.pipeline", "--stage", "rm", "--rm-steps", "20", "--out", tmp,
                            "--no-progress", "--device", "cpu"], check=True, capture_output=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
            summary["ppo_tokens_per_s"] = [run_llm(p, args.llm_iterations, Path(tmp)) for p in args.procs]
        for r in summary["ppo_tokens_per_s"]:
            print(f"PPO-RLHF, {r['procs']} process(es): {r['tokens_per_s']:,} tokens/s ({r['tokens']:,} reply tokens "
                  f"in {r['stage_s']} s)", file=sys.stderr)
    summary |= {"loadavg_before": load_before, "loadavg_after": os.getloadavg(), "cpus": os.cpu_count()}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
