"""Lesson 11 — RLHF with PPO: shaped rewards, a value model from the reward model, the loop.

What it teaches
    PPO-RLHF scores a sampled reply once, at its end, with the reward model, and charges every
    token for its distance from the reference model: r_t = −β(log π_θ − log π_ref)_t, plus the
    score on the last real token (EOS), minus a penalty when the reply never ended. The tokens'
    rewards add up to note 001's shaped reward r′ = R_φ − β·KL. The value model starts as a copy
    of the reward model and learns the expected shaped return of each partial reply; GAE over
    tokens turns rewards and values into advantages, and the PPO update of lessons 6 and 9 does
    the rest. One turn of that loop is taken apart here, then a tiny language model runs it for
    a couple of dozen iterations: the reward model's score and the hidden gold reward go up, the
    KL to the reference goes up with them, and β answers the KL. The value model earns its place
    by lowering the variance of the policy gradient.

Notes followed
    001_883a2028b23f6fee.txt (PPO for LLMs): "这一步也被称为shape reward": r′(x,y) = R_φ(x,y) − β KL(π_θ ‖
        π_base), the KL penalty like a brake (刹车); the advantage (优势函数) A(x,y) = r′(x,y) − V_ψ(x)
        with V_ψ as a baseline (基线); the whole loop (整个循环) in five steps.
    002_c297ee72da052b00.txt (PPO paper notes): "PPO for LLM post-training": sparse reward
        (一整个答案才给一个 reward) against dense reward (每个 token), and "clip + KL penalty 一起用"
        (clip and KL together).
    004_27c6b9375ccb306e.txt (PG to GRPO): "PPO的下半场": the four models (Policy, Reference, Reward,
        Value Model); "VM实际上是为了减少RM计算过程中的高方差来进行的,因此实际上参数是从RM上进行初始化的"
        (the value model is initialised from the reward model; erratum E6 on what its variance
        reduction is for); "PPO过程是怎么进行训练的": policy and value model optimised together
        in each ppo_epoch.

Formula IDs: RM-3, RM-5, RM-6. Check the note: E6 (the value model lowers the variance of the policy gradient).

Run:  python -m lessons run 11 [--step] [--long]
    The real run is `python -m llm.pipeline` (about 25 minutes on two CPU cores); llm/README.md
    shows its results and the same PPO without the KL term.

Deviations from the papers
    A character-level GPT of 2 layers × 32 channels (4 layers × 144 in `llm.pipeline`; --long
    uses 2 × 64), trained from scratch on generated reviews, with a reward model trained for 120
    steps; 24 PPO iterations of 32 replies (--long: 60 of 64). The policy learning rate is 1e-4
    (3e-5 in the pipeline) so that a few iterations show movement; at this rate and size the
    policy soon misspells words the reward model does not punish. β is adaptive (TR-3) from 0.2
    with a target of 2 nats, held for the first 5 iterations. Everything else is the pipeline's
    PPO: one optimiser over policy and value model, λ = 0.95, γ = 1, clipped value loss.
"""

FORMULAS = ("RM-3", "RM-5", "RM-6")

# %% Setup: the tiny configuration of the language-model pipeline
import copy
import random

import torch

from core.advantages import gae
from core.diagnostics import explained_variance
from core.kl import kl_estimate
from core.ppo import ppo_update
from lessons._common import Lesson, plt, say, table
from llm.config import PipelineConfig, ppo_config, resolve
from llm.gpt import disable_dropout
from llm.optim import adamw
from llm.reward_model import train_reward_model
from llm.rlhf import (
    collect_rollout,
    evaluate_policy,
    init_value_model,
    make_evaluate,
    per_token_rewards,
    reward_model_scorer,
    train_ppo,
)
from llm.rollout import reply_logprobs, reply_values
from llm.sft import train_sft
from llm.tasks import get_task
from llm.tokenizer import CharTokenizer

lesson = Lesson(__doc__)
CPU = torch.device("cpu")
TOK = CharTokenizer()
TASK = get_task("reviews")
CONFIG = resolve(PipelineConfig(
    task="reviews", seed=lesson.seed, device="cpu", progress=False,
    n_layer=2, n_head=2, n_embd=64 if lesson.long else 32,
    sft_steps=600 if lesson.long else 400, sft_batch_size=32, sft_examples=4000, sft_lr=6e-3,
    rm_steps=200 if lesson.long else 120, rm_batch_size=32, rm_pairs=3000, rm_eval_pairs=400, rm_lr=1e-3,
    ppo_iterations=60 if lesson.long else 24, rollout_batch_size=64 if lesson.long else 32, minibatch_size=16,
    ppo_lr=1e-4, ref_kl_controller="adaptive", ref_kl_coef=0.2, ref_kl_controller_target=2.0, ref_kl_warmup=5,
    eval_prompts=128,
))


def show(text: str, width: int = 34) -> str:
    return repr(text) if len(repr(text)) <= width else repr(text)[: width - 1] + "…"


# %% Step 1 — RM-3: per-token rewards, by hand
lesson.step("The shaped reward, token by token (shape reward, note 001; dense vs sparse, note 002)",
            "r_t = −β·KL_t,   KL_t = log π_θ(y_t|·) − log π_ref(y_t|·)   on every reply token t",
            "r_T += R_φ(x, y) − penalty·[no EOS]   on the last real token T (EOS when there is one)",
            "Σ_t r_t = R_φ(x, y) − β Σ_t KL_t (− penalty)  =  r′(x, y) of note 001",
            ids=["RM-3"])
BETA, PENALTY = 0.2, 2.0
logprobs = torch.tensor([[-0.9, -2.3, -0.2, -0.1, 0.0, 0.0],  # 4 tokens, the 4th is EOS
                         [-1.2, -0.4, -3.0, -0.5, -0.7, -1.1],  # 6 tokens, budget used up, no EOS
                         [-0.3, -0.05, 0.0, 0.0, 0.0, 0.0]])  # 2 tokens, the 2nd is EOS
ref_logprobs = torch.tensor([[-1.0, -1.1, -0.3, -0.1, 0.0, 0.0],
                             [-1.0, -0.6, -1.5, -0.9, -0.7, -1.4],
                             [-0.4, -0.05, 0.0, 0.0, 0.0, 0.0]])
mask = torch.tensor([[1.0, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]])
scores = torch.tensor([1.5, 0.8, -0.5])  # R_φ(x, y), read on each reply's last real token
ended = torch.tensor([True, False, True])
rewards, kl = per_token_rewards(scores, logprobs, ref_logprobs, mask, ref_kl_coef=BETA, ended=ended,
                                missing_eos_penalty=PENALTY)
rows = []
for i in range(3):
    rows.append([f"reply {i}: KL_t", *(kl[i] + 0.0).tolist()])  # + 0.0 prints padding's −0.0 as 0.0
    rows.append(["         r_t", *(rewards[i] + 0.0).tolist()])
table(["", *[f"t={t}" for t in range(6)]], rows, digits=3)
lengths = mask.sum(1).long()
rows = []
for i in range(3):
    expected = float(scores[i]) - BETA * float(kl_estimate(logprobs[i], ref_logprobs[i]) @ mask[i]) \
        - PENALTY * (not bool(ended[i]))
    rows.append([i, int(lengths[i]), "yes" if ended[i] else "no", float(scores[i]), float(kl[i].sum()),
                 float(rewards[i].sum()), expected, int(lengths[i]) - 1])
table(["reply", "length", "EOS", "R_φ", "Σ KL_t", "Σ r_t", "R − βΣKL − pen.", "score column"], rows, digits=3)
# The pitfall: put the score one column further, at `length` (the first PAD), and the mask erases it.
wrong = -BETA * kl
for i in (0, 2):
    wrong[i, lengths[i]] += scores[i]
say(f"β = {BETA}, missing-EOS penalty {PENALTY}. The score sits on column length − 1, the last real token.",
    "Had it gone to column `length` (the first PAD, a known off-by-one), the mask would erase it: Σ r_t of",
    f"replies 0 and 2 would be {[round(float(v), 3) for v in (wrong * mask).sum(1)[[0, 2]]]} instead of",
    f"{[round(float(v), 3) for v in rewards.sum(1)[[0, 2]]]}. Reply 1 never ended: its score is lowered by the",
    "penalty, or the policy could learn never to stop. Sparse (note 002): the score arrives once, at the",
    "end. Dense: the KL term says at every token how far that token moved from π_ref. The sum is the same",
    "shaped reward r′ either way. Reply 0's Σ KL_t is negative: KL_t is the k1 estimate on the sampled",
    "tokens (lesson 8), below 0 wherever π_θ gave a token less probability than π_ref; only its",
    "expectation, the KL, is never negative.", blank=True)
shaping_gap = max(abs(r[5] - r[6]) for r in rows)
erased = float(((wrong * mask).sum(1)[[0, 2]] - rewards.sum(1)[[0, 2]]).abs().min())
lesson.verdict("Σ r_t = R_φ − βΣKL_t − penalty for every reply; a score one column too far would be erased by the mask",
               shaping_gap < 1e-5 and erased > 1e-3,
               f"largest gap {shaping_gap:.0e} < 1e-5; the misplaced score changes Σ r_t by ≥ {erased:.3f}")

# %% Step 2 — the models: SFT policy (= π_ref) and the reward model R_φ
lesson.step("Policy, reference and reward model (PPO的下半场, note 004)",
            "π_ref = the SFT model (frozen);  π_θ starts as a copy of it;",
            "R_φ = the SFT body with a scalar head, trained by −log σ(R_φ(x,y⁺) − R_φ(x,y⁻))  (lesson 10)")
sft_models, sft_stats = train_sft(CONFIG, TASK, TOK, CPU, progress=False)
sft = sft_models["model"]
rm_models, rm_stats = train_reward_model(CONFIG, TASK, TOK, sft, CPU, progress=False)
reward_model = rm_models["reward_model"]
score_fn = reward_model_scorer(reward_model)
n_params = sft.num_params()
before = evaluate_policy(sft, TASK, TOK, CONFIG.eval_prompts, seed=1, device=CPU, score_fn=score_fn)
say(f"SFT: {CONFIG.sft_steps} steps, {n_params:,} parameters, final loss {sft_stats['final_loss']:.3f}",
    f"({sft_stats['seconds']:.0f} s). Reward model: {CONFIG.rm_steps} steps × {CONFIG.rm_batch_size} pairs",
    f"({rm_stats['seconds']:.0f} s); on {rm_stats['gold_pairs']} held-out pairs it agrees with the gold ranking on",
    f"{rm_stats['gold_agreement']:.1%} (label accuracy {rm_stats['label_accuracy']:.1%}; the labels are noisy).",
    f"The SFT policy on {CONFIG.eval_prompts} test prompts: mean R_φ {before['score']:.3f}, mean gold",
    f"{before['gold_reward']:.3f} (best reachable {TASK.best_gold():.0f}). A few of its replies:")
print()
table(["prompt", "SFT reply", "gold"],
      [[p, show(r), g] for (p, r), g in list(zip(before["samples"], before["golds"]))[:4]], digits=1)

# %% Step 3 — RM-5: the value model starts as the reward model
lesson.step("The value model, initialised from the reward model (参数是从RM上进行初始化的, note 004)",
            ids=["RM-5"])
value_model = init_value_model(reward_model)
differences = [float((a - b).abs().max()) for a, b in
               zip(value_model.state_dict().values(), reward_model.state_dict().values())]
rng = random.Random(lesson.seed)
probe = collect_rollout(sft, sft, value_model, score_fn, TASK, TOK, [TASK.sample_prompt(rng) for _ in range(8)],
                        CPU, lesson.generator(3))
with torch.no_grad():
    same = float((value_model(probe.gen.input_ids, attention_mask=probe.gen.attention_mask)
                  - reward_model(probe.gen.input_ids, attention_mask=probe.gen.attention_mask)).abs().max())
say(f"{len(differences)} tensors, largest weight difference {max(differences):.1e}; on 8 sampled replies",
    f"the outputs differ by at most {same:.1e}. A copy, not a view: the value model trains, the reward",
    "model stays frozen.")
lesson.verdict("The value model starts as an exact copy of the reward model", max(differences) == 0 and same < 1e-5,
               f"largest weight difference {max(differences):.0e}, largest output difference {same:.0e}")
ended = probe.gen.ended
i = int(((probe.gen.lengths - 12).abs() + 100 * (~ended)).argmin())  # an ended reply of about 12 tokens
n = int(probe.gen.lengths[i])
chars = [TOK.decode([t], stop_at_eos=False) if t != TOK.eos_id else "EOS" for t in probe.gen.reply_ids[i, :n].tolist()]
print(f"\n    One reply, {probe.prompts[i]!r} →{probe.replies[i]!r}, R_φ = {float(probe.scores[i]):.3f}:")
table(["token", *[repr(c) for c in chars]], [["V_ψ(x, y_<t)", *[float(probe.values[i, t]) for t in range(n)]]],
      digits=2)
values_i = probe.values[i, :n]
say("At the start V_ψ is the reward model read on each partial reply. As a prediction of the final score it",
    f"is poor: along the reply it swings between {float(values_i.min()):.2f} and {float(values_i.max()):.2f} while "
    f"the score is {float(probe.scores[i]):.2f}, and only",
    f"near the end, where the prefix is almost the whole reply, comes close ({float(values_i[-1]):.2f}). The reward",
    "model was trained on whole replies that end in EOS, not on prefixes. What it brings is a body that",
    "already tells good words from bad ones; PPO trains it toward the shaped return (steps 4 and 7 measure",
    "how good a baseline it is).", blank=True)

# %% Step 4 — RM-6: one turn of the loop, piece by piece
lesson.step("One turn of the loop (整个循环, note 001)", ids=["RM-6"])
policy = disable_dropout(copy.deepcopy(sft))
ref = disable_dropout(copy.deepcopy(sft)).requires_grad_(False).eval()
critic = init_value_model(reward_model)
optimizer = adamw([{"params": policy.parameters()}, {"params": critic.parameters(), "lr": CONFIG.value_lr}],
                  CONFIG.ppo_lr)  # one optimiser, two learning rates
ppo = ppo_config(CONFIG)  # the pipeline's PPOConfig: clip, value clip, minibatch token mean
prompts = [TASK.sample_prompt(rng) for _ in range(CONFIG.rollout_batch_size)]


def stage(text, where):
    print(f"    {text:<70} {where}")


stage("1. sample prompts x and replies y ∼ π_θ(·|x)", "llm.rlhf.collect_rollout")
ro = collect_rollout(policy, ref, critic, score_fn, TASK, TOK, prompts, CPU, lesson.generator(4))
reply_mask = ro.gen.reply_mask
print(f"       {len(prompts)} replies, mean length {float(reply_mask.sum(1).mean()):.1f} tokens, "
      f"{float(ro.gen.ended.float().mean()):.0%} ended with EOS; e.g. {ro.replies[0]!r}")
stage("2. score with R_φ and shape with the KL", "llm.rlhf.per_token_rewards")
rewards, kl = per_token_rewards(ro.scores, ro.logprobs, ro.ref_logprobs, reply_mask, ref_kl_coef=CONFIG.ref_kl_coef,
                                ended=ro.gen.ended, missing_eos_penalty=CONFIG.missing_eos_penalty)
print(f"       mean R_φ {float(ro.scores.mean()):.3f}; mean Σ_t KL_t {float(kl.sum(1).mean()):.3f} "
      f"(π_θ is still π_ref);")
print(f"       mean Σ_t r_t {float(rewards.sum(1).mean()):.3f} (R_φ, less the missing-EOS penalty of the replies "
      "that did not end)")
stage("3. estimate A with V_ψ: GAE over tokens, γ = 1, λ = 0.95", "core.advantages.gae")
advantages = gae(rewards, ro.values, gamma=CONFIG.gamma, gae_lambda=CONFIG.gae_lambda, mask=reply_mask)
returns = advantages + ro.values
real = reply_mask.bool()
print(f"       Â: mean {float(advantages[real].mean()):+.3f}, std {float(advantages[real].std()):.3f}; "
      f"explained variance of V_ψ: {float(explained_variance(ro.values, returns, reply_mask)):.3f} (below 0: "
      "worse than a constant)")
stage("4. PPO epochs on minibatches (clip, value loss; policy and critic)", "core.ppo.ppo_update")
batch = {"input_ids": ro.gen.input_ids, "attention_mask": ro.gen.attention_mask, "actions": ro.gen.reply_ids,
         "logprobs": ro.logprobs, "advantages": advantages, "returns": returns, "values": ro.values,
         "mask": reply_mask}
stats = ppo_update(make_evaluate(policy, critic), batch, optimizer, ppo, generator=lesson.generator(5))
print(f"       {stats['ppo/epochs']:.0f} epochs × {stats['ppo/minibatches'] / stats['ppo/epochs']:.0f} minibatches: "
      f"policy loss {stats['losses/policy_loss']:+.4f}, value loss {stats['losses/value_loss']:.4f}, "
      f"approx_kl {stats['losses/approx_kl']:.4f}, clipfrac {stats['losses/clipfrac']:.3f}")
stage("5. new samples from the updated π_θ, and round again", "llm.rlhf.collect_rollout")
ro2 = collect_rollout(policy, ref, critic, score_fn, TASK, TOK, prompts, CPU, lesson.generator(4))
_, kl2 = per_token_rewards(ro2.scores, ro2.logprobs, ro2.ref_logprobs, ro2.gen.reply_mask,
                           ref_kl_coef=CONFIG.ref_kl_coef)
print(f"       the same prompts: mean R_φ {float(ro2.scores.mean()):.3f}, mean Σ_t KL_t {float(kl2.sum(1).mean()):.3f}")
lesson.verdict("After one update the policy has left π_ref", float(kl2.sum(1).mean()) > float(kl.sum(1).mean()) + 1e-3,
               f"mean Σ_t KL_t {float(kl.sum(1).mean()):.3f} → {float(kl2.sum(1).mean()):.3f}")
say("Four models (note 004): π_θ and V_ψ train, π_ref and R_φ are frozen. llm.rlhf.train_ppo runs this",
    "loop, and after each turn updates β from the measured KL (TR-3, lesson 5).", blank=True)

# %% Step 5 — RM-6: the loop for a few dozen iterations
lesson.step("The loop: score and gold reward up, KL bounded",
            "iterate: sample → r_t → GAE with V_ψ → PPO epochs → β from the KL", ids=["RM-6"])
ppo_models, run = train_ppo(CONFIG, TASK, TOK, sft, reward_model, CPU, progress=False)
policy, critic = ppo_models["policy"], ppo_models["value"]
history = run["history"]
every = max(1, len(history) // 8)
shown = sorted(set(range(0, len(history), every)) | {len(history) - 1})
table(["iteration", "R_φ (rlhf/score)", "gold", "KL to π_ref", "β", "Σ r_t", "expl. var.", "length"],
      [[it, history[it]["rlhf/score"], history[it]["rlhf/gold_reward"], history[it]["rlhf/ref_kl"],
        history[it]["charts/ref_kl_coef"], history[it]["rlhf/shaped_return"], history[it]["losses/explained_variance"],
        history[it]["rlhf/response_length"]] for it in shown], digits=3)
after = evaluate_policy(policy, TASK, TOK, CONFIG.eval_prompts, seed=1, device=CPU, score_fn=score_fn)
say(f"{len(history)} iterations × {CONFIG.rollout_batch_size} replies in {run['seconds']:.0f} s. On the same",
    f"{CONFIG.eval_prompts} test prompts, sampled at temperature 1:", blank=True)
print()
table(["", "mean R_φ", "mean gold", "EOS rate"],
      [["SFT policy (π_ref)", before["score"], before["gold_reward"], before["eos_rate"]],
       ["after PPO", after["score"], after["gold_reward"], after["eos_rate"]]], digits=3)
print()
table(["prompt", "SFT reply", "gold", "after PPO", "gold"],
      [[p, show(r0), g0, show(r1), g1] for (p, r0), g0, (_, r1), g1 in
       list(zip(before["samples"], before["golds"], after["samples"], after["golds"]))[:6]], digits=1)
lesson.verdict("PPO-RLHF raises the reward model's score and the gold reward on the test prompts",
               after["score"] > before["score"] and after["gold_reward"] > before["gold_reward"],
               f"R_φ {before['score']:.2f} → {after['score']:.2f}, gold {before['gold_reward']:.2f} → "
               f"{after['gold_reward']:.2f}")
say(f"R_φ rose by {after['score'] - before['score']:.2f} and the gold reward by",
    f"{after['gold_reward'] - before['gold_reward']:.2f}. Where the two part, the reward model is wrong (it is",
    "small and saw few pairs) and the policy is drawn to its mistakes; the KL term holds that back. β follows",
    f"the KL: halved when it falls below {CONFIG.ref_kl_controller_target:g}/1.5, doubled above 1.5 × "
    f"{CONFIG.ref_kl_controller_target:g} nats",
    "(every 3rd iteration, after a warm-up). `python -m llm.pipeline` is the full-size run; llm/README.md",
    "shows it, and the same run with β = 0, where the score keeps rising while the gold reward collapses.",
    blank=True)

iterations = range(len(history))
fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
axes[0].plot(iterations, [h["rlhf/score"] for h in history], label="R_φ (reward model)")
axes[0].plot(iterations, [h["rlhf/gold_reward"] for h in history], label="gold reward")
axes[0].set_title("mean reward of the sampled replies")
axes[0].legend(fontsize=8)
axes[1].plot(iterations, [h["rlhf/ref_kl"] for h in history], color="C2")
axes[1].axhline(CONFIG.ref_kl_controller_target, ls="--", color="gray", label="target KL")
axes[1].set_title("KL to π_ref per reply (nats)")
axes[1].legend(fontsize=8)
axes[2].step(iterations, [h["charts/ref_kl_coef"] for h in history], where="post", color="C3")
axes[2].set_title("β (adaptive, TR-3)")
for ax in axes:
    ax.set_xlabel("PPO iteration")
fig.suptitle("RM-6: PPO-RLHF on a tiny language model")
lesson.save(fig, "ppo_rlhf.png")

# %% Step 6 — RM-3 on a real reply after training
lesson.step("Where the KL is paid: one reply of the trained policy, token by token", ids=["RM-3"])
prompts = [TASK.sample_prompt(rng) for _ in range(128 if lesson.long else 64)]
ro = collect_rollout(policy, sft, critic, score_fn, TASK, TOK, prompts, CPU, lesson.generator(6))
reply_mask = ro.gen.reply_mask
rewards, kl = per_token_rewards(ro.scores, ro.logprobs, ro.ref_logprobs, reply_mask,
                                ref_kl_coef=history[-1]["charts/ref_kl_coef"],
                                ended=ro.gen.ended, missing_eos_penalty=CONFIG.missing_eos_penalty)
advantages = gae(rewards, ro.values, gamma=CONFIG.gamma, gae_lambda=CONFIG.gae_lambda, mask=reply_mask)
seq_kl = kl.sum(1)
typical = (seq_kl - seq_kl.median()).abs() + 1e9 * (~ro.gen.ended)  # an ended reply with the median KL
i = int(typical.argmin())
n = int(ro.gen.lengths[i])
chars = [TOK.decode([t], stop_at_eos=False) if t != TOK.eos_id else "EOS" for t in ro.gen.reply_ids[i, :n].tolist()]
print(f"    {ro.prompts[i]!r} →{ro.replies[i]!r}   R_φ = {float(ro.scores[i]):.3f}, "
      f"β = {history[-1]['charts/ref_kl_coef']:.3g}")
table(["t", "token", "log π_θ", "log π_ref", "KL_t", "r_t", "V_ψ", "Â_t"],
      [[t, repr(chars[t]), float(ro.logprobs[i, t]), float(ro.ref_logprobs[i, t]), float(kl[i, t]),
        float(rewards[i, t]), float(ro.values[i, t]), float(advantages[i, t])] for t in range(n)], digits=3)
say(f"Σ_t r_t = {float(rewards[i].sum()):.3f} = R_φ − β Σ_t KL_t = {float(ro.scores[i]):.3f} −",
    f"{history[-1]['charts/ref_kl_coef']:.3g} × "
    f"{float(kl[i].sum()):.3f} (a reply with the median KL of {len(prompts)}).",
    "The KL is paid where the policy changed its mind, at the tokens where log π_θ and log π_ref differ",
    "most: those are the choices PPO made. Â_t is what the value model did not see coming; before EOS",
    f"the trained V_ψ expects {float(ro.values[i, n - 1]):.2f}, against the score {float(ro.scores[i]):.2f} that "
    "arrives there.", blank=True)
eos_gap = abs(float(ro.values[i, n - 1] - ro.scores[i]))
sum_gap = abs(float(rewards[i].sum()) - (float(ro.scores[i]) - history[-1]["charts/ref_kl_coef"] * float(kl[i].sum())))
lesson.verdict("Σ_t r_t = R_φ − βΣ_t KL_t for this reply, and before EOS the trained V_ψ is close to the score",
               sum_gap < 1e-4 and eos_gap < 0.5, f"gap {sum_gap:.0e}; |V_ψ − R_φ| before EOS = {eos_gap:.2f} < 0.5")

# %% Step 7 — check the note: what does the value model's variance reduction reduce?
lesson.step("Check the note: the value model and variance (减少方差, note 004)",
            "ĝ_i = Σ_t Ψ_t ∇_θ log π_θ(y_t | x, y_<t)   one estimate per reply i, with Ψ_t one of",
            "  G_t = Σ_{l≥t} r_l                  no value model (the reward-to-go)",
            "  G_t − V_ψ(x, y_<t)                 V_ψ as a baseline, at the start (= R_φ) or trained",
            "  Â_t = GAE(λ = 0.95) with V_ψ        what PPO uses (lesson 7)")
initial_critic = init_value_model(reward_model)
with torch.no_grad():
    values_at_start = reply_values(initial_critic, ro.gen.input_ids, ro.gen.attention_mask, reply_mask.shape[1])
    rescored = score_fn(ro.gen, ro.prompts, ro.replies)
reward_to_go = gae(rewards, torch.zeros_like(rewards), gamma=1.0, gae_lambda=1.0, mask=reply_mask)  # G_t
psis = {
    "G_t (no V_ψ)": reward_to_go,
    "G_t − V_ψ, V_ψ = copy of R_φ": (reward_to_go - values_at_start) * reply_mask,
    "G_t − V_ψ, V_ψ trained": (reward_to_go - ro.values) * reply_mask,
    "GAE Â_t, V_ψ trained": advantages,
}
params = list(policy.parameters())
rows, variance = [], {}
for name, psi in psis.items():
    grads = []
    for row in range(len(prompts)):  # one gradient estimate per reply
        logp, _ = reply_logprobs(policy, ro.gen.input_ids[row:row + 1], ro.gen.attention_mask[row:row + 1],
                                 ro.gen.reply_ids[row:row + 1])
        g = torch.autograd.grad((logp * psi[row:row + 1] * reply_mask[row:row + 1]).sum(), params)
        grads.append(torch.cat([x.flatten() for x in g]))
    grads = torch.stack(grads)  # (replies, parameters)
    variance[name] = float(grads.var(0).sum())
    rows.append([name, float(psi[reply_mask.bool()].std()), variance[name], variance[name] / variance["G_t (no V_ψ)"]])
table(["Ψ_t", "std of Ψ over tokens", "Var[ĝ_i] (sum over θ)", "relative"], rows, digits=3)
names = list(psis)
start_share = variance[names[1]] / variance[names[0]]
say(f"{len(prompts)} replies of the trained policy, the same replies in every row. The trained value model",
    f"as a baseline keeps {variance[names[2]] / variance[names[0]]:.0%} of the variance, and GAE",
    f"{variance[names[3]] / variance[names[0]]:.0%} (at the price of some bias, lesson 7). Its starting point,",
    "the reward model read on partial replies,",
    f"keeps {start_share:.0%}: a head start on what is good, not yet a baseline." if start_share <= 1 else
    f"raises it to {start_share:.0%}: as a baseline it is worse than none until it is trained.", blank=True)
lesson.verdict("The trained value model as a baseline lowers the variance of the policy gradient, and GAE lowers it "
               "further", variance[names[3]] < variance[names[2]] < variance[names[0]],
               f"relative variance {variance[names[2]] / variance[names[0]]:.0%} (baseline), "
               f"{variance[names[3]] / variance[names[0]]:.0%} (GAE)")
lesson.check_note(
    "E6",
    evidence=[
        f"Scoring the same {len(prompts)} replies twice with R_φ gives the same numbers (largest difference "
        f"{float((rescored - ro.scores).abs().max()):.1e}): the reward model is a deterministic function; there is "
        "no variance in its computation to reduce.",
        f"Var[ĝ_i] of the policy gradient: {variance[names[0]]:,.0f} from the reward-to-go alone, "
        f"{variance[names[2]]:,.0f} with the trained value model as a baseline, which leaves the expected gradient "
        "unchanged (lesson 2: a baseline that does not depend on the action keeps it).",
        f"The variance comes from sampling: which tokens were drawn, what they cost in KL, and a score spread of "
        f"{float(ro.scores.std()):.2f} across replies. V_ψ predicts the expected return of each partial reply, so "
        "the weight keeps only the surprise.",
    ],
    conclusion="The value model lowers the variance of the policy-gradient estimate, not of the reward model. "
               "Initialising it from R_φ (RM-5) gives it a head start on what is good; training makes it a "
               "baseline.",
    holds=float((rescored - ro.scores).abs().max()) < 1e-6 and variance[names[2]] < variance[names[0]],
    measured=f"rescoring differs by {float((rescored - ro.scores).abs().max()):.0e}; Var[ĝ_i] "
             f"{variance[names[0]]:,.0f} → {variance[names[2]]:,.0f} with the trained V_ψ",
)

# %%
lesson.done()
