"""`python -m envs.bench_gpu`: without a GPU, one line and exit 3; bad arguments, one line and exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from envs import bench_gpu

ROOT = Path(__file__).resolve().parent.parent


def test_without_a_gpu_it_says_so_in_one_line_and_exits_3(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        bench_gpu.main([])
    assert exit_info.value.code == bench_gpu.NO_GPU == 3
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "no CUDA GPU present" in err


def test_a_fresh_process_without_a_gpu_exits_3_without_a_traceback():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "envs.bench_gpu"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 3, result.stderr[-2000:]
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "no CUDA GPU present" in result.stderr


@pytest.mark.parametrize("argv,message", [
    (["--sizes", "0"], "--sizes"),
    (["--sizes", "8192,lots"], "--sizes"),
    (["--seconds", "-1"], "--seconds"),
    (["--repeats", "0"], "--repeats"),
    (["--total-steps", "ten"], "--total-steps"),
    (["--device", "tpu"], "--device"),
    (["--seed", "-1"], "--seed"),
    (["--bogus"], "--bogus"),
])
def test_bad_arguments_are_refused_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_gpu.main(argv)
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("error: ") and message in err


def test_arguments_parse():
    args = bench_gpu.parse_args(["--sizes", "8192, 65536", "--device", "CUDA:1", "--no-train"])
    assert args.sizes == [8192, 65536] and args.device == "cuda:1" and not args.train
    assert bench_gpu.parse_args([]).sizes == [8192, 65_536]


def test_the_script_runs_end_to_end_on_the_cpu_when_told(capsys):
    """`--device cpu`: the same code path as on a GPU, tiny (a smoke test of the script)."""
    result = bench_gpu.main(["--device", "cpu", "--sizes", "64", "--seconds", "0.02", "--repeats", "1",
                             "--total-steps", "8192", "--num-envs", "8"])
    assert result["env_sps"]["64"] > 0 and result["gpu"] is None
    assert result["train"]["steps"] == 8192 and result["train"]["steps_per_second"] > 0
    assert result["train"]["seconds_to_solved"] is None
    # 8 updates of 8 envs do not master the game: the fresh-seed replay of the final policy says so
    assert result["train"]["final_at_cap_fresh_seeds"] < 0.95 and not result["train"]["final_mastered_fresh_seeds"]
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith('{"device": "cpu"')
