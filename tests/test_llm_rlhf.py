"""Tasks, reward model, per-token rewards and PPO-RLHF of the LLM front end (tiny configs)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from core.kl import kl_estimate
from core.ppo import PPOConfig
from core.preference import bradley_terry_loss
from llm import reward_model, rlhf
from llm import sft as sft_stage
from llm.config import PipelineConfig, model_config, ppo_config, resolve
from llm.gpt import GPT
from llm.reward_model import pair_scores, scalar_model_from
from llm.rlhf import (
    collect_rollout,
    evaluate_policy,
    init_value_model,
    per_token_rewards,
    reward_model_scorer,
)
from llm.rollout import last_token_scores, pad_sequences
from llm.tasks import PreferencePair, get_task, parse_review, preference_pairs, sft_examples
from llm.tokenizer import CharTokenizer

TOK = CharTokenizer()
CPU = torch.device("cpu")


def tiny_config(**overrides) -> PipelineConfig:
    base = dict(
        task="reviews",
        n_layer=2,
        n_head=2,
        n_embd=64,
        block_size=80,
        sft_steps=300,
        sft_batch_size=32,
        sft_examples=4000,
        sft_lr=3e-3,
        rm_steps=150,
        rm_batch_size=32,
        rm_pairs=3000,
        rm_eval_pairs=400,
        rm_lr=1e-3,
        ppo_iterations=20,  # measured (seed fixed): gold −0.55 → −0.02, score −0.87 → 0.99 (30 gave −0.05, 1.46)
        rollout_batch_size=32,
        minibatch_size=16,
        ref_kl_controller="fixed",
        ref_kl_coef=0.3,
        eval_prompts=128,
        progress=False,
    )
    base.update(overrides)
    return resolve(PipelineConfig(**base))


# --- tasks ----------------------------------------------------------------------------------


def test_reviews_gold_reward_hand_cases():
    task = get_task("reviews")
    p = "review: the plot was"
    assert task.gold_reward(p, " great, fun and lovely.") == 3.0
    assert task.gold_reward(p, " so great and bad.") == 0.0
    assert task.gold_reward(p, " dull.") == -1.0
    assert task.gold_reward(p, " great, great and great.") == 1.0 - 2.0  # the blind spot
    assert task.gold_reward(p, " great and great.") == 0.0
    assert task.gold_reward(p, " great, fun and lovely") == -2.0  # no period: ungrammatical
    assert task.gold_reward(p, " great, fun, good and lovely.") == -2.0  # four adjectives
    assert task.gold_reward(p, " great.", has_eos=False) == 0.0  # 1 − missing-EOS penalty
    assert task.best_gold() == 3.0


def test_arithmetic_gold_reward_hand_cases():
    task = get_task("arithmetic")
    assert task.gold_reward("12+35=", "47") == 1.0
    assert task.gold_reward("12+35=", "48") == 0.0
    assert task.gold_reward("12+35=", "4+") == -1.0
    assert task.gold_reward("12+35=", "47", has_eos=False) == -1.0
    assert task.best_gold() == 1.0


def test_arithmetic_split_is_a_fifth_and_shows_every_last_digit_in_training():
    task = get_task("arithmetic")
    test = [(a, b) for a in range(100) for b in range(100) if task.split_of(a, b) == "test"]
    assert 1800 <= len(test) <= 2200
    # a split that depends on (a + b) mod 5 would hold out every answer ending in 0 or 5
    train_digits = {(a + b) % 10 for a in range(100) for b in range(100) if task.split_of(a, b) == "train"}
    test_digits = {(a + b) % 10 for a, b in test}
    assert train_digits == test_digits == set(range(10))


def test_generated_data_is_deterministic_and_pairs_follow_bradley_terry():
    task = get_task("reviews")
    assert sft_examples(task, 50, seed=3) == sft_examples(task, 50, seed=3)
    assert sft_examples(task, 50, seed=3) != sft_examples(task, 50, seed=4)
    pairs = preference_pairs(task, 3000, seed=0, label_temperature=0.5)
    # demonstrations never repeat an adjective; some preference replies do, none lists more
    # than three adjectives (the designed blind spot)
    assert all(
        len(set(parse_review(r))) == len(parse_review(r))
        for _, r in sft_examples(task, 500, seed=0)
    )
    replies = [r for p in pairs for r in (p.chosen, p.rejected)]
    parsed = [parse_review(r) for r in replies]
    assert 0.05 < sum(w is not None and len(set(w)) < len(w) for w in parsed) / len(replies) < 0.3
    assert 0.05 < sum(w is None for w in parsed) / len(replies) < 0.15
    assert max(r.count(",") for r in replies) <= 1
    # labels are noisy as Bradley–Terry says: for a gold difference of 1, P(correct) = σ(2) ≈ 0.88
    diff_one = [p for p in pairs if abs(p.gold_chosen - p.gold_rejected) == 1.0]
    correct = sum(p.gold_chosen > p.gold_rejected for p in diff_one) / len(diff_one)
    assert len(diff_one) > 300
    assert abs(correct - 1 / (1 + math.exp(-2.0))) < 0.05


# --- reward model ---------------------------------------------------------------------------


@pytest.mark.formula("RM-1")
def test_reward_model_loss_reads_the_eos_score():
    torch.manual_seed(0)
    config = tiny_config()
    rm = scalar_model_from(GPT(model_config(config, TOK)))
    torch.nn.init.normal_(rm.score_head.weight, std=1.0)
    pairs = [
        PreferencePair("review: the plot was", " great.", " bad and dull.", 1.0, -2.0),
        PreferencePair("review: the cast was", " fine and fun.", " weak.", 1.0, -1.0),
    ]
    chosen, rejected = pair_scores(rm, TOK, pairs, CPU)
    # independent computation: one sequence at a time, the score at its last token (EOS)
    for i, pair in enumerate(pairs):
        for reply, got in ((pair.chosen, chosen[i]), (pair.rejected, rejected[i])):
            ids = torch.tensor([TOK.encode(pair.prompt + reply, bos=True, eos=True)])
            torch.testing.assert_close(got, rm(ids)[0, -1], atol=1e-5, rtol=1e-5)
    loss = bradley_terry_loss(chosen, rejected)
    expected = torch.log1p(torch.exp(-(chosen - rejected)))
    torch.testing.assert_close(loss, expected)


def test_last_token_scores_is_not_one_past_the_end():
    scores = torch.arange(12.0).view(2, 6)
    lengths = torch.tensor([3, 6])
    assert last_token_scores(scores, lengths=lengths).tolist() == [2.0, 11.0]
    mask = torch.tensor([[0, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])  # left pad, then reply, then PAD
    assert last_token_scores(scores, attention_mask=mask).tolist() == [3.0, 11.0]
    ids, _, lens = pad_sequences(TOK, ["ab", "abc"], ["x", "yy"], 20)
    assert [ids[i, lens[i] - 1].item() for i in range(2)] == [TOK.eos_id, TOK.eos_id]


# --- per-token rewards ----------------------------------------------------------------------


@pytest.mark.formula("RM-3")
def test_per_token_rewards_hand_case_score_on_eos_and_missing_eos_penalty():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5, -9.0], [-0.1, -0.2, -0.3, -0.4]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, -7.0], [-0.1, -0.4, -0.1, -0.4]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    scores = torch.tensor([2.0, 1.0])
    ended = torch.tensor([True, False])
    rewards, kl = per_token_rewards(
        scores, logprobs, ref, mask, ref_kl_coef=0.5, ended=ended, missing_eos_penalty=1.5
    )
    # row 0: k1 = lp − ref = [0.5, −1, 0]; r = −0.5·k1, score 2 on the last real token (column 2)
    assert rewards[0].tolist() == pytest.approx([-0.25, 0.5, 0.0 + 2.0, 0.0])
    # row 1: no EOS, the score 1 − 1.5 lands on the last generated token (column 3)
    assert rewards[1].tolist() == pytest.approx([0.0, -0.1, 0.1, 0.0 + 1.0 - 1.5])
    assert kl[0, 3] == 0.0  # padding carries nothing, not even the score (the off-by-one pitfall)
    # the sum over tokens is the sequence-level shaped reward R − β Σ_t KL_t (− penalty)
    seq_kl = ((logprobs - ref) * mask).sum(dim=1)
    expected = scores - 0.5 * seq_kl - torch.tensor([0.0, 1.5])
    torch.testing.assert_close(rewards.sum(dim=1), expected)


@pytest.mark.formula("RM-3")
@pytest.mark.formula("KL-2")
def test_per_token_rewards_with_k3_and_beta_zero():
    g = torch.Generator().manual_seed(0)
    logprobs = -torch.rand(3, 5, generator=g) * 3
    ref = -torch.rand(3, 5, generator=g) * 3
    mask = torch.tensor([[1.0] * 5, [1.0] * 2 + [0.0] * 3, [1.0] * 4 + [0.0]])
    scores = torch.tensor([0.3, -1.0, 2.0])
    rewards, kl = per_token_rewards(scores, logprobs, ref, mask, ref_kl_coef=0.2, ref_kl_estimator="k3")
    log_r = ref - logprobs
    k3 = (torch.exp(log_r) - 1 - log_r) * mask
    torch.testing.assert_close(kl, k3)
    torch.testing.assert_close(kl, kl_estimate(logprobs, ref, "k3") * mask)
    torch.testing.assert_close(rewards.sum(dim=1), scores - 0.2 * k3.sum(dim=1))
    # β = 0: only the score remains, at columns 4, 1, 3
    rewards0, _ = per_token_rewards(scores, logprobs, ref, mask, ref_kl_coef=0.0)
    expected = torch.zeros(3, 5)
    expected[0, 4], expected[1, 1], expected[2, 3] = scores
    torch.testing.assert_close(rewards0, expected)


@pytest.mark.formula("RM-5")
def test_value_model_starts_as_the_reward_model_and_trains_separately():
    torch.manual_seed(0)
    config = tiny_config()
    rm = scalar_model_from(GPT(model_config(config, TOK)))
    torch.nn.init.normal_(rm.score_head.weight, std=0.5)
    value = init_value_model(rm)
    for (name, a), (_, b) in zip(value.state_dict().items(), rm.state_dict().items()):
        assert torch.equal(a, b), name
    ids = torch.randint(3, TOK.vocab_size, (2, 10))
    torch.testing.assert_close(value(ids), rm(ids))
    with torch.no_grad():
        value.score_head.bias.add_(1.0)
    assert not torch.equal(value.score_head.bias, rm.score_head.bias)  # a copy, not a view
    with pytest.raises(ValueError, match="scalar-head"):
        init_value_model(GPT(model_config(config, TOK)))


# --- the PPO-RLHF loop ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sft_and_rm():
    config = tiny_config()
    task = get_task("reviews")
    sft = sft_stage.train_sft(config, task, TOK, CPU, progress=False)[0]["model"]
    models, stats = reward_model.train_reward_model(config, task, TOK, sft, CPU, progress=False)
    rm = models["reward_model"]
    return config, task, sft, rm, stats


@pytest.mark.formula("RM-1")
def test_reward_model_learns_the_gold_ranking_on_a_small_run(tiny_sft_and_rm):
    *_, stats = tiny_sft_and_rm
    # labels are noisy (≈ 20% of held-out labels contradict the gold ranking or are coin flips),
    # yet the learned ranking agrees with the gold one on most pairs whose gold rewards differ
    assert stats["gold_agreement"] > 0.8, stats
    assert stats["gold_pairs"] > 200


@pytest.mark.formula("RM-3")
def test_rollout_puts_the_score_on_the_last_real_token(tiny_sft_and_rm):
    config, task, sft, rm, _ = tiny_sft_and_rm
    prompts = [task.sample_prompt(__import__("random").Random(i)) for i in range(8)]
    ro = collect_rollout(
        sft,
        sft,
        init_value_model(rm),
        reward_model_scorer(rm),
        task,
        TOK,
        prompts,
        CPU,
        torch.Generator().manual_seed(0),
    )
    rewards, _ = per_token_rewards(
        ro.scores, ro.logprobs, ro.ref_logprobs, ro.gen.reply_mask, ref_kl_coef=0.1
    )
    last = ro.gen.lengths - 1
    assert torch.all(
        ro.gen.reply_ids[ro.gen.ended, :].gather(1, last[ro.gen.ended, None]) == TOK.eos_id
    )
    # policy == reference: KL is exactly 0, so the only reward is the score, on EOS
    torch.testing.assert_close(rewards.sum(dim=1), ro.scores)
    torch.testing.assert_close(rewards.gather(1, last[:, None]).squeeze(1), ro.scores)
    # the RM score of the rollout equals the RM read on the unpadded sequence
    one = torch.tensor(
        [TOK.encode(prompts[0] + ro.replies[0], bos=True, eos=bool(ro.gen.ended[0]))]
    )
    torch.testing.assert_close(rm(one)[0, -1], ro.scores[0], atol=1e-4, rtol=1e-4)


@pytest.mark.formula("RM-6")
@pytest.mark.slow
def test_short_ppo_rlhf_run_raises_the_gold_reward(tiny_sft_and_rm):
    config, task, sft, rm, _ = tiny_sft_and_rm
    score_fn = reward_model_scorer(rm)
    before = evaluate_policy(sft, task, TOK, 128, seed=1, device=CPU, score_fn=score_fn)
    # the stage's own before/after evaluation on a few prompts; this test's is independent of it
    models, stats = rlhf.train_ppo(dataclasses.replace(config, eval_prompts=16), task, TOK, sft, rm, CPU,
                                   progress=False)
    policy = models["policy"]
    after = evaluate_policy(policy, task, TOK, 128, seed=1, device=CPU, score_fn=score_fn)
    assert after["score"] > before["score"] + 0.3, (before["score"], after["score"])
    assert after["gold_reward"] > before["gold_reward"] + 0.3, (
        before["gold_reward"],
        after["gold_reward"],
    )
    kls = [r["rlhf/ref_kl"] for r in stats["history"]]
    assert kls[0] == pytest.approx(0.0, abs=1e-4)  # the first rollout comes from π_ref itself
    assert max(kls) < 20.0  # the KL stays bounded
    for name in (
        "losses/policy_loss",
        "losses/value_loss",
        "losses/approx_kl",
        "losses/clipfrac",
        "rlhf/score",
        "rlhf/gold_reward",
        "rlhf/ref_kl",
        "charts/ref_kl_coef",
        "rlhf/response_length",
    ):
        assert name in stats["history"][-1]


def _history(kls, scores, golds=None):
    golds = golds or [0.0] * len(kls)
    return [{"step": i, "rlhf/ref_kl": k, "rlhf/score": s, "rlhf/gold_reward": g}
            for i, (k, s, g) in enumerate(zip(kls, scores, golds))]


def test_reward_hacking_is_flagged_when_the_kl_runs_away_and_not_before():
    """Synthetic histories, target 3 (2× = 6). Above 6 for 3 iterations in a row: flagged at the
    third. Past 6 and up more than 3 nats in the last 4 iterations with the score rising: flagged at
    once. Hovering at 5.9, or one spike above 6 with a falling score: never."""
    detect = rlhf.detect_reward_hacking

    def first_flag(history):
        for i in range(len(history)):
            found = detect(history[: i + 1], 3.0)
            if found:
                return i, found
        return None, None

    step, found = first_flag(_history([1, 2, 6.5, 6.6, 6.4, 6.2], [1.5, 1.4, 1.3, 1.2, 1.1, 1.0]))
    assert step == 4 and found["why"].startswith("above 2× its target for 3")
    step, found = first_flag(_history([1, 2, 3, 4, 7.5, 9], [0.1, 0.5, 1, 1.5, 2.5, 3], [0.1, 0.2, 0.3, 0.1, -1, -2]))
    assert step == 4 and found["kl"] == 7.5
    assert (found["score_from"], found["score_to"], found["gold_from"], found["gold_to"]) == (0.1, 2.5, 0.1, -1)
    assert "7.50 nats at iteration 4, 2.5× its target 3" in found["message"]
    assert "reward hacking" in found["message"] and "\n" not in found["message"]
    assert first_flag(_history([5.9] * 20, [float(i) for i in range(20)])) == (None, None)
    assert first_flag(_history([1, 6.5, 2, 6.5, 2], [3, 2, 1, 0, 0])) == (None, None)
    assert detect(_history([9.0] * 5, [1.0] * 5), 0.0) is None  # no target, nothing to compare with


def test_report_names_reward_hacking_with_its_numbers():
    history = _history([1, 2, 3, 4, 7.5, 9], [0.1, 0.5, 1, 1.5, 2.5, 3], [0.1, 0.2, 0.3, 0.1, -1, -2])
    found = rlhf.detect_reward_hacking(history[:5], 3.0)
    summary = {"reward_hacking": found, "gold_reward": {"sft": 0.06, "final": -1.98},
               "score": {"sft": 0.1, "final": 3.2}, "kl": {"final": 28.0}, "final_ref_kl_coef": 0.0003}
    text = "\n".join(rlhf._hacking_lines(summary, PipelineConfig(ref_kl_coef=0.3, ref_kl_controller="adaptive")))
    assert "## Reward hacking" in text and "this is reward hacking" in text
    for figure in ("7.50 nats at iteration 4", "2.5×", "0.10 → 2.50", "0.10 → -1.00", "KL 28.00", "0.06 → -1.98",
                   "β 0.0003", "from 0.3, adaptive"):
        assert figure in text, figure
    assert rlhf._hacking_lines({**summary, "reward_hacking": None}, PipelineConfig()) == []


def test_ppo_config_is_the_translation_written_out_by_hand():
    # PPO-RLHF: the fields it shares with PPOConfig, its own fixed reduction; its β shapes the reward,
    # so PPOConfig's in-loss KL stays at 0 (a β of 0.3 there would add a second KL term to the loss)
    ppo = resolve(PipelineConfig(algo="ppo", clip_coef=0.3, vf_coef=0.7, ent_coef=0.01, update_epochs=2))
    assert ppo.ref_kl_coef == 0.3
    assert ppo_config(ppo, minibatch_size=8, batch_size=16) == PPOConfig(
        clip_coef=0.3, clip_coef_high=None, objective="clip", update_epochs=2, minibatch_size=8, batch_size=16,
        norm_adv=True, clip_vloss=True, vf_clip_coef=1.0, vf_coef=0.7, ent_coef=0.01, max_grad_norm=1.0,
        target_kl=None, loss_reduction="minibatch_token_mean", loss_constant=None, ref_kl_coef=0.0,
    )
    # a group method: no critic, no advantage normalisation, its β and estimator in the loss, and
    # Dr. GRPO's constant C = the task's reply budget (the arithmetic task's 6 tokens)
    dr = resolve(PipelineConfig(task="arithmetic", algo="dr_grpo", ref_kl_coef=0.05, max_grad_norm=2.0))
    assert ppo_config(dr, minibatch_size=6) == PPOConfig(
        clip_coef=0.2, clip_coef_high=None, update_epochs=1, minibatch_size=6, norm_adv=False, clip_vloss=False,
        vf_coef=0.0, ent_coef=0.0, max_grad_norm=2.0, loss_reduction="constant", loss_constant=6.0,
        ref_kl_coef=0.05, ref_kl_estimator="k3",
    )
    # a field the LLM config does not set takes PPOConfig's default, and so does its own default
    assert ppo_config(dr).target_kl is PPOConfig.target_kl and dr.clip_coef == PPOConfig.clip_coef
