"""DPO, IPO and KTO training (llm/preference.py) on a tiny config: learning, the pipeline stage and
its outputs, sequence log-probs against a per-token loop, and bad input."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from core.config import field_docs
from core.metrics import read_metrics
from llm.checkpoints import STAGE_KINDS, load_stage
from llm.config import PRESETS, PipelineConfig, PreferenceArgs, resolve
from llm.pipeline import main as pipeline_main
from llm.preference import batched_logps, check_pairs, held_out_accuracy, kl_scorer, sequence_logps, train_preference
from llm.rollout import decode_replies, encode_prompts, generate
from llm.sample import main as sample_main
from llm.tasks import PreferencePair, get_task, preference_pairs
from llm.tokenizer import CharTokenizer

formula = pytest.mark.formula

# the tiny model of tests/test_llm_pipeline.py (1 layer, 32 channels), and a short preference stage
TINY_MODEL = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32"]
TINY_ARGS = [
    *TINY_MODEL,
    "--sft-steps",
    "40",
    "--sft-batch-size",
    "16",
    "--sft-examples",
    "500",
    "--pref-steps",
    "4",
    "--pref-batch-size",
    "8",
    "--pref-pairs",
    "64",
    "--pref-eval-pairs",
    "32",
    "--pref-eval-every",
    "2",
    "--eval-prompts",
    "16",
    "--no-progress",
    "--device",
    "cpu",
]
TOK = CharTokenizer()
TASK = get_task("reviews")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_sft(tmp_path_factory):
    """One tiny SFT run shared by every test here: (run folder, SFT model)."""
    out = tmp_path_factory.mktemp("pref-run")
    pipeline_main([*TINY_ARGS, "--algo", "dpo", "--stage", "sft", "--out", str(out)])
    models, _ = load_stage(out / "sft.pt", TOK, kind=STAGE_KINDS["sft"])
    return out, models["model"]


def tiny_config(**overrides) -> PipelineConfig:
    base = dict(
        n_layer=1,
        n_head=2,
        n_embd=32,
        device="cpu",
        progress=False,
        pref_batch_size=16,
        pref_pairs=64,
        pref_eval_pairs=16,
        pref_eval_every=1000,  # the curve is not under test here: evaluate at the start and end only
        eval_prompts=8,
    )
    return resolve(PipelineConfig(**{**base, **overrides}))


# ------------------------------------------------------------------------------------------------
# learning
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "algo, first_loss, min_accuracy",
    [
        pytest.param("dpo", math.log(2.0), 0.9, marks=formula("DP-1")),  # −log σ(0)
        pytest.param("ipo", (1 / (2 * 0.5)) ** 2, 0.9, marks=formula("DP-2")),  # (0 − 1/(2τ))², τ = 0.5
        pytest.param("kto", 0.5, 0.75, marks=formula("DP-3")),  # λ − λ σ(0) with z₀ = 0, λ = 1
    ],
)
def test_training_ranks_the_training_pairs(tiny_sft, algo, first_loss, min_accuracy):
    """At the start π_θ = π_ref, so every log-ratio is 0: the loss takes its value at h = 0 (z₀ = 0)
    and no pair is ranked (accuracy 0, all ties). After 40 steps over 64 training pairs the implicit
    reward must rank the chosen reply first on at least 90% of them for DPO and IPO, 75% for KTO
    (which sees each reply alone, never the pair, and half as many replies per step), and the mean
    loss of the last 4 steps must be below 80% of the first. Measured with seeds 0–3: DPO and IPO
    0.98–1.0, KTO 0.81–0.94; last losses 3–10% (DPO, IPO) and 36–51% (KTO) of the first."""
    _, sft = tiny_sft
    config = tiny_config(algo=algo, tau=0.5, pref_steps=40, pref_lr=3e-3)
    pairs = preference_pairs(TASK, 64, seed=config.seed + 10)
    models, stats = train_preference(config, TASK, TOK, sft, CPU, out=None, progress=False, log=None, pairs=pairs)
    policy = models["policy"]
    losses = [r["pref/loss"] for r in stats["history"] if "pref/loss" in r]
    assert losses[0] == pytest.approx(first_loss, abs=1e-4)
    assert sum(losses[-4:]) / 4 < 0.8 * first_loss
    ref = sft.eval()
    prompts = [p.prompt for p in pairs]
    ref_chosen = batched_logps(ref, TOK, prompts, [p.chosen for p in pairs], CPU)
    ref_rejected = batched_logps(ref, TOK, prompts, [p.rejected for p in pairs], CPU)
    assert held_out_accuracy(ref, TOK, pairs, ref_chosen, ref_rejected, CPU)["accuracy"] == 0.0  # all ties
    trained = held_out_accuracy(policy, TOK, pairs, ref_chosen, ref_rejected, CPU)
    assert trained["accuracy"] >= min_accuracy, trained
    summary = stats
    assert set(summary["gold_reward"]) == {"sft", "final", "best"} and summary["gold_reward"]["best"] == 3.0
    assert summary["kl"]["target"] is None and math.isfinite(summary["kl"]["final"])
    assert 0.0 <= summary["preference"]["held_out_accuracy"] <= 1.0


@pytest.mark.parametrize("algo, peak", [("dpo", 1e-4), ("ipo", 2e-4), ("kto", 2e-4)])
def test_each_method_trains_at_its_preset_learning_rate(tiny_sft, algo, peak):
    """pref_lr left at None takes the method's preset (DPO 1e-4, IPO and KTO 2e-4) and reaches
    the optimiser: the first two steps of the 20-step linear warm-up run at peak·1/20 and
    peak·2/20 (worked by hand), as logged; a value given is kept."""
    _, sft = tiny_sft
    config = tiny_config(algo=algo, pref_steps=2)
    assert config.pref_lr == peak
    _, stats = train_preference(config, TASK, TOK, sft, CPU, out=None, progress=False, log=None)
    logged = [r["charts/learning_rate"] for r in stats["history"] if "charts/learning_rate" in r]
    assert logged == pytest.approx([peak / 20, 2 * peak / 20], rel=1e-12)
    assert tiny_config(algo=algo, pref_lr=3e-3).pref_lr == 3e-3


def test_kl_is_zero_at_the_reference_and_matches_sequence_logprobs(tiny_sft):
    """rlhf/ref_kl on sampled replies (left-padded generation layout) is the mean of the same
    log π_θ − log π_ref that the trainer computes on right-padded rows; 0 when π_θ = π_ref."""
    _, sft = tiny_sft
    policy = type(sft)(sft.config).eval()
    policy.load_state_dict(sft.state_dict())
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    prompts = ["review: the plot was", "review: the cast was", "review: the music was"] * 3
    ids, mask = encode_prompts(TOK, prompts, sft.config.block_size, TASK.max_new_tokens, CPU)
    gen = generate(
        policy,
        ids,
        mask,
        max_new_tokens=TASK.max_new_tokens,
        eos_id=TOK.eos_id,
        pad_id=TOK.pad_id,
        generator=torch.Generator().manual_seed(0),
    )
    replies = decode_replies(TOK, gen)
    ended = gen.ended
    with torch.no_grad():
        k1 = kl_scorer(policy, sft)(gen, prompts, replies)  # (B,)
        same = kl_scorer(sft, sft)(gen, prompts, replies)
        # rows whose text encodes back to the sampled ids (a tiny model may sample BOS or PAD inside
        # a reply, which decoding drops)
        rows = [
            i
            for i in range(len(prompts))
            if ended[i] and TOK.encode(replies[i], eos=True) == gen.reply_ids[i, : int(gen.lengths[i])].tolist()
        ]
        expected = sequence_logps(policy, TOK, [prompts[i] for i in rows], [replies[i] for i in rows], CPU)
        expected -= sequence_logps(sft, TOK, [prompts[i] for i in rows], [replies[i] for i in rows], CPU)
    assert torch.equal(same, torch.zeros_like(same))
    assert len(rows) >= 3
    torch.testing.assert_close(k1[rows], expected, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------------
# sequence log-probs (IS-2)
# ------------------------------------------------------------------------------------------------


@formula("IS-2")
def test_sequence_logps_equal_a_per_token_loop(tiny_sft):
    """log π(y|x) of a right-padded batch = Σ over the reply tokens and EOS of log π(y_t | x, y_<t),
    each computed alone from the unpadded prefix."""
    _, sft = tiny_sft
    prompts = ["review: the plot was", "review: the dialogue was", "review: the cast was"]
    replies = [" great.", " so dull, fine and lovely.", " okay and bad."]
    batched = sequence_logps(sft, TOK, prompts, replies, CPU)  # (3,)
    for i, (prompt, reply) in enumerate(zip(prompts, replies)):
        head = TOK.encode(prompt, bos=True)
        ids = head + TOK.encode(reply, eos=True)
        total = 0.0
        with torch.no_grad():
            for t in range(len(head), len(ids)):  # every reply token, EOS included
                logits = sft(torch.tensor([ids[:t]]))[0, -1]  # (V,)
                total += F.log_softmax(logits, dim=-1)[ids[t]].item()
        assert batched[i].item() == pytest.approx(total, abs=1e-4)


# ------------------------------------------------------------------------------------------------
# the pipeline stage
# ------------------------------------------------------------------------------------------------


def test_pipeline_stage_on_an_existing_run_writes_a_sampleable_checkpoint(tiny_sft, capsys):
    out, _ = tiny_sft
    sft_bytes = (out / "sft.pt").read_bytes()
    summary = pipeline_main([*TINY_ARGS, "--algo", "dpo", "--stage", "dpo", "--out", str(out)])
    for name in ("dpo.pt", "dpo.png", "metrics-dpo.jsonl"):
        assert (out / name).is_file(), name
    assert (out / "sft.pt").read_bytes() == sft_bytes  # reused, not retrained
    assert any("sft/loss" in r for r in read_metrics(out / "metrics.jsonl"))  # SFT's curve kept apart, intact
    assert summary["algo"] == "dpo" and summary["seconds"]["dpo"] > 0
    assert set(summary["gold_reward"]) == {"sft", "final", "best"}
    assert summary["kl"]["target"] is None and summary["kl"]["final"] is not None
    assert "held_out_accuracy" in summary["preference"]
    records = read_metrics(out / "metrics-dpo.jsonl")
    train_records = [r for r in records if "pref/loss" in r]
    evals = [r for r in records if "rlhf/ref_kl" in r]
    assert len(train_records) == 4 and [r["step"] for r in evals] == [0, 2, 4]
    assert evals[0]["rlhf/ref_kl"] == pytest.approx(0.0, abs=1e-4)  # π_θ = π_ref before the first step
    for name in ("pref/margin", "pref/chosen_reward", "pref/rejected_reward", "pref/accuracy"):
        assert name in train_records[-1]
    for name in ("rlhf/gold_reward", "rlhf/response_length"):
        assert name in evals[-1]
    lines = sample_main(["--checkpoint", str(out / "dpo.pt"), "--prompt", "review: the plot was", "--num-samples", "2"])
    assert len(lines) == 2

    # another β with a tag: its own checkpoint, plot and metrics; the untagged ones untouched
    before = {name: (out / name).read_bytes() for name in ("dpo.pt", "dpo.png", "metrics-dpo.jsonl")}
    pipeline_main([*TINY_ARGS, "--algo", "dpo", "--stage", "dpo", "--out", str(out), "--ref-kl-coef", "3",
                   "--tag", "b3"])
    for name in ("dpo-b3.pt", "dpo-b3.png", "metrics-dpo-b3.jsonl"):
        assert (out / name).is_file(), name
    assert {name: (out / name).read_bytes() for name in before} == before
    assert json.loads((out / "config-dpo-b3.json").read_text())["ref_kl_coef"] == 3.0
    assert json.loads((out / "config-dpo.json").read_text())["ref_kl_coef"] == PRESETS["algo"]["dpo"]["ref_kl_coef"]
    capsys.readouterr()


def test_kto_stage_logs_its_reference_point(tiny_sft, tmp_path):
    out, _ = tiny_sft
    (tmp_path / "sft.pt").write_bytes((out / "sft.pt").read_bytes())
    summary = pipeline_main([*TINY_ARGS, "--algo", "kto", "--stage", "kto", "--out", str(tmp_path)])
    assert (tmp_path / "kto.pt").is_file() and (tmp_path / "kto.png").is_file()
    records = [r for r in read_metrics(tmp_path / "metrics-kto.jsonl") if "pref/loss" in r]
    assert all(r["pref/kto_z0"] >= 0 for r in records)
    assert records[0]["pref/kto_z0"] == pytest.approx(0.0, abs=1e-5)  # π_θ = π_ref: the KL estimate is 0
    assert summary["preference"]["algo"] == "kto"


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("side, value", [("chosen", None), ("rejected", ""), ("chosen", "")])
def test_a_pair_with_a_missing_side_is_refused_with_its_index(tiny_sft, side, value):
    pairs = preference_pairs(TASK, 8, seed=3)
    broken = list(pairs)
    broken[5] = dataclasses.replace(broken[5], **{side: value})
    with pytest.raises(ValueError, match=rf"pairs\[5\] has no {side} reply"):
        check_pairs(broken)
    _, sft = tiny_sft
    with pytest.raises(ValueError, match=rf"pairs\[5\] has no {side} reply"):
        train_preference(tiny_config(algo="dpo", pref_batch_size=4), TASK, TOK, sft, CPU, progress=False, pairs=broken)
    with pytest.raises(ValueError, match="no prompt"):
        check_pairs([PreferencePair(None, " good.", " bad.", 1.0, -1.0)])


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("ref_kl_coef", 0.0, r"ref_kl_coef \(β of DPO's implicit reward\) must be > 0, got 0.0"),
        ("ref_kl_coef", -0.5, r"ref_kl_coef \(β\) must be ≥ 0, got -0.5"),
        ("tau", 0.0, r"tau must be > 0, got 0.0"),
        ("tau", -1.0, r"tau must be > 0, got -1.0"),
        ("pref_lr", 0.0, "pref_lr must be > 0"),
        ("pref_steps", 0, "pref_steps must be ≥ 1"),
        ("kto_undesirable_weight", 0.0, "kto_undesirable_weight must be > 0"),
    ],
)
def test_bad_hyperparameters_are_refused_naming_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        PipelineConfig(algo="dpo", **{field: value})


def test_bad_hyperparameters_on_the_command_line(capsys):
    with pytest.raises(SystemExit):
        pipeline_main(["--algo", "ipo", "--tau", "0"])
    assert "tau must be > 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pipeline_main(["--algo", "kto", "--ref-kl-coef", "0"])
    assert "ref_kl_coef (β of KTO's implicit reward) must be > 0" in capsys.readouterr().err
    assert resolve(PipelineConfig(algo="ipo")).ref_kl_coef is None  # IPO has no β: its τ is `tau`
    with pytest.raises(ValueError, match="pref_pairs"):
        PipelineConfig(algo="dpo", pref_pairs=8, pref_batch_size=16)


def test_every_preference_setting_has_a_docstring_for_the_command_line():
    docs = field_docs(PipelineConfig)
    names = [f.name for f in dataclasses.fields(PreferenceArgs)]
    assert {"ref_kl_coef", "tau", "pref_steps", "kto_desirable_weight"} <= set(names)
    assert all(docs.get(name) for name in names), [name for name in names if not docs.get(name)]
