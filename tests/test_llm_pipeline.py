"""The pipeline and sampling CLIs on a tiny config: outputs, interruption and resume, bad input."""

from __future__ import annotations

import json

import pytest
import torch

import llm.rlhf
from core.metrics import read_metrics
from llm.pipeline import main as pipeline_main
from llm.sample import main as sample_main

TINY_ARGS = [
    "--n-layer",
    "1",
    "--n-head",
    "2",
    "--n-embd",
    "32",
    "--sft-steps",
    "40",
    "--sft-batch-size",
    "16",
    "--sft-examples",
    "500",
    "--rm-steps",
    "10",
    "--rm-batch-size",
    "8",
    "--rm-pairs",
    "200",
    "--rm-eval-pairs",
    "50",
    "--ppo-iterations",
    "3",
    "--rollout-batch-size",
    "8",
    "--ppo-minibatch-size",
    "4",
    "--ppo-epochs",
    "1",
    "--eval-prompts",
    "16",
    "--progress",
    "false",
    "--device",
    "cpu",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("llm-run")
    summary = pipeline_main([*TINY_ARGS, "--out", str(out)])
    return out, summary


def test_pipeline_writes_every_output_and_the_summary(tiny_run, capsys):
    out, summary = tiny_run
    for name in ("sft.pt", "rm.pt", "ppo.pt", "metrics.jsonl", "ppo.png", "report.md"):
        assert (out / name).is_file(), name
    assert set(summary) >= {"task", "seconds", "rm_gold_agreement", "gold_reward", "kl"}
    assert set(summary["seconds"]) == {"sft", "rm", "ppo"} and all(
        v > 0 for v in summary["seconds"].values()
    )
    assert summary["gold_reward"]["best"] == 3.0
    assert set(summary["gold_reward"]) == {"sft", "final", "best"} and set(summary["kl"]) == {
        "final",
        "target",
    }
    records = read_metrics(out / "metrics.jsonl")
    ppo = [r for r in records if "rlhf/score" in r]
    assert len(ppo) == 3
    for name in (
        "rlhf/score",
        "rlhf/gold_reward",
        "rlhf/ref_kl",
        "charts/ref_kl_coef",
        "rlhf/response_length",
        "losses/policy_loss",
        "losses/value_loss",
        "losses/approx_kl",
        "losses/clipfrac",
    ):
        assert name in ppo[-1]
    assert any("sft/loss" in r for r in records) and any("rm/loss" in r for r in records)
    assert "| prompt | SFT reply" in (out / "report.md").read_text()


def test_interrupted_stage_keeps_earlier_checkpoints_and_resume_continues(
    tiny_run, tmp_path, monkeypatch
):
    out, _ = tiny_run
    # a copy of the finished SFT and RM stages, then a PPO stage interrupted mid-way
    for name in ("sft.pt", "rm.pt"):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    before = {name: (tmp_path / name).read_bytes() for name in ("sft.pt", "rm.pt")}
    calls = {"n": 0}
    real_update = llm.rlhf.ppo_update

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_update(*args, **kwargs)

    monkeypatch.setattr(llm.rlhf, "ppo_update", interrupted)
    with pytest.raises(SystemExit) as stop:
        pipeline_main([*TINY_ARGS, "--out", str(tmp_path), "--resume", "true"])
    assert stop.value.code == 130
    assert not (tmp_path / "ppo.pt").exists()
    assert {name: (tmp_path / name).read_bytes() for name in before} == before  # intact
    monkeypatch.setattr(llm.rlhf, "ppo_update", real_update)
    summary = pipeline_main([*TINY_ARGS, "--out", str(tmp_path), "--resume", "true"])
    assert (tmp_path / "ppo.pt").is_file()
    assert {name: (tmp_path / name).read_bytes() for name in before} == before  # not retrained
    assert summary["seconds"]["sft"] == pytest.approx(
        json.loads(json.dumps(summary))["seconds"]["sft"]
    )
    assert summary["rm_gold_agreement"] is not None


def test_stage_with_a_mismatched_architecture_stops_with_a_message(tiny_run, tmp_path, capsys):
    out, _ = tiny_run
    (tmp_path / "sft.pt").write_bytes((out / "sft.pt").read_bytes())
    args = [a if a != "32" else "48" for a in TINY_ARGS]  # --n-embd 48 instead of 32
    with pytest.raises(SystemExit) as stop:
        pipeline_main([*args, "--out", str(tmp_path), "--stage", "rm"])
    assert stop.value.code == 2
    assert "different architecture (n_embd: 32 vs 48)" in capsys.readouterr().err


def test_missing_earlier_stage_says_which_to_run(tmp_path):
    with pytest.raises(SystemExit, match="run the 'sft' stage first"):
        pipeline_main([*TINY_ARGS, "--out", str(tmp_path), "--stage", "ppo"])


def test_sample_generates_from_any_stage_and_refuses_bad_prompts(tiny_run, capsys):
    out, _ = tiny_run
    for name in ("sft.pt", "ppo.pt"):
        lines = sample_main(
            [
                "--checkpoint",
                str(out / name),
                "--prompt",
                "review: the plot was",
                "--num-samples",
                "2",
            ]
        )
        assert len(lines) == 2
    score = sample_main(
        [
            "--checkpoint",
            str(out / "rm.pt"),
            "--prompt",
            "review: the plot was",
            "--reply",
            " great.",
        ]
    )
    assert len(score) == 1 and float(score[0]) == float(score[0])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        sample_main(["--checkpoint", str(out / "sft.pt"), "--prompt", "Review: the plöt"])
    err = capsys.readouterr().err
    assert "'R'" in err and "'ö'" in err and "outside the vocabulary" in err
    with pytest.raises(SystemExit):
        sample_main(["--checkpoint", str(out / "sft.pt"), "--prompt", "x" * 100])
    assert "context" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sample_main(["--checkpoint", str(out / "metrics.jsonl")])
    assert "corrupt or not a proximal checkpoint" in capsys.readouterr().err


def test_nan_in_a_checkpoint_stops_sampling_with_the_model_named(tiny_run, tmp_path, capsys):
    out, _ = tiny_run
    payload = torch.load(out / "sft.pt", weights_only=True)
    payload["state"]["model"]["transformer.h.0.mlp.c_fc.weight"][0, 0] = float("nan")
    torch.save(payload, tmp_path / "sft.pt")
    with pytest.raises(SystemExit):
        sample_main(["--checkpoint", str(tmp_path / "sft.pt"), "--prompt", "review: the plot was"])
    assert "policy logits contains NaN" in capsys.readouterr().err
