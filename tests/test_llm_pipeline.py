"""The pipeline and sampling CLIs on a tiny config: outputs, interruption and resume, bad input."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import llm.rlhf
from core.checkpoint import load_checkpoint
from core.metrics import read_metrics
from llm.checkpoints import load_stage
from llm.config import PRESETS, PipelineConfig, resolve
from llm.pipeline import main as pipeline_main
from llm.rlhf import evaluate_policy
from llm.sample import main as sample_main
from llm.tasks import get_task
from llm.tokenizer import CharTokenizer

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
    "--minibatch-size",
    "4",
    "--update-epochs",
    "1",
    "--eval-prompts",
    "16",
    "--no-progress",
    "--device",
    "cpu",
]
# the same settings as fields, written out by hand (not parsed back from the command line)
TINY_FIELDS = dict(
    n_layer=1, n_head=2, n_embd=32, sft_steps=40, sft_batch_size=16, sft_examples=500, rm_steps=10,
    rm_batch_size=8, rm_pairs=200, rm_eval_pairs=50, ppo_iterations=3, rollout_batch_size=8, minibatch_size=4,
    update_epochs=1, eval_prompts=16, progress=False, device="cpu",
)


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
    # the summary's figures, recomputed from the metrics file and from the checkpoint
    assert summary["kl"]["final"] == pytest.approx(sum(r["rlhf/ref_kl"] for r in ppo[-10:]) / len(ppo[-10:]))
    tok, task = CharTokenizer(), get_task("reviews")
    policy = load_stage(out / "ppo.pt", tok)[0]["policy"]
    again = evaluate_policy(policy, task, tok, 16, seed=0 + 100, device="cpu")  # the stage's prompts and seed
    assert summary["gold_reward"]["final"] == pytest.approx(again["gold_reward"])


def test_config_json_is_the_resolved_configuration(tiny_run):
    out, _ = tiny_run
    saved = json.loads((out / "config.json").read_text())
    expected = dataclasses.asdict(resolve(PipelineConfig(**TINY_FIELDS, out=str(out))))
    assert saved == expected
    # the presets filled what the command line left at None; the flags given kept their values
    assert saved["ref_kl_coef"] == PRESETS["algo"]["ppo"]["ref_kl_coef"] and saved["minibatch_size"] == 4
    assert saved["ref_kl_controller_target"] == PRESETS["task"]["reviews"]["ref_kl_controller_target"]
    assert None not in (saved["sft_steps"], saved["reward_source"], saved["ref_kl_estimator"])


def test_help_lists_the_choices_of_literal_fields(capsys):
    with pytest.raises(SystemExit) as stop:
        pipeline_main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for choices in ("{reviews,arithmetic}", "{ppo,dpo,ipo,kto,grpo,dapo,dr_grpo}", "{fixed,adaptive,proportional}",
                    "{k1,k2,k3}", "{token_mean,seq_mean,constant,minibatch_token_mean}", "{rm,gold}",
                    "--resume, --no-resume"):
        assert choices in text, choices


@pytest.mark.parametrize("args, flag", [(["--ref-kl-estimator", "k4"], "--ref-kl-estimator"),
                                        (["--algo", "rloo"], "--algo"),
                                        (["--ref-kl-controller", "pid"], "--ref-kl-controller")])
def test_a_bad_choice_is_refused_in_one_line_naming_the_flag(args, flag, capsys):
    with pytest.raises(SystemExit) as stop:
        pipeline_main([*args, "--device", "cpu"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert flag in last and "invalid choice" in last and args[1] in last


@pytest.mark.parametrize("args, says", [(["--device", "cuda"], "device 'cuda' was requested but CUDA is not available"),
                                        (["--n-embd", "30", "--n-head", "4"],
                                         "n_embd (30) must be a multiple of n_head (4)")])
def test_bad_settings_are_refused_in_one_line_before_anything_is_written(args, says, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without a GPU
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        pipeline_main([*args, "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and says in err[0], err
    assert not out.exists()


def test_interrupted_stage_keeps_earlier_checkpoints_and_resume_continues(
    tiny_run, tmp_path, monkeypatch, capsys
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
        pipeline_main([*TINY_ARGS, "--out", str(tmp_path), "--resume"])
    assert stop.value.code == 130
    assert not (tmp_path / "ppo.pt").exists()
    assert {name: (tmp_path / name).read_bytes() for name in before} == before  # intact
    monkeypatch.setattr(llm.rlhf, "ppo_update", real_update)
    capsys.readouterr()
    # --sft-lr and --rm-steps belong to the stages --resume skips; --ppo-lr to the one that runs
    summary = pipeline_main([*TINY_ARGS, "--out", str(tmp_path), "--resume", "--sft-lr", "0.01", "--rm-steps=7",
                             "--ppo-lr", "1e-4"])
    err = capsys.readouterr().err
    assert (tmp_path / "ppo.pt").is_file()
    assert {name: (tmp_path / name).read_bytes() for name in before} == before  # not retrained
    ignored = next(line for line in err.splitlines() if "ignored flags" in line)
    assert "--resume skipped sft, rm" in ignored
    names = set(ignored.split(": ", 1)[1].split(", "))
    assert {"--sft-lr", "--rm-steps", "--sft-steps", "--rm-pairs"} <= names  # named...
    assert not names & {"--ppo-lr", "--minibatch-size", "--n-embd", "--device", "--out"}  # ...and only those
    assert "resolved configuration" in err and "ppo_lr" in err  # the resolved configuration is printed
    # the skipped stages' figures are those their checkpoints recorded
    sft_meta = load_checkpoint(tmp_path / "sft.pt", kind="llm_sft")["meta"]
    rm_meta = load_checkpoint(tmp_path / "rm.pt", kind="llm_rm")["meta"]
    assert summary["seconds"]["sft"] == sft_meta["seconds"] > 0
    assert summary["rm_gold_agreement"] == rm_meta["stats"]["gold_agreement"]
    assert json.loads((tmp_path / "config.json").read_text())["ppo_lr"] == 1e-4


def test_a_run_without_ignored_flags_names_none(tiny_run, tmp_path, capsys):
    out, _ = tiny_run
    for name in ("sft.pt", "rm.pt"):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    model_and_rm = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--rm-steps", "2", "--rm-batch-size", "4",
                    "--rm-pairs", "20", "--rm-eval-pairs", "10", "--no-progress", "--device", "cpu"]
    pipeline_main([*model_and_rm, "--out", str(tmp_path), "--stage", "rm"])
    assert "ignored flags" not in capsys.readouterr().err
    pipeline_main([*model_and_rm, "--out", str(tmp_path), "--stage", "rm", "--sft-lr", "0.1"])
    assert capsys.readouterr().err.count("ignored flags (the stages run are ['rm'], and no stage that runs reads "
                                         "them): --sft-lr\n") == 1


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
    assert len(score) == 1 and math.isfinite(float(score[0]))
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
