"""`python -m envs.bench` runs end to end and ends with its JSON summary."""

from __future__ import annotations

import json

import pytest

from envs import bench


def test_bench_smoke(capsys):
    summary = bench.main(["--seconds", "0.02", "--repeats", "1", "--sizes", "1,64",
                          "--no-reference", "--threads", "0"])
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line) == summary
    assert set(summary["batched_sps"]) == {"1", "64"} and summary["batched_sps"]["64"] > 0
    assert summary["single_sps"] > 0 and summary["reference_sps"] is None
    assert summary["ratio_1024"] is None and summary["device"] == "cpu"
    assert summary["step_kernel"] in ("c", "torch")  # "torch" where no C compiler is found
    assert set(summary["batched_sps_torch"]) == {"1", "64"}
    assert summary["batched_sps_torch"]["64"] > 0


def test_bench_rejects_bad_settings():
    with pytest.raises(ValueError, match="repeats"):
        bench.main(["--repeats", "0"])
