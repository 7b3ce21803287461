"""Continuous actions: the diagonal Gaussian policy, the observation and reward normalisers,
action clipping at the env boundary, and short runs on Pendulum-v1 and HalfCheetah-v5."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from core.checkpoint import load_checkpoint
from core.metrics import read_metrics
from envs.config import TrainConfig, env_family
from envs.evaluate import evaluate_policy
from envs.networks import ActorCritic, gaussian_entropy, gaussian_log_prob
from envs.normalize import NormalizedEnv, RunningMeanStd
from envs.train import train
from envs.vector import AgentEnv, Step

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def test_gaussian_log_prob_and_entropy_against_torch_and_by_hand():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(5, 3, generator=g, dtype=torch.float64)
    log_std = torch.randn(3, generator=g, dtype=torch.float64) * 0.5
    actions = mean + torch.randn(5, 3, generator=g, dtype=torch.float64) * 2
    normal = torch.distributions.Normal(mean, log_std.exp())
    torch.testing.assert_close(gaussian_log_prob(actions, mean, log_std), normal.log_prob(actions).sum(-1))
    torch.testing.assert_close(gaussian_entropy(log_std), normal.entropy()[0].sum())
    for b in range(5):  # −½((a−μ)/σ)² − log σ − ½ log 2π, summed over the action's dimensions
        by_hand = sum(-0.5 * ((float(actions[b, i]) - float(mean[b, i])) / math.exp(float(log_std[i]))) ** 2
                      - float(log_std[i]) - 0.5 * math.log(2 * math.pi) for i in range(3))
        assert float(gaussian_log_prob(actions, mean, log_std)[b]) == pytest.approx(by_hand, rel=1e-12)
    by_hand = sum(0.5 * math.log(2 * math.pi * math.e * math.exp(float(log_std[i])) ** 2) for i in range(3))
    assert float(gaussian_entropy(log_std)) == pytest.approx(by_hand, rel=1e-12)


def test_the_policy_samples_around_its_mean_with_its_std_and_scores_what_it_sampled():
    torch.manual_seed(0)
    agent = ActorCritic((3,), 2, continuous=True)
    with torch.no_grad():
        agent.log_std.copy_(torch.tensor([math.log(0.5), math.log(2.0)]))
    obs = torch.zeros(20_000, 3)
    actions, logprobs, _ = agent.act(obs)
    mean = agent(obs[:1])[0][0]
    assert actions.shape == (20_000, 2)
    # sample std within 3% of σ (20 000 draws: the std's relative standard error is 0.5%)
    torch.testing.assert_close(actions.std(0), torch.tensor([0.5, 2.0]), rtol=0.03, atol=0)
    torch.testing.assert_close(actions.mean(0), mean, atol=0.05, rtol=0)
    evaluation = agent.evaluate({"obs": obs[:10], "actions": actions[:10]})
    torch.testing.assert_close(evaluation.logprobs, logprobs[:10])
    assert torch.equal(agent.act(obs[:4], greedy=True)[0], mean.expand(4, 2))


def test_running_mean_std_matches_numpy_over_all_batches():
    rng = np.random.default_rng(0)
    rms = RunningMeanStd((2,), "cpu")
    seen = []
    for size in (1, 7, 64, 3):
        batch = rng.normal([3.0, -1.0], [2.0, 0.1], size=(size, 2))
        seen.append(batch)
        rms.update(torch.as_tensor(batch))
    seen = np.concatenate(seen)
    # the data plus the prior gymnasium starts from: weight 1e-4 at mean 0, variance 1
    w = 1e-4
    mean = seen.sum(0) / (len(seen) + w)
    var = (w * (1.0 + mean**2) + ((seen - mean) ** 2).sum(0)) / (len(seen) + w)
    np.testing.assert_allclose(rms.mean.numpy(), mean, rtol=1e-9)
    np.testing.assert_allclose(rms.var.numpy(), var, rtol=1e-9)
    assert float(rms.count) == pytest.approx(75 + 1e-4)


class ConstantEnv:
    """A stand-in for AgentEnv: observation [t, 2t], reward 1 per step, episodes of 3 steps."""

    def __init__(self, num_envs=2):
        self.num_envs, self.device, self.t = num_envs, torch.device("cpu"), 0
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, (2,))
        self.single_action_space = gym.spaces.Box(-1, 1, (1,))

    def _obs(self):
        return torch.tensor([[self.t, 2.0 * self.t]] * self.num_envs)

    def reset(self, seed=None):
        self.t = 0
        return self._obs()

    def step(self, actions):
        self.t += 1
        done = torch.full((self.num_envs,), self.t % 3 == 0)
        zeros = torch.zeros(self.num_envs)
        return Step(self._obs(), torch.ones(self.num_envs), done, torch.zeros_like(done), self._obs(), done,
                    zeros, zeros, zeros)


def test_reward_normaliser_scales_by_the_std_of_the_discounted_return():
    env = NormalizedEnv(ConstantEnv(), obs=False, reward=True, gamma=0.9)
    env.reset(seed=0)
    returns, expected, got = [], [], []
    g = 0.0
    for t in range(1, 10):
        g = 0.9 * g + 1.0  # G_t = γ G_{t−1} + r_t, restarted after each 3-step episode
        returns += [g, g]  # both envs
        var = np.var(np.array(returns)) * len(returns) / (len(returns) + 1e-4)  # (the 1e-4 prior, negligible)
        expected.append(min(1.0 / math.sqrt(var + 1e-8), 10.0))
        got.append(float(env.step(torch.zeros(2, 1)).reward[0]))
        if t % 3 == 0:
            g = 0.0
    np.testing.assert_allclose(got, expected, rtol=1e-3)


def test_frozen_normaliser_uses_saved_statistics_without_changing_them():
    training = NormalizedEnv(ConstantEnv(), obs=True, reward=True)
    training.reset(seed=0)
    for _ in range(5):
        training.step(torch.zeros(2, 1))
    saved = training.statistics()
    frozen = NormalizedEnv(ConstantEnv(), obs=True, reward=False, frozen=True)
    frozen.load_statistics(saved)
    frozen.reset(seed=0)
    for _ in range(4):
        step = frozen.step(torch.zeros(2, 1))
    assert torch.equal(frozen.obs_rms.mean, saved["obs"]["mean"])
    assert torch.equal(frozen.obs_rms.var, saved["obs"]["var"])
    mean, var = saved["obs"]["mean"], saved["obs"]["var"]
    expected = ((torch.tensor([4.0, 8.0]) - mean) / torch.sqrt(var + 1e-8)).clamp(-10, 10).float()
    torch.testing.assert_close(step.obs[0], expected)


class RecordingVectorEnv:
    """A one-env vector env with a Box(−1, 1) action space that records the actions it is sent."""

    num_envs = 1
    single_observation_space = gym.spaces.Box(-1, 1, (1,))
    single_action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def __init__(self):
        self.sent = []

    def reset(self, seed=None):
        return torch.zeros(1, 1), {}

    def step(self, actions):
        self.sent.append(actions.clone())
        false = torch.zeros(1, dtype=torch.bool)
        return torch.zeros(1, 1), torch.zeros(1), false, false, {}


def test_actions_are_clipped_only_on_their_way_to_the_env():
    env = RecordingVectorEnv()
    agent_env = AgentEnv(env, torch.device("cpu"))
    actions = torch.tensor([[3.0, -0.25]])
    agent_env.step(actions)
    assert torch.equal(env.sent[0], torch.tensor([[1.0, -0.25]]))
    assert torch.equal(actions, torch.tensor([[3.0, -0.25]]))  # the stored sample is untouched


def tiny(env_id, tmp_path, **overrides):
    values = dict(env_id=env_id, num_envs=2, num_steps=64, minibatch_size=64, total_steps=256, update_epochs=2,
                  out=str(tmp_path), progress=False, checkpoint_every=1, plot_every_seconds=1e9, seed=3)
    return TrainConfig(**{**values, **overrides})


def test_presets_of_the_continuous_families():
    assert env_family("Pendulum-v1") == "pendulum"
    assert env_family("HalfCheetah-v5") == env_family("Hopper-v5") == "mujoco"
    assert env_family("MountainCarContinuous-v0") == "continuous"
    assert env_family("CartPole-v1") == "classic"


def test_normaliser_statistics_are_saved_and_restored_on_resume(tmp_path):
    n, t = 2, 64
    train(tiny("Pendulum-v1", tmp_path, total_steps=1024), stop_after_iterations=2)
    saved = load_checkpoint(tmp_path / "checkpoint.pt")["state"]["normalizers"]
    # the observation statistics saw the first reset and every step; the return statistics every step
    assert float(saved["obs"]["count"]) == pytest.approx(1e-4 + n + 2 * n * t)
    assert float(saved["reward"]["count"]) == pytest.approx(1e-4 + 2 * n * t)
    assert saved["obs"]["mean"].shape == (3,) and float(saved["obs"]["var"].min()) > 0
    resume = load_checkpoint(tmp_path / "checkpoint.pt")
    train(tiny("Pendulum-v1", tmp_path, total_steps=1024), resume=resume, stop_after_iterations=1)
    again = load_checkpoint(tmp_path / "checkpoint.pt")["state"]["normalizers"]
    # restored, then the fresh episodes' first observations and one more rollout: counts add up
    assert float(again["obs"]["count"]) == pytest.approx(1e-4 + n + 2 * n * t + n + n * t)
    assert float(again["reward"]["count"]) == pytest.approx(1e-4 + 3 * n * t)


def test_a_short_pendulum_run_improves(tmp_path):
    """The Pendulum preset for 24 updates (49 152 steps; 20-40 s on a loaded 2-core CPU) at a
    constant learning rate: the episodes ending in the last three updates average at least 250
    more than in the first three (a random policy scores about −1200; with seed 1 the last three
    average about −740; the preset's full run reaches about −160)."""
    config = TrainConfig(env_id="Pendulum-v1", total_steps=24 * 2048, anneal_lr=False, out=str(tmp_path),
                         progress=False, plot_every_seconds=1e9, seed=1)
    train(config)
    returns = [r["charts/episodic_return"] for r in read_metrics(tmp_path / "metrics.jsonl")
               if "charts/episodic_return" in r]
    first, last = np.mean(returns[:3]), np.mean(returns[-3:])
    assert last > first + 250, (first, last)


def test_a_few_updates_on_half_cheetah(tmp_path):
    pytest.importorskip("mujoco")
    summary = train(tiny("HalfCheetah-v5", tmp_path, total_steps=128, num_steps=32, minibatch_size=32))
    agent = summary["agent"]
    assert agent.continuous and agent.n_actions == 6 and summary["global_step"] == 128
    assert all(math.isfinite(h["losses/policy_loss"]) for h in summary["history"])
    payload = load_checkpoint(tmp_path / "checkpoint.pt")
    assert payload["state"]["normalizers"]["obs"]["mean"].shape == (17,)
    scores = evaluate_policy(agent, "HalfCheetah-v5", episodes=2, cap=None, max_steps=1000,
                             normalizers=payload["state"]["normalizers"])
    assert len(scores) == 2 and all(math.isfinite(s) for s in scores)
