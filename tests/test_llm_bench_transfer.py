"""`python -m llm.bench_transfer --quick`: the benchmark's plumbing, not its figures. One cell of the
character GPT at toy budgets; its JSON line is checked against the logged metrics by a separate
computation, and a rerun reuses the cell (and completes one of an earlier format) instead of training."""

from __future__ import annotations

import json

import pytest

from llm import bench_transfer

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("transfer")
    result = bench_transfer.main(["--quick", "--models", "gpt", "--seeds", "3", "--out", str(out)])
    return out, result


def test_quick_run_reports_every_field_and_the_kl_read_back_from_the_metrics(quick, capsys):
    out, result = quick
    assert (result["total"], len(result["cells"])) == (1, 1)
    cell = result["cells"][0]
    assert (cell["model"], cell["seed"]) == ("gpt", 3)
    for method in ("ppo", "dpo", "grpo"):
        assert set(cell[method]) >= {"gold_sft", "gold_final"}
    # the KL figures, recomputed here from the PPO run's own metrics file
    kls = [json.loads(line)["rlhf/ref_kl"] for line in (out / "gpt-s3" / "metrics-bench.jsonl").read_text().splitlines()
           if "rlhf/ref_kl" in line]
    assert len(kls) == cell["ppo"]["kl_iterations"] == 4  # --quick: 4 PPO iterations
    target = cell["ppo"]["kl_target"]
    assert target == 3.0
    assert cell["ppo"]["kl_last_half_ratio"] == pytest.approx(sum(kls[2:]) / 2 / target)
    assert cell["ppo"]["kl_final_ratio"] == pytest.approx(sum(kls) / 4 / target)
    assert cell["ppo"]["kl_last_half_in_band"] == sum(1.5 <= k <= 6.0 for k in kls[2:]) / 2
    # the same SFT policy and prompts for PPO's and GRPO's temperature-1 evaluation
    assert cell["grpo"]["gold_sft"] == cell["ppo"]["gold_sft"]
    expected = (cell["ppo"]["kl_final_ratio"] <= 2 and all(cell[m]["gold_final"] > cell[m]["gold_sft"]
                                                           for m in ("ppo", "dpo", "grpo")))
    assert cell["holds"] == expected and result["held"] == int(expected)
    saved = json.loads((out / "cells" / "gpt-s3.json").read_text())
    assert saved == json.loads(json.dumps(cell))


def test_a_rerun_reuses_the_cell_and_completes_an_earlier_format(quick, capsys):
    out, result = quick
    path = out / "cells" / "gpt-s3.json"
    cell = json.loads(path.read_text())
    greedy = cell["grpo"]
    old = dict(cell, grpo={"gold_sft": greedy["greedy_gold_sft"], "gold_final": greedy["greedy_gold_final"]})
    path.write_text(json.dumps(old))
    (out / "gpt-s3" / "ppo-bench.pt").unlink()  # a rerun that trained again would need (and rewrite) it
    again = bench_transfer.main(["--quick", "--models", "gpt", "--seeds", "3", "--out", str(out)])
    assert not (out / "gpt-s3" / "ppo-bench.pt").exists()
    assert again["cells"][0] == cell  # the temperature-1 GRPO figures recomputed from the checkpoints
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("| model | seed |") and printed[2].startswith("| gpt | 3 |")
    assert json.loads(printed[-1])["cells"][0] == cell


def test_bad_lists_are_refused_in_one_line(capsys):
    with pytest.raises(SystemExit):
        bench_transfer.main(["--models", "gpt,opt"])
    err = capsys.readouterr().err.strip().splitlines()
    assert "--models: unknown ['opt']; allowed: gpt, gpt2, llama" in err[-1]
