"""The PPO update: it learns (a contextual bandit, a two-token language task with masks), it
keeps KL in band with the adaptive penalty, and it refuses bad input by name."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.advantages import gae
from core.checks import NonFiniteError
from core.kl import AdaptiveKLController
from core.ppo import Evaluation, PPOConfig, ppo_loss, ppo_update

formula = pytest.mark.formula

REWARDS = torch.tensor([  # contexts × actions; the best action differs per context
    [0.0, 1.0, 0.2, 0.0],
    [0.5, 0.0, 0.0, 1.0],
    [1.0, 0.3, 0.0, 0.1],
])


class BanditPolicy(torch.nn.Module):
    def __init__(self, n_contexts=3, n_actions=4):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.zeros(n_contexts, n_actions))
        self.values = torch.nn.Parameter(torch.zeros(n_contexts))

    def evaluate(self, mb):
        logp_all = F.log_softmax(self.logits[mb["obs"]], -1)  # (B, A)
        logp = logp_all.gather(1, mb["actions"][:, None]).squeeze(1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        return Evaluation(logp, entropy, self.values[mb["obs"]])


def bandit_batch(policy, g, n=512, device="cpu"):
    contexts = torch.randint(0, 3, (n,), generator=g)
    with torch.no_grad():
        probs = F.softmax(policy.logits[contexts.to(device)], -1).cpu()
        actions = torch.multinomial(probs, 1, generator=g).squeeze(1)
        rewards = REWARDS[contexts, actions] + 0.1 * torch.randn(n, generator=g)
        contexts, actions, rewards = contexts.to(device), actions.to(device), rewards.to(device)
        values = policy.values[contexts]
        logp = F.log_softmax(policy.logits[contexts], -1).gather(1, actions[:, None]).squeeze(1)
    # one-step episodes: GAE over a time axis of length 1 that terminates
    adv = gae(rewards[:, None], values[:, None], gamma=0.99, gae_lambda=0.95).squeeze(1)
    return {"obs": contexts, "actions": actions, "logprobs": logp, "values": values,
            "advantages": adv, "returns": adv + values, "rewards": rewards}


@formula("AC-2")
@formula("CL-4")
@pytest.mark.parametrize("objective", ["clip", "kl_penalty", "clip+kl_penalty", "ratio"])
def test_ppo_solves_a_contextual_bandit(objective, device):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    policy = BanditPolicy().to(device)
    opt = torch.optim.Adam(policy.parameters(), lr=0.05, eps=1e-5)
    config = PPOConfig(objective=objective, minibatch_size=128, update_epochs=4, ent_coef=0.0)
    controller = AdaptiveKLController(beta=1.0, target=0.02) if "kl_penalty" in objective else None
    for _ in range(40):
        batch = bandit_batch(policy, g, device=device)
        batch.pop("rewards")
        stats = ppo_update(policy.evaluate, batch, opt, config, kl_controller=controller, generator=g)
    probs = F.softmax(policy.logits, -1)
    best = REWARDS.argmax(1).to(device)
    assert torch.equal(probs.argmax(1), best)
    assert float(probs.detach().gather(1, best[:, None]).min()) > 0.9
    # the critic learned the value of each context under the (now near-greedy) policy
    assert torch.allclose(policy.values, (probs * REWARDS.to(device)).sum(1), atol=0.15)
    assert set(stats) >= {"losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/approx_kl",
                          "losses/clipfrac", "losses/explained_variance"}


class NoisyBanditPolicy(torch.nn.Module):
    """64 contexts × 10 actions with small reward gaps and loud noise: the policy keeps moving
    for many updates, so the step size is set by the KL penalty, not by convergence."""

    def __init__(self, n_contexts=64, n_actions=10):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.zeros(n_contexts, n_actions))
        self.values = torch.nn.Parameter(torch.zeros(n_contexts))

    evaluate = BanditPolicy.evaluate


@formula("TR-3")
def test_adaptive_penalty_keeps_kl_in_band(device):
    torch.manual_seed(1)
    g = torch.Generator().manual_seed(1)
    reward_table = 0.3 * torch.randn(64, 10, generator=torch.Generator().manual_seed(0))
    policy = NoisyBanditPolicy().to(device)
    opt = torch.optim.Adam(policy.parameters(), lr=0.1, eps=1e-5)
    config = PPOConfig(objective="kl_penalty", minibatch_size=128, update_epochs=4)
    target = 0.01
    controller = AdaptiveKLController(beta=0.1, target=target)  # β starts far too small
    kls = []
    for _ in range(30):
        n = 1024
        contexts = torch.randint(0, 64, (n,), generator=g)
        with torch.no_grad():
            probs = F.softmax(policy.logits.cpu()[contexts], -1)
            actions = torch.multinomial(probs, 1, generator=g).squeeze(1)
            rewards = reward_table[contexts, actions] + torch.randn(n, generator=g)
            contexts, actions, rewards = contexts.to(device), actions.to(device), rewards.to(device)
            values = policy.values[contexts]
            logp = F.log_softmax(policy.logits[contexts], -1).gather(1, actions[:, None]).squeeze(1)
        adv = gae(rewards[:, None], values[:, None], gamma=0.99, gae_lambda=0.95).squeeze(1)
        batch = {"obs": contexts, "actions": actions, "logprobs": logp, "values": values,
                 "advantages": adv, "returns": adv + values}
        stats = ppo_update(policy.evaluate, batch, opt, config, kl_controller=controller, generator=g)
        kls.append(stats["ppo/kl_after_update"])
    assert kls[0] > 5 * target  # with the initial β the policy moved far too much
    late = sorted(kls[10:])
    assert target / 2 <= late[len(late) // 2] <= 2 * target, kls  # then β brought the KL into band
    assert controller.beta > 0.1


class TwoTokenPolicy(torch.nn.Module):
    """Vocabulary {0: EOS, 1, 2, 3}; a reply is one or two tokens; token 2 conditions on token 1."""

    def __init__(self):
        super().__init__()
        self.first = torch.nn.Parameter(torch.zeros(4))
        self.second = torch.nn.Parameter(torch.zeros(4, 4))
        self.value_first = torch.nn.Parameter(torch.zeros(()))
        self.value_second = torch.nn.Parameter(torch.zeros(4))

    def logits(self, tokens):  # tokens (B, 2) → logits (B, 2, 4)
        first = self.first.expand(tokens.shape[0], 4)
        second = self.second[tokens[:, 0]]
        return torch.stack([first, second], dim=1)

    def evaluate(self, mb):
        logp_all = F.log_softmax(self.logits(mb["actions"]), -1)  # (B, 2, 4)
        logp = logp_all.gather(2, mb["actions"][..., None]).squeeze(-1)  # (B, 2)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        values = torch.stack([self.value_first.expand(mb["actions"].shape[0]),
                              self.value_second[mb["actions"][:, 0]]], dim=1)
        return Evaluation(logp, entropy, values)


def two_token_batch(policy, g, n=256, device="cpu"):
    with torch.no_grad():
        first = torch.multinomial(F.softmax(policy.first, -1).cpu().expand(n, 4), 1, generator=g).squeeze(1)
        second = torch.multinomial(F.softmax(policy.second[first.to(device)], -1).cpu(), 1, generator=g).squeeze(1)
        tokens = torch.stack([first, second], 1)
        mask = torch.ones(n, 2)
        mask[first == 0, 1] = 0.0  # EOS first: a one-token reply, the second position is padding
        tokens[first == 0, 1] = 0
        # the reply "2 3" earns 1, "1" + anything 0.3, everything else 0: on the last real token
        score = torch.where((first == 2) & (second == 3), 1.0, torch.where(first == 1, 0.3, 0.0))
        last = (mask.sum(1) - 1).long()
        rewards = torch.zeros(n, 2)
        rewards[torch.arange(n), last] = score
        tokens, mask, rewards = tokens.to(device), mask.to(device), rewards.to(device)
        ev = policy.evaluate({"actions": tokens})
    adv = gae(rewards, ev.values, gamma=1.0, gae_lambda=0.95, mask=mask)
    return {"actions": tokens, "logprobs": ev.logprobs, "values": ev.values, "advantages": adv,
            "returns": (adv + ev.values) * mask, "mask": mask}


@formula("AC-2")
@pytest.mark.parametrize("reduction", ["seq_mean", "token_mean"])
def test_ppo_solves_a_two_token_language_task_with_masks(reduction, device):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    policy = TwoTokenPolicy().to(device)
    opt = torch.optim.Adam(policy.parameters(), lr=0.1, eps=1e-5)
    config = PPOConfig(minibatch_size=64, update_epochs=4, loss_reduction=reduction)
    for _ in range(40):
        ppo_update(policy.evaluate, two_token_batch(policy, g, device=device), opt, config, generator=g)
    p_best = F.softmax(policy.first, -1)[2] * F.softmax(policy.second[2], -1)[3]
    assert float(p_best.detach()) > 0.9


def test_early_stop_at_target_kl(device):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    policy = BanditPolicy().to(device)
    opt = torch.optim.SGD(policy.parameters(), lr=5.0)  # huge steps: KL explodes after one epoch
    batch = bandit_batch(policy, g, device=device)
    batch.pop("rewards")
    stats = ppo_update(policy.evaluate, batch, opt, PPOConfig(minibatch_size=128, update_epochs=10, target_kl=1e-4),
                       generator=g)
    assert stats["ppo/epochs"] < 10


def test_same_seed_same_update(device):
    results = []
    for _ in range(2):
        torch.manual_seed(3)
        g = torch.Generator().manual_seed(3)
        policy = BanditPolicy().to(device)
        opt = torch.optim.Adam(policy.parameters(), lr=0.05)
        for _ in range(3):
            batch = bandit_batch(policy, g, device=device)
            batch.pop("rewards")
            ppo_update(policy.evaluate, batch, opt, PPOConfig(minibatch_size=64), generator=g)
        results.append(policy.logits.detach().clone())
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("field,value,match", [
    ("clip_coef", 0.0, "clip_coef must be > 0"),
    ("clip_coef", -0.1, "clip_coef must be > 0"),
    ("clip_coef_high", 0.1, "clip_coef_high"),
    ("objective", "trust_me", "objective must be one of"),
    ("update_epochs", 0, "update_epochs"),
    ("minibatch_size", 0, "minibatch_size"),
    ("target_kl", 0.0, "target_kl must be > 0"),
    ("target_kl", -1.0, "target_kl must be > 0"),
    ("max_grad_norm", 0.0, "max_grad_norm"),
    ("loss_reduction", "sum", "loss_reduction"),
    ("ref_kl_estimator", "k9", "ref_kl_estimator"),
])
def test_config_rejects_bad_hyperparameters_by_name(field, value, match):
    with pytest.raises(ValueError, match=match):
        PPOConfig(**{field: value})


def test_minibatch_larger_than_batch_is_refused(device):
    with pytest.raises(ValueError, match="minibatch_size"):
        PPOConfig(minibatch_size=512, batch_size=256)
    policy = BanditPolicy().to(device)
    batch = bandit_batch(policy, torch.Generator().manual_seed(0), n=100, device=device)
    batch.pop("rewards")
    with pytest.raises(ValueError, match=r"minibatch_size \(128\) is larger than the batch \(100 rows\)"):
        ppo_update(policy.evaluate, batch, torch.optim.Adam(policy.parameters()), PPOConfig(minibatch_size=128))


@pytest.mark.parametrize("key", ["advantages", "returns", "values", "logprobs"])
def test_nan_in_batch_is_named(key, device):
    policy = BanditPolicy().to(device)
    batch = bandit_batch(policy, torch.Generator().manual_seed(0), n=64, device=device)
    batch.pop("rewards")
    batch[key] = batch[key].clone()
    batch[key][7] = float("nan")
    with pytest.raises(NonFiniteError, match=f"{key} contains NaN"):
        ppo_update(policy.evaluate, batch, torch.optim.Adam(policy.parameters()), PPOConfig(minibatch_size=32))


def test_shape_mismatch_and_missing_keys_are_named(device):
    policy = BanditPolicy().to(device)
    opt = torch.optim.Adam(policy.parameters())
    batch = bandit_batch(policy, torch.Generator().manual_seed(0), n=64, device=device)
    batch.pop("rewards")
    bad = dict(batch, advantages=batch["advantages"][:60])
    with pytest.raises(ValueError, match="advantages has shape"):
        ppo_update(policy.evaluate, bad, opt, PPOConfig(minibatch_size=32))
    missing = {k: v for k, v in batch.items() if k != "returns"}
    with pytest.raises(ValueError, match="missing \\['returns'\\]"):
        ppo_update(policy.evaluate, missing, opt, PPOConfig(minibatch_size=32))
    with pytest.raises(ValueError, match="kl_controller"):
        ppo_update(policy.evaluate, batch, opt, PPOConfig(objective="kl_penalty", minibatch_size=32))


def test_nan_from_the_model_stops_the_update(device):
    policy = BanditPolicy().to(device)
    batch = bandit_batch(policy, torch.Generator().manual_seed(0), n=64, device=device)
    batch.pop("rewards")
    with torch.no_grad():
        policy.logits[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="PPO loss"):
        ppo_update(policy.evaluate, batch, torch.optim.Adam(policy.parameters()), PPOConfig(minibatch_size=32))


# ----------------------------------------------------------------------------------------------
# CL-4: the full loss and its gradient, against a hand-written loss in plain torch ops
# ----------------------------------------------------------------------------------------------


class LinearActorCritic(torch.nn.Module):
    """logits = obs·W, V = obs·v: small enough that a hand loss can be written out in full."""

    def __init__(self, n_features=3, n_actions=4, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = torch.nn.Parameter(torch.randn(n_features, n_actions, generator=g, dtype=torch.float64))
        self.v = torch.nn.Parameter(torch.randn(n_features, generator=g, dtype=torch.float64))

    def evaluate(self, mb):
        return Evaluation(*hand_policy(self.W, self.v, mb["obs"], mb["actions"]))


def hand_policy(W, v, obs, actions):
    """log π(a|s), H[π(·|s)], V(s) with plain softmax arithmetic (no core function)."""
    logits = obs @ W
    logits = logits - logits.max(-1, keepdim=True).values
    probs = logits.exp() / logits.exp().sum(-1, keepdim=True)
    logp = probs.log().gather(-1, actions[..., None]).squeeze(-1)
    entropy = -(probs * probs.log()).sum(-1)
    return logp, entropy, obs @ v


def hand_reduce(x, mask, mode):
    if mask is None:
        return x.mean()
    if mode == "token_mean":
        return (x * mask).sum() / mask.sum()
    return ((x * mask).sum(-1) / mask.sum(-1)).mean()  # seq_mean


def hand_ppo_loss(W, v, mb, cfg, beta=0.0, ent_sign=-1.0):
    """CL-4 written out:  −reduce(min(ρÂ, clip(ρ, 1−ε, 1+ε_high)Â))
                          + c₁·reduce(max((V − R)², (V_old + clip(V − V_old, ±ε_v) − R)²))   (no ½)
                          − c₂·reduce(H)
    plus β·k3(π_old, π_θ) for the penalty objectives and β_ref·reduce(k3(π_θ, π_ref))."""
    logp, entropy, values = hand_policy(W, v, mb["obs"], mb["actions"])
    mask = mb.get("mask")
    m = torch.ones_like(logp) if mask is None else mask
    adv = mb["advantages"]
    if cfg.norm_adv:  # zero mean, unit (unbiased) std over this minibatch's real positions
        mean = (adv * m).sum() / m.sum()
        std = (((adv - mean) ** 2 * m).sum() / (m.sum() - 1)).sqrt()
        adv = (adv - mean) / std * m
    ratio = (logp - mb["logprobs"]).exp()
    high = cfg.clip_coef if cfg.clip_coef_high is None else cfg.clip_coef_high
    clipped = torch.where(ratio > 1 + high, 1 + high, torch.where(ratio < 1 - cfg.clip_coef, 1 - cfg.clip_coef, ratio))
    if cfg.objective == "ratio":
        objective = ratio * adv
    elif cfg.objective == "kl_penalty":
        objective = ratio * adv
    else:
        objective = torch.where(ratio * adv < clipped * adv, ratio * adv, clipped * adv)
    if cfg.objective in ("kl_penalty", "clip+kl_penalty"):
        objective = objective - beta * (ratio - 1 - (logp - mb["logprobs"]))
    loss = -hand_reduce(objective, mask, cfg.loss_reduction)
    if cfg.ref_kl_coef > 0:
        log_r = mb["ref_logprobs"] - logp
        loss = loss + cfg.ref_kl_coef * hand_reduce(log_r.exp() - 1 - log_r, mask, cfg.loss_reduction)
    old_v, returns = mb["values"], mb["returns"]
    v_clipped = old_v + torch.where(values - old_v > cfg.vf_clip_coef, cfg.vf_clip_coef,
                                    torch.where(values - old_v < -cfg.vf_clip_coef, -cfg.vf_clip_coef, values - old_v))
    squared = (values - returns) ** 2
    if cfg.clip_vloss:
        squared = torch.where(squared > (v_clipped - returns) ** 2, squared, (v_clipped - returns) ** 2)
    loss = loss + cfg.vf_coef * hand_reduce(0.5 * squared, mask, cfg.loss_reduction)  # ½(V − V^targ)²
    return loss + ent_sign * cfg.ent_coef * hand_reduce(entropy, mask, cfg.loss_reduction)


def cl4_batch(n=24, shape=(), seed=17, with_mask=False):
    """A batch collected by an older policy near the current `LinearActorCritic()`: ratios on every
    side of the clip range, old values near enough that some value losses are clipped and some not."""
    g = torch.Generator().manual_seed(seed)
    current = LinearActorCritic()
    W_old = current.W.detach() + 0.3 * torch.randn(3, 4, generator=g, dtype=torch.float64)
    v_old = current.v.detach() + 0.1 * torch.randn(3, generator=g, dtype=torch.float64)
    obs = torch.randn(n, *shape, 3, generator=g, dtype=torch.float64)
    probs = torch.softmax(obs @ W_old, -1)
    actions = torch.multinomial(probs.reshape(-1, 4), 1, generator=g).reshape(n, *shape)
    logp, _, old_values = hand_policy(W_old, v_old, obs, actions)
    batch = {"obs": obs, "actions": actions, "logprobs": logp, "values": old_values,
             "advantages": 2.0 * torch.randn(n, *shape, generator=g, dtype=torch.float64) + 0.5,
             "returns": old_values + torch.randn(n, *shape, generator=g, dtype=torch.float64),
             "ref_logprobs": logp + 0.3 * torch.randn(n, *shape, generator=g, dtype=torch.float64)}
    if with_mask:
        lengths = torch.randint(1, shape[-1] + 1, (n,), generator=g)
        batch["mask"] = (torch.arange(shape[-1])[None] < lengths[:, None]).to(torch.float64)
    return batch


CL4_CONFIGS = {
    "clip": dict(),
    "clip-high": dict(clip_coef_high=0.35),
    "no-norm-adv": dict(norm_adv=False),
    "no-value-clip": dict(clip_vloss=False),
    "ratio": dict(objective="ratio"),
    "kl_penalty": dict(objective="kl_penalty"),
    "clip+kl_penalty": dict(objective="clip+kl_penalty"),
    "ref-kl": dict(ref_kl_coef=0.3),
}


@formula("CL-4")
@formula("CL-1")
@formula("DA-1")
@formula("TR-2")
@formula("TR-3")
@pytest.mark.parametrize("case", list(CL4_CONFIGS))
def test_ppo_update_step_is_the_gradient_of_the_hand_loss(case):
    """One epoch, one minibatch, SGD with lr = 1: the parameter change is minus the gradient of
    the CL-4 loss written out by hand, with c₁ > 0 and c₂ > 0."""
    batch = cl4_batch()
    config = PPOConfig(minibatch_size=24, update_epochs=1, max_grad_norm=None, vf_coef=0.7, ent_coef=0.05,
                       clip_coef=0.2, vf_clip_coef=0.1, **CL4_CONFIGS[case])
    model = LinearActorCritic()
    W0, v0 = model.W.detach().clone().requires_grad_(True), model.v.detach().clone().requires_grad_(True)
    beta = 0.8 if "kl_penalty" in case else 0.0
    controller = AdaptiveKLController(beta=beta, target=0.01) if beta else None

    loss = hand_ppo_loss(W0, v0, batch, config, beta=beta)
    gW, gv = torch.autograd.grad(loss, (W0, v0))
    stats = ppo_update(model.evaluate, batch, torch.optim.SGD(model.parameters(), lr=1.0), config,
                       kl_controller=controller, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.W.detach() - W0.detach(), -gW, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(model.v.detach() - v0.detach(), -gv, rtol=1e-7, atol=1e-9)

    # the batch exercises every branch: each side of the clip range with each sign of Â, the band
    # (1 + ε, 1 + ε_high] that only clip-higher lets through, value losses clipped and not
    with torch.no_grad():
        logp, entropy, values = hand_policy(W0, v0, batch["obs"], batch["actions"])
    ratio = (logp - batch["logprobs"]).exp()
    adv = batch["advantages"] - batch["advantages"].mean()
    for rows in (ratio > 1.35, ratio < 0.8):
        assert (rows & (adv > 0)).any() and (rows & (adv < 0)).any()
    assert ((ratio > 1.2) & (ratio < 1.35) & (adv > 0)).any() and ((ratio > 0.8) & (ratio < 1.2)).any()
    moved = (values - batch["values"]).abs() > config.vf_clip_coef
    assert moved.any() and not moved.all()
    # the reported metrics are the hand quantities at the parameters before the step
    assert stats["losses/entropy"] == pytest.approx(float(entropy.mean()), rel=1e-6)  # summed in float32
    k3 = ratio - 1 - ratio.log()  # approx_kl: the k3 estimate of KL[π_old‖π_θ] before the step
    assert stats["losses/approx_kl"] == pytest.approx(float(k3.mean()), rel=1e-6)
    high = config.clip_coef_high or config.clip_coef
    outside = ((ratio < 1 - config.clip_coef) | (ratio > 1 + high)).double().mean()
    assert stats["losses/clipfrac"] == pytest.approx(float(outside), rel=1e-6)
    if controller is not None:
        # TR-3: after the update, d = mean k3 of KL[π_old‖π_θ] at the new parameters; β adapts to it
        with torch.no_grad():
            log_ratio = hand_policy(model.W, model.v, batch["obs"], batch["actions"])[0] - batch["logprobs"]
        d = float((log_ratio.exp() - 1 - log_ratio).mean())
        assert stats["ppo/kl_after_update"] == pytest.approx(d, rel=1e-6)
        assert stats["charts/kl_coef"] == beta  # the β this update used
        expected_beta = 2 * beta if d > 1.5 * 0.01 else beta / 2 if d < 0.01 / 1.5 else beta
        assert controller.beta == pytest.approx(expected_beta)


@formula("CL-4")
@formula("TR-2")
@pytest.mark.parametrize("case", list(CL4_CONFIGS))
def test_ppo_loss_of_one_minibatch_is_the_hand_loss(case):
    """`ppo_loss` alone, no optimiser: its loss equals the CL-4 loss written out by hand (each
    objective, the penalty with its β, the KL to a reference), with its gradient; its terms
    are the hand policy loss and approx_kl."""
    batch = cl4_batch()
    config = PPOConfig(minibatch_size=24, vf_coef=0.7, ent_coef=0.05, clip_coef=0.2, vf_clip_coef=0.1,
                       **CL4_CONFIGS[case])
    model = LinearActorCritic()
    beta = 0.8 if "kl_penalty" in case else 0.0
    loss, terms = ppo_loss(model.evaluate(batch), batch, config, beta=beta)
    W0, v0 = model.W.detach().clone().requires_grad_(True), model.v.detach().clone().requires_grad_(True)
    want = hand_ppo_loss(W0, v0, batch, config, beta=beta)
    torch.testing.assert_close(loss, want, rtol=1e-7, atol=1e-9)  # masked_whiten's ε = 1e-8 aside
    got_grads = torch.autograd.grad(loss, (model.W, model.v))
    for got, expected in zip(got_grads, torch.autograd.grad(want, (W0, v0))):
        torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-9)
    no_value = PPOConfig(**{**config.__dict__, "vf_coef": 0.0, "ent_coef": 0.0, "ref_kl_coef": 0.0})
    policy_only = hand_ppo_loss(W0, v0, batch, no_value, beta=beta)
    torch.testing.assert_close(terms["policy_loss"], policy_only.detach(), rtol=1e-7, atol=1e-9)
    log_ratio = hand_policy(W0, v0, batch["obs"], batch["actions"])[0].detach() - batch["logprobs"]
    torch.testing.assert_close(terms["approx_kl"], (log_ratio.exp() - 1 - log_ratio).mean())
    assert all(not t.requires_grad for t in terms.values())


class ScaledRanks:
    """A stand-in for the ranks of a torchrun group: 'averaging' scales every gradient by `scale`,
    and `mean` marks the stats it was given, so the test sees where ppo_update used each."""

    def __init__(self, scale):
        self.scale, self.calls = scale, 0

    def average_gradients(self, params):
        self.calls += 1
        for p in params:
            p.grad.mul_(self.scale)

    def mean(self, stats):
        return {**stats, "ranks/seen": 1.0} if "losses/policy_loss" in stats else stats


def test_ppo_update_averages_gradients_through_ranks_before_the_clip():
    """`ranks.average_gradients` runs once per minibatch between backward and the grad-norm clip
    (a scale of 0.5 halves the SGD step; the clip sees the scaled gradient), and the returned
    metrics are `ranks.mean` of them. Ignoring `ranks` leaves the step whole and fails."""
    batch = cl4_batch()
    config = PPOConfig(minibatch_size=12, update_epochs=1, max_grad_norm=None, vf_coef=0.7, clip_coef=0.2)
    whole, halved = LinearActorCritic(), LinearActorCritic()
    W0 = whole.W.detach().clone()
    ppo_update(whole.evaluate, batch, torch.optim.SGD(whole.parameters(), lr=0.1), config,
               generator=torch.Generator().manual_seed(0))
    ranks = ScaledRanks(0.5)
    stats = ppo_update(halved.evaluate, batch, torch.optim.SGD(halved.parameters(), lr=0.1), config,
                       generator=torch.Generator().manual_seed(0), ranks=ranks)
    assert ranks.calls == 2 and stats["ranks/seen"] == 1.0
    first_step = halved.W.detach() - W0
    assert 0.3 < float(first_step.norm() / (whole.W.detach() - W0).norm()) < 0.7  # about half the step
    clipped = LinearActorCritic()
    ppo_update(clipped.evaluate, batch, torch.optim.SGD(clipped.parameters(), lr=0.1),
               PPOConfig(**{**config.__dict__, "max_grad_norm": 1e-3}), generator=torch.Generator().manual_seed(0),
               ranks=ScaledRanks(0.0))
    torch.testing.assert_close(clipped.W.detach(), W0)  # averaged to zero before the clip: no step at all


@formula("CL-4")
def test_entropy_bonus_sign_is_pinned():
    """With −c₂·H the step raises the entropy; the hand loss with +c₂·H gives another step."""
    batch = cl4_batch(n=16, seed=4)
    batch["advantages"] = torch.zeros_like(batch["advantages"])  # only the entropy moves the policy
    config = PPOConfig(minibatch_size=16, update_epochs=1, max_grad_norm=None, vf_coef=0.5, ent_coef=0.1,
                       norm_adv=False)
    model = LinearActorCritic(seed=5)
    W0 = model.W.detach().clone().requires_grad_(True)
    v0 = model.v.detach().clone()
    (g_minus,) = torch.autograd.grad(hand_ppo_loss(W0, v0, batch, config, ent_sign=-1.0), W0)
    (g_plus,) = torch.autograd.grad(hand_ppo_loss(W0, v0, batch, config, ent_sign=+1.0), W0)
    assert float((g_minus - g_plus).abs().max()) > 1e-2  # the two signs are far apart
    before = hand_policy(W0.detach(), v0, batch["obs"], batch["actions"])[1].mean()
    ppo_update(model.evaluate, batch, torch.optim.SGD(model.parameters(), lr=0.1), config)
    torch.testing.assert_close(model.W.detach() - W0.detach(), -0.1 * g_minus, rtol=1e-7, atol=1e-9)
    after = hand_policy(model.W.detach(), v0, batch["obs"], batch["actions"])[1].mean()
    assert float(after) > float(before)  # the bonus is a bonus: entropy goes up


@formula("CL-4")
@formula("GR-2")
@formula("DA-3")
@pytest.mark.parametrize("reduction", ["token_mean", "seq_mean"])
def test_ppo_update_on_masked_sequences_is_the_gradient_of_the_hand_loss(reduction):
    """(B, T) replies with padding: the same hand loss reduced over real tokens only."""
    batch = cl4_batch(n=8, shape=(5,), seed=2, with_mask=True)
    assert 0 < float(batch["mask"].sum()) < batch["mask"].numel()
    batch["advantages"] = batch["advantages"] * batch["mask"]
    config = PPOConfig(minibatch_size=8, update_epochs=1, max_grad_norm=None, vf_coef=0.7, ent_coef=0.05,
                       loss_reduction=reduction, ref_kl_coef=0.2)
    model = LinearActorCritic()
    W0, v0 = model.W.detach().clone().requires_grad_(True), model.v.detach().clone().requires_grad_(True)
    gW, gv = torch.autograd.grad(hand_ppo_loss(W0, v0, batch, config), (W0, v0))
    ppo_update(model.evaluate, batch, torch.optim.SGD(model.parameters(), lr=1.0), config)
    torch.testing.assert_close(model.W.detach() - W0.detach(), -gW, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(model.v.detach() - v0.detach(), -gv, rtol=1e-7, atol=1e-9)


@formula("CL-4")
def test_advantages_are_normalised_per_minibatch():
    """Two minibatches, two SGD steps: each step's loss whitens Â over its own rows. The rows of
    each minibatch are read from the update itself; the steps are replayed by hand."""
    batch = cl4_batch(n=16, seed=3)
    batch["row"] = torch.arange(16)
    batch["advantages"][:8] += 3.0  # whitening per minibatch and per batch now differ
    config = PPOConfig(minibatch_size=8, update_epochs=1, max_grad_norm=None, vf_coef=0.7, ent_coef=0.05)
    model = LinearActorCritic()
    seen = []

    def evaluate(mb):
        seen.append(mb["row"].clone())
        return model.evaluate(mb)

    W, v = model.W.detach().clone(), model.v.detach().clone()
    ppo_update(evaluate, batch, torch.optim.SGD(model.parameters(), lr=1.0), config,
               generator=torch.Generator().manual_seed(0))
    assert len(seen) == 2 and sorted(torch.cat(seen).tolist()) == list(range(16))

    def replay(normalise_over_batch):
        W_, v_ = W.clone(), v.clone()
        mean, std = batch["advantages"].mean(), batch["advantages"].std()
        for rows in seen:
            mb = {k: t[rows] for k, t in batch.items()}
            hand_config = config
            if normalise_over_batch:
                mb["advantages"] = (mb["advantages"] - mean) / std
                hand_config = PPOConfig(**{**config.__dict__, "norm_adv": False})
            W_.requires_grad_(True), v_.requires_grad_(True)
            gW, gv = torch.autograd.grad(hand_ppo_loss(W_, v_, mb, hand_config), (W_, v_))
            W_, v_ = (W_ - gW).detach(), (v_ - gv).detach()
        return W_

    torch.testing.assert_close(model.W.detach(), replay(False), rtol=1e-7, atol=1e-9)
    assert float((replay(True) - model.W.detach()).abs().max()) > 1e-3


@formula("CL-4")
def test_grad_norm_is_the_norm_before_the_clip_and_the_step_is_clipped_to_max_grad_norm():
    """losses/grad_norm reports ‖∇loss‖ over every parameter before the clip; the SGD step (lr = 1)
    is then that gradient scaled to norm max_grad_norm (detail 11), computed here by hand."""
    batch = cl4_batch()
    config = PPOConfig(minibatch_size=24, update_epochs=1, max_grad_norm=0.05, vf_coef=0.7, ent_coef=0.05)
    model = LinearActorCritic()
    W0, v0 = model.W.detach().clone().requires_grad_(True), model.v.detach().clone().requires_grad_(True)
    gW, gv = torch.autograd.grad(hand_ppo_loss(W0, v0, batch, config), (W0, v0))
    norm = float(torch.sqrt((gW ** 2).sum() + (gv ** 2).sum()))
    assert norm > 0.05  # the clip binds
    stats = ppo_update(model.evaluate, batch, torch.optim.SGD(model.parameters(), lr=1.0), config,
                       generator=torch.Generator().manual_seed(0))
    assert stats["losses/grad_norm"] == pytest.approx(norm, rel=1e-5)
    scale = 0.05 / (norm + 1e-6)  # torch's clip divides by norm + 1e-6
    torch.testing.assert_close(model.W.detach() - W0.detach(), -scale * gW, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(model.v.detach() - v0.detach(), -scale * gv, rtol=1e-5, atol=1e-8)


class PerTokenLogprobs(torch.nn.Module):
    """A "policy" whose log-prob of every stored token is a parameter of its own: one SGD step moves
    each token's parameter by −lr·∂loss/∂log π, the weight the reduction gave that token."""

    def __init__(self, logprobs):
        super().__init__()
        self.logp = torch.nn.Parameter(logprobs.clone())

    def evaluate(self, mb):
        logp = self.logp[mb["row"]]
        return Evaluation(logp, torch.zeros_like(logp), None)


@formula("DA-3")
@pytest.mark.parametrize("mode", ["token_mean", "minibatch_token_mean"])
def test_dapo_token_mean_is_over_the_whole_batch_not_each_minibatch(mode):
    """Two minibatches of one reply each, of 1 and 3 real tokens (4 in the batch), Â = 1, ratio 1:
    DAPO's token mean weighs every token of the batch 1/4 — each minibatch step divides its sum by
    4/2 tokens, so every token moves by lr/2 and the two steps together are 2× the gradient of the
    batch's token mean. The per-minibatch mean divides by 1 and by 3: the lone token of the short
    reply moves 3× as far as each token of the long one."""
    mask = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    old = torch.full((2, 3), -1.0) * mask
    batch = {"row": torch.arange(2), "actions": torch.zeros(2, 3, dtype=torch.long), "logprobs": old,
             "advantages": mask.clone(), "returns": torch.zeros(2, 3), "values": torch.zeros(2, 3), "mask": mask}
    policy = PerTokenLogprobs(old)
    config = PPOConfig(minibatch_size=1, update_epochs=1, norm_adv=False, max_grad_norm=None, vf_coef=0.0,
                       loss_reduction=mode)
    ppo_update(policy.evaluate, batch, torch.optim.SGD(policy.parameters(), lr=1.0), config,
               generator=torch.Generator().manual_seed(0))
    moved = (policy.logp.detach() - old) * mask  # +lr·weight on each real token (the loss is −Σ ρÂ/N)
    if mode == "token_mean":
        expected = mask * (1 / (4 / 2))  # N = 4 tokens in the batch / 2 minibatches
    else:
        expected = torch.tensor([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    torch.testing.assert_close(moved, expected)


@pytest.mark.skipif(not any(__import__("shutil").which(cc) for cc in ("g++", "c++", "clang++")),
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_update_is_the_eager_update():
    """`ppo_update(compile=True)` runs evaluate + ppo_loss as one torch.compile graph: the same
    update up to float rounding (three epochs of two minibatches, Adam, the clip and the
    grad-norm clip all active), and a learning signal, not a frozen copy."""
    batch = cl4_batch(n=32, seed=5)
    config = PPOConfig(minibatch_size=16, update_epochs=3, vf_coef=0.7, ent_coef=0.05, max_grad_norm=0.5)
    weights = {}
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for compile in (False, True):
        torch.manual_seed(0)
        model = LinearActorCritic()
        start = [p.detach().clone() for p in model.parameters()]
        stats = ppo_update(model.evaluate, batch, torch.optim.Adam(model.parameters(), lr=0.05), config,
                           generator=torch.Generator().manual_seed(1), compile=compile)
        weights[compile] = [p.detach().clone() for p in model.parameters()]
        assert stats["ppo/minibatches"] == 6
    for eager, compiled, before in zip(weights[False], weights[True], start):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
        assert float((eager - before).abs().max()) > 1e-2  # the update moved the weights
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # and the compiled one was compiled
