"""`python -m envs.bench`: its figures are steps over elapsed time, the best window of each workload,
and the ratios are ours over the reference's; checked against a hand-worked case on a fake clock."""

from __future__ import annotations

import json
import types

import gymnasium
import pytest
import torch

import envs
from envs import bench


class FakeClock:
    """`perf_counter` for envs.bench: each timed window (a start read, then an end read after one chunk
    of steps, since the window is shorter than any step of the clock) lasts `first` seconds in the
    first round of windows and `second` in the rounds after it."""

    def __init__(self, windows_per_round: int, first: float, second: float):
        self.now, self.reads = 0.0, 0
        self.windows_per_round, self.first, self.second = windows_per_round, first, second

    def perf_counter(self) -> float:
        if self.reads % 2:  # an end read: the window's length passes
            window = self.reads // 2
            self.now += self.first if window < self.windows_per_round else self.second
        self.reads += 1
        return self.now


def test_bench_figures_are_steps_over_time_best_window_and_ratios(capsys, monkeypatch):
    sizes = [1, 64]
    # workloads: single env and reference (env only, sampled) + batched C kernel and torch ops per size
    workloads = 4 + 2 * len(sizes)
    clock = FakeClock(workloads, first=0.25, second=0.5)  # round 1 is the best (least disturbed) one
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # the reference is our own single env here, so its steps per window are known (1 000)
    monkeypatch.setattr(bench, "_reference_maker", lambda: (lambda: gymnasium.make(envs.FLAPPY_ID)))
    summary = bench.main(["--seconds", "0.01", "--repeats", "2", "--sizes", ",".join(map(str, sizes)),
                          "--threads", "0"])
    assert clock.reads == 2 * 2 * workloads, "every workload timed once per round, two rounds"

    # Hand-worked: a single-env chunk is 1 000 steps; a batched chunk is 200 calls × N envs; each
    # workload's best window is the first round's 0.25 s.
    assert summary["single_sps"] == summary["single_sps_sampled"] == 4_000
    assert summary["reference_sps"] == summary["reference_sps_sampled"] == 4_000
    assert summary["batched_sps"] == {"1": 800, "64": 51_200}
    assert summary["batched_sps_torch"] == {"1": 800, "64": 51_200}
    assert summary["ratio_1024"] is None and summary["ratio_8192"] is None  # sizes not measured
    assert summary["device"] == "cpu" and summary["cuda_sps"] is None
    assert summary["step_kernel"] in ("c", "torch")  # "torch" where no C compiler is found
    out = capsys.readouterr().out.strip().splitlines()
    assert json.loads(out[-1]) == {**summary}
    # the table: steps/s and × the reference (51 200 / 4 000 = 12.8)
    row = next(line for line in out if line.startswith("batched, cpu, N=64"))
    assert row.split()[-3:] == ["51,200", "12.8", "12.8"]


def test_bench_ratio_at_1024_envs(monkeypatch):
    clock = FakeClock(4 + 1, first=0.5, second=0.5)
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(bench, "_reference_maker", lambda: (lambda: gymnasium.make(envs.FLAPPY_ID)))
    summary = bench.main(["--seconds", "0.01", "--repeats", "1", "--sizes", "1024", "--no-torch-ops",
                          "--threads", "0"])
    # 200 calls × 1 024 envs / 0.5 s over 1 000 steps / 0.5 s
    assert summary["batched_sps"] == {"1024": 409_600} and summary["reference_sps"] == 2_000
    assert summary["ratio_1024"] == summary["ratio_1024_sampled"] == 204.8
    assert summary["batched_sps_torch"] is None


def test_bench_rejects_bad_settings():
    with pytest.raises(ValueError, match="repeats"):
        bench.main(["--repeats", "0"])
