"""GRPO, DAPO and Dr. GRPO (llm.group) on tiny configs: no reference model at β = 0, no all-equal
group after dynamic sampling, the loss against a plain loop, learning, the pipeline stage, bad input."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch

from core.group import group_advantages, informative_groups
from core.kl import kl_estimate
from core.metrics import read_metrics
from core.ppo import Evaluation, ppo_update
from llm import group
from llm.checkpoints import load_stage
from llm.config import PRESETS, PipelineConfig, model_config, ppo_config, resolve
from llm.gpt import GPT
from llm.pipeline import main as pipeline_main
from llm.rollout import Generation, reply_logprobs
from llm.sample import main as sample_main
from llm.tasks import get_task
from llm.tokenizer import CharTokenizer

formula = pytest.mark.formula

TINY_MODEL = dict(n_layer=1, n_head=2, n_embd=32, device="cpu", progress=False)
TINY_GROUP = dict(group_prompts=4, group_size=4, minibatch_size=8, group_iterations=2, group_eval_every=1,
                  group_eval_prompts=8)
TINY_ARGS = [
    "--task", "arithmetic", "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--sft-steps", "30",
    "--sft-batch-size", "16", "--sft-examples", "300", "--group-prompts", "4", "--group-size", "4",
    "--minibatch-size", "8", "--group-iterations", "3", "--group-eval-every", "2",
    "--group-eval-prompts", "8", "--no-progress", "--device", "cpu",
]


def tiny_config(algo: str, **overrides) -> PipelineConfig:
    fields = {**TINY_MODEL, **TINY_GROUP, **overrides}
    return resolve(PipelineConfig(task="arithmetic", algo=algo, stage=algo, **fields))


@pytest.fixture(scope="module")
def tok():
    return CharTokenizer()


@pytest.fixture(scope="module")
def task():
    return get_task("arithmetic")


def random_model(config, tok) -> GPT:
    torch.manual_seed(0)
    return GPT(model_config(config, tok)).eval()


# ---------------------------------------------------------------------------------------------
# DR-2: β = 0 builds and runs no reference model
# ---------------------------------------------------------------------------------------------


@formula("DR-2")
@pytest.mark.parametrize("algo, beta, models_built", [("dr_grpo", None, 1), ("dapo", None, 1), ("grpo", None, 2),
                                                      ("dr_grpo", 0.1, 2)])
def test_zero_kl_coefficient_builds_no_reference_model(algo, beta, models_built, tok, task, tmp_path, monkeypatch):
    config = tiny_config(algo, group_iterations=1, ref_kl_coef=beta)
    sft = random_model(config, tok)
    built = []
    real_init = GPT.__init__

    def counting_init(self, *args, **kwargs):
        built.append(1)
        real_init(self, *args, **kwargs)

    sft_calls = []
    real_forward = sft.forward

    def counting_forward(*args, **kwargs):
        sft_calls.append(1)
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(GPT, "__init__", counting_init)
    monkeypatch.setattr(sft, "forward", counting_forward)
    _, stats = group.train_group(config, task, tok, sft, torch.device("cpu"), tmp_path, progress=False)
    # the policy is a copy of the SFT model; a reference is a second copy, built only when β > 0,
    # and the SFT model itself never runs (it cannot stand in for a reference unnoticed)
    assert len(built) == models_built
    assert sft_calls == []
    assert (config.ref_kl_coef == 0) == (models_built == 1)
    assert (stats["kl"]["final"] is None) == (models_built == 1)
    assert group.build_reference(sft, 0.0) is None


# ---------------------------------------------------------------------------------------------
# DA-2: dynamic sampling keeps only groups whose rewards differ
# ---------------------------------------------------------------------------------------------


@formula("DA-2")
def test_dynamic_sampling_batch_never_holds_an_all_equal_group(tok, task):
    """A stand-in checker rewards a reply whose first character has an even code: an untrained
    model's first characters are close to uniform, so a group of 3 is all-equal a quarter of the
    time without the filter."""

    class ParityTask(type(task)):
        def gold_reward(self, prompt, reply, has_eos=True):
            return float(len(reply) > 0 and ord(reply[0]) % 2 == 0)

    parity = ParityTask()
    config = tiny_config("dapo", group_prompts=6, group_size=3, sampling_rounds=3, overlong_cache=0)
    plain = dataclasses.replace(config, dynamic_sampling=False)
    policy = random_model(config, tok)
    generator = torch.Generator().manual_seed(0)
    uniform_without, kept, sampled = 0, 0, 0
    for seed in range(4):
        gb = group.collect_groups(policy, parity, tok, config, random.Random(seed), "cpu", generator)
        assert bool(informative_groups(gb.rewards).all())
        assert gb.rewards.shape == (6, 3)  # three rounds were enough to fill the batch
        # the rows of the batch are the kept groups' replies: rescoring them gives the same rewards
        replies = [tok.decode(row) for row in gb.gen.reply_ids]
        rescored, _ = group.reply_rewards(parity, gb.prompts, replies, gb.gen, config)
        assert torch.equal(rescored.view(-1, 3), gb.rewards)
        assert all(len(set(gb.prompts[i : i + 3])) == 1 for i in range(0, 18, 3))
        kept += gb.sampled["kept_groups"]
        sampled += gb.sampled["groups"]
        without = group.collect_groups(policy, parity, tok, plain, random.Random(seed), "cpu", generator)
        uniform_without += int((~informative_groups(without.rewards)).sum())
    assert uniform_without > 0, "the check needs all-equal groups to occur without the filter"
    assert kept == 24 and sampled > kept  # some groups were dropped to fill every batch


def test_groups_from_several_rounds_keep_their_log_probs_when_stacked(tok, task):
    """Rounds of dynamic sampling have different prompt and reply widths; stacking them pads
    prompts on the left and replies on the right, which must not change any log-prob."""
    config = tiny_config("dapo")
    policy = random_model(config, tok)
    g = torch.Generator().manual_seed(0)
    first = group.sample_groups(policy, task, tok, ["1+2="], 2, "cpu", g)  # short prompt
    second = group.sample_groups(policy, task, tok, ["12+34=", "99+9="], 2, "cpu", g)
    stacked = group._concat([first, second], tok.pad_id)
    assert stacked.prompt_ids.shape[0] == 6
    with torch.no_grad():
        parts = [reply_logprobs(policy, gen.input_ids, gen.attention_mask, gen.reply_ids)[0] * gen.reply_mask
                 for gen in (first, second)]
        together = reply_logprobs(policy, stacked.input_ids, stacked.attention_mask, stacked.reply_ids)[0]
    together = together * stacked.reply_mask
    for rows, part in ((slice(0, 2), parts[0]), (slice(2, 6), parts[1])):
        torch.testing.assert_close(together[rows, : part.shape[1]], part, rtol=1e-5, atol=1e-5)
        assert float(together[rows, part.shape[1]:].abs().sum()) == 0.0


@formula("DA-4")
def test_overlong_penalty_is_added_to_the_checkers_reward(tok, task):
    config = tiny_config("dapo")  # L_max 6, L_cache 2
    assert (config.overlong_max, config.overlong_cache) == (6, 2)
    replies = ["47", "470", "4700", "47000"]  # 3..6 tokens with EOS; the last one is cut off
    lengths = [3, 4, 5, 6]
    reply_mask = torch.tensor([[1.0] * n + [0.0] * (6 - n) for n in lengths])
    gen = Generation(torch.ones(4, 1, dtype=torch.long), torch.ones(4, 1, dtype=torch.long),
                     torch.zeros(4, 6, dtype=torch.long), reply_mask, torch.tensor([True, True, True, False]))
    rewards, correct = group.reply_rewards(task, ["12+35="] * 4, replies, gen, config)
    assert rewards.tolist() == [1.0, 0.0, -0.5, -2.0]  # checker 1, 0, 0, −1 (no EOS); penalty 0, 0, −½, −1
    assert correct.tolist() == [True, False, False, False]


def test_an_empty_group_is_refused_by_core():
    with pytest.raises(ValueError, match="at least one group"):
        informative_groups(torch.zeros(0, 4))
    with pytest.raises(ValueError, match="at least 2 replies"):
        group_advantages(torch.zeros(3, 0))


# ---------------------------------------------------------------------------------------------
# The loss of each method against a plain loop over replies and tokens
# ---------------------------------------------------------------------------------------------


def hand_generation() -> Generation:
    """Two prompts × G = 3 replies of lengths 1–4 (EOS counted), one cut off without EOS."""
    lengths = [1, 3, 4, 2, 4, 2]
    B, R = len(lengths), 4
    reply_mask = torch.zeros(B, R)
    for i, n in enumerate(lengths):
        reply_mask[i, :n] = 1.0
    ended = torch.tensor([True, True, False, True, True, True])
    reply_ids = (torch.arange(B * R).view(B, R) % 10 + 5) * reply_mask.long()
    return Generation(torch.ones(B, 2, dtype=torch.long), torch.ones(B, 2, dtype=torch.long), reply_ids, reply_mask,
                      ended)


def loop_objective(new, old, ref, rewards, lengths, ended, config, C):
    """J of GR-2 / DA-3 / DR-1 written out reply by reply and token by token."""
    P, G = rewards.shape
    advantages = []
    for p in range(P):
        r = [float(x) for x in rewards[p]]
        mean = sum(r) / G
        std = math.sqrt(sum((x - mean) ** 2 for x in r) / (G - 1))
        for x in r:
            advantages.append((x - mean) / (std + 1e-4) if config.scale_by_std else x - mean)
    per_reply, n_tokens = [], 0
    for i, n in enumerate(lengths):
        if config.mask_truncated and not ended[i]:
            n = 0
        total = 0.0
        for t in range(n):
            ratio = torch.exp(new[i, t] - old[i, t])
            clipped = torch.clamp(ratio, 1 - config.clip_coef, 1 + (config.clip_coef_high or config.clip_coef))
            term = torch.minimum(ratio * advantages[i], clipped * advantages[i])
            if config.ref_kl_coef > 0:
                log_r = ref[i, t] - new[i, t]
                term = term - config.ref_kl_coef * (torch.exp(log_r) - 1 - log_r)
            total = total + term
        per_reply.append((total, n))
        n_tokens += n
    B = len(lengths)
    if config.loss_reduction == "seq_mean":
        return sum(total / max(n, 1) for total, n in per_reply) / B
    if config.loss_reduction == "token_mean":
        return sum(total for total, _ in per_reply) / n_tokens
    return sum(total for total, _ in per_reply) / (B * C)


@formula("GR-2")
@formula("DA-3")
@formula("DR-1")
@pytest.mark.parametrize("algo, mask_truncated", [("grpo", False), ("dapo", False), ("dapo", True),
                                                  ("dr_grpo", False)])
def test_each_methods_loss_equals_a_loop_over_replies_and_tokens(algo, mask_truncated, task):
    config = tiny_config(algo, mask_truncated=mask_truncated)
    gen = hand_generation()
    lengths = [int(n) for n in gen.reply_mask.sum(1)]
    g = torch.Generator().manual_seed(1)
    old = torch.randn(6, 4, generator=g) - 1.0  # (B, R) log π_old
    ref = old + 0.3 * torch.randn(6, 4, generator=g)  # (B, R) log π_ref
    start = old + 0.4 * torch.randn(6, 4, generator=g)  # ratios inside and outside the clip range
    rewards = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 1.0]])  # (P, G)
    new = torch.nn.Parameter(start.clone())

    def evaluate(mb):
        return Evaluation(new[mb["rows"]], torch.zeros_like(new[mb["rows"]]), None)  # no critic

    batch = group.build_batch(gen, rewards, old, ref if config.ref_kl_coef > 0 else None, config)
    batch["rows"] = torch.arange(6)
    # one minibatch of all six replies (8 > 6 rows), one epoch: the loss is computed once; no grad clip
    ppo = ppo_config(config, minibatch_size=6, max_grad_norm=1e9)
    assert ppo.minibatch_size == 6 and ppo.update_epochs == 1
    optimizer = torch.optim.SGD([new], lr=0.0)
    stats = ppo_update(evaluate, batch, optimizer, ppo)

    expected = -loop_objective(new, old, ref, rewards, lengths, gen.ended.tolist(), config, task.max_new_tokens)
    loss = stats["losses/policy_loss"] + config.ref_kl_coef * stats.get("losses/ref_kl", 0.0)
    assert loss == pytest.approx(float(expected.detach()), rel=1e-5, abs=1e-6)
    grad = new.grad.clone()
    new.grad = None
    expected.backward()
    torch.testing.assert_close(grad, new.grad, rtol=1e-5, atol=1e-7)
    if config.ref_kl_coef > 0:
        assert stats["losses/ref_kl"] > 0
        assert config.ref_kl_estimator == "k3"
        torch.testing.assert_close(kl_estimate(torch.zeros(1), torch.zeros(1), "k3"), torch.zeros(1))


# ---------------------------------------------------------------------------------------------
# Learning, the pipeline stage and bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ["grpo", "dapo", "dr_grpo"])
def test_a_short_run_raises_the_training_reward(algo, tiny_sft, tok, task, tmp_path):
    """The tiny SFT model mostly writes malformed or unfinished replies (reward −1, and DAPO's
    overlong penalty); 20 iterations with fixed seeds teach it to answer with digits and EOS.
    Tolerance: the mean reward of the last three iterations must beat that of the first three by
    at least 0.3 (it rises by 0.6–1.0 on this seed)."""
    config = tiny_config(algo, group_iterations=20, group_prompts=8, group_size=8, minibatch_size=32,
                         group_lr=3e-3, group_warmup=0, group_eval_every=100)
    sft = load_stage(tiny_sft / "sft.pt", tok)[0]["model"]
    _, stats = group.train_group(config, task, tok, sft, torch.device("cpu"), tmp_path, progress=False)
    rewards = [r["group/train_reward"] for r in stats["history"] if "group/train_reward" in r]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.3, rewards


@pytest.fixture(scope="module")
def tiny_sft(tmp_path_factory):
    out = tmp_path_factory.mktemp("llm-group")
    pipeline_main([*TINY_ARGS, "--algo", "grpo", "--stage", "sft", "--out", str(out)])
    return out


def test_pipeline_stage_writes_a_checkpoint_llm_sample_can_load(tiny_sft, tok, capsys):
    out = tiny_sft
    sft_bytes = (out / "sft.pt").read_bytes()
    summary = pipeline_main([*TINY_ARGS, "--algo", "grpo", "--stage", "grpo", "--out", str(out)])
    assert (out / "sft.pt").read_bytes() == sft_bytes  # reused, not retrained
    for name in ("grpo.pt", "grpo.png", "metrics-grpo.jsonl"):
        assert (out / name).is_file(), name
    assert summary["algo"] == "grpo" and summary["seconds"]["grpo"] > 0
    assert set(summary["accuracy"]) >= {"sft", "final"}
    assert 0.0 <= summary["accuracy"]["final"] <= 1.0
    assert summary["gold_reward"]["best"] == 1.0
    records = [r for r in read_metrics(out / "metrics-grpo.jsonl") if "group/train_reward" in r]
    assert len(records) == 3
    for name in ("rlhf/ref_kl", "rlhf/response_length", "losses/policy_loss", "losses/entropy", "losses/clipfrac",
                 "losses/approx_kl", "group/wrong_length", "group/dropped_share", "group/truncated_share"):
        assert name in records[-1], name
    # held-out accuracy before iterations 0 and 2 (every 2) and after the last one
    accuracy = [(r["step"], r["group/accuracy"]) for r in read_metrics(out / "metrics-grpo.jsonl")
                if "group/accuracy" in r]
    assert [step for step, _ in accuracy] == [0, 2, 3]
    assert accuracy[0][1] == summary["accuracy"]["sft"] and accuracy[-1][1] == summary["accuracy"]["final"]
    models, meta = load_stage(out / "grpo.pt", tok)
    assert set(models) == {"policy"} and meta["stats"]["settings"]["loss_reduction"] == "seq_mean"
    capsys.readouterr()
    lines = sample_main(["--checkpoint", str(out / "grpo.pt"), "--prompt", "12+35=", "--num-samples", "2"])
    assert len(lines) == 2


def test_tagged_stage_keeps_its_own_outputs(tiny_sft):
    out = tiny_sft
    summary = pipeline_main([*TINY_ARGS, "--algo", "dr_grpo", "--stage", "dr_grpo", "--tag", "t1", "--out", str(out)])
    for name in ("dr_grpo-t1.pt", "dr_grpo-t1.png", "metrics-dr_grpo-t1.jsonl"):
        assert (out / name).is_file(), name
    assert not (out / "dr_grpo.pt").exists()
    assert summary["kl"]["final"] is None and summary["settings"]["loss_reduction"] == "constant"


@pytest.mark.parametrize("args, message", [
    (["--group-size", "1"], "group_size must be ≥ 2, got 1: a group of one reply has no relative advantage"),
    (["--clip-coef", "0.3", "--clip-coef-high", "0.2"],
     "clip_coef_high (ε_high = 0.2) must be ≥ clip_coef (ε_low = 0.3)"),
    (["--ref-kl-coef", "-0.1"], "ref_kl_coef (β) must be ≥ 0, got -0.1"),
    (["--ref-kl-estimator", "k4"], "argument --ref-kl-estimator: invalid choice: 'k4'"),
    (["--loss-reduction", "sum"], "argument --loss-reduction: invalid choice: 'sum'"),
    (["--overlong-cache", "8", "--overlong-max", "6"], "overlong_cache (8) must be ≤ overlong_max (6)"),
    (["--update-epochs", "0"], "update_epochs must be ≥ 1, got 0"),
])
def test_bad_settings_are_refused_with_the_field_named(args, message, capsys):
    with pytest.raises(SystemExit) as stop:
        pipeline_main([*TINY_ARGS, "--algo", "grpo", *args])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_a_per_method_default_that_conflicts_is_refused_when_resolved(capsys):
    # DAPO's ε_high preset 0.28 is below an ε_low of 0.3 given on its own
    with pytest.raises(ValueError, match=r"clip_coef_high \(ε_high = 0.28\) must be ≥ clip_coef \(ε_low = 0.3\)"):
        tiny_config("dapo", clip_coef=0.3)
    with pytest.raises(SystemExit) as stop:  # on the command line: one line, exit 2
        pipeline_main([*TINY_ARGS, "--algo", "dapo", "--clip-coef", "0.3"])
    assert stop.value.code == 2 and "clip_coef_high (ε_high = 0.28)" in capsys.readouterr().err
    # a symmetric method follows a larger ε (core.ppo: no clip_coef_high is a symmetric clip)
    grpo = tiny_config("grpo", clip_coef=0.3)
    assert grpo.clip_coef_high is None and ppo_config(grpo, minibatch_size=8).clip_coef_high is None
    with pytest.raises(ValueError, match="for llm.group"):
        group.train_group(resolve(PipelineConfig(task="arithmetic", algo="ppo")), None, None, None, None)


def test_per_method_defaults(task):
    grpo, dapo, dr = (tiny_config(a) for a in ("grpo", "dapo", "dr_grpo"))
    assert (grpo.loss_reduction, dapo.loss_reduction, dr.loss_reduction) == ("seq_mean", "token_mean", "constant")
    assert (grpo.scale_by_std, dapo.scale_by_std, dr.scale_by_std) == (True, True, False)
    assert (grpo.ref_kl_coef > 0, dapo.ref_kl_coef, dr.ref_kl_coef) == (True, 0.0, 0.0)
    assert grpo.ref_kl_estimator == "k3"
    assert (grpo.clip_coef, grpo.clip_coef_high, dapo.clip_coef, dapo.clip_coef_high) == (0.2, None, 0.2, 0.28)
    assert (grpo.dynamic_sampling, dapo.dynamic_sampling, dr.dynamic_sampling) == (False, True, False)
    assert dapo.overlong_cache > 0 and dapo.overlong_max == task.max_new_tokens and grpo.overlong_cache == 0
    assert (grpo.update_epochs, grpo.minibatch_size) == (1, 8)  # the preset's epochs; the minibatch given


def test_the_preset_table_sets_each_field_in_one_place_and_resolve_fills_only_none():
    task_fields = {name for preset in PRESETS["task"].values() for name in preset}
    algo_fields = {name for preset in PRESETS["algo"].values() for name in preset}
    assert not task_fields & algo_fields  # a field's preset depends on the task or on the method, not both
    fields = {f.name: f for f in dataclasses.fields(PipelineConfig)}
    assert all(fields[name].default is None for name in task_fields | algo_fields)  # "None: the preset's value"
    given = PipelineConfig(task="arithmetic", algo="grpo", ref_kl_coef=0.5, sft_steps=7)
    resolved = resolve(given)
    assert (resolved.ref_kl_coef, resolved.sft_steps) == (0.5, 7)  # what was given is kept
    assert resolved.loss_reduction == PRESETS["algo"]["grpo"]["loss_reduction"]
    assert resolve(resolved) == resolved  # idempotent
