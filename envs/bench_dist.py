"""Training steps per second of the default Flappy Bird run with 1 and with N processes.

    python -m envs.bench_dist                      # 1 and 2 processes, 20 updates each, one thread each
    python -m envs.bench_dist --procs 1 2 4 --updates 10

Each run is `torchrun --standalone --nproc_per_node=P -m envs.train` (plain `python -m envs.train`
for P = 1) with the default flappy preset, `OMP_NUM_THREADS=1`, for `--updates` updates of every
rank (P × 64 envs × 128 steps an update), in a temporary folder. The figure is the last
`charts/sps` of its metrics.jsonl: environment steps of all ranks per second of the training
loop (start-up excluded). The last line printed is one JSON object with the figures and the load
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts to measure")
    parser.add_argument("--updates", type=int, default=20, help="updates of every rank per run")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    results = [run(p, args.updates) for p in args.procs]
    for r in results:
        print(f"{r['procs']} process(es): {r['sps']:,} steps/s ({r['steps']:,} steps, {r['wall_s']} s wall-clock)",
              file=sys.stderr)
    summary = {"flappy_sps": results, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
               "cpus": os.cpu_count()}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
