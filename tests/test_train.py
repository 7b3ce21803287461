"""The game trainer: its bootstrap at episode ends, its command line, its saved configuration."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs.run_support
import envs.train
from core.config import config_to_dict
from core.metrics import read_metrics
from envs.config import PRESET_NOTES, PRESETS, TrainConfig, parse_config, resolve
from envs.networks import ActorCritic
from envs.train import main, train

# ---- the bootstrap: V(final obs) at a truncation, nothing at a termination -------------------


class ScheduleEnv(gym.Env):
    """Episodes of known lengths that end alternately by termination and by truncation.

    Episode j lasts 2 + j % 3 steps and ends by termination when j is even, by truncation when
    j is odd; the seed only picks the first j. The observation is [steps so far / 10, j % 4 / 4],
    so the final observation of an episode and the first of the next differ; the reward at
    step k of an episode is 1 + k / 10. Actions do not matter: the run is deterministic.
    """

    observation_space = gym.spaces.Box(-10, 10, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self):
        self.episode = -1

    def _obs(self):
        return np.array([self.k / 10, (self.episode % 4) / 4], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode = seed % 2 if seed is not None else self.episode + 1
        self.k = 0
        return self._obs(), {}

    def step(self, action):
        self.k += 1
        ended = self.k >= 2 + self.episode % 3
        terminated, truncated = ended and self.episode % 2 == 0, ended and self.episode % 2 == 1
        return self._obs(), 1 + self.k / 10, terminated, truncated, {}


SCHEDULE_ID = "proximal-tests/Schedule-v0"
if SCHEDULE_ID not in gym.registry:
    gym.register(SCHEDULE_ID, entry_point=ScheduleEnv)


def known_value(obs: torch.Tensor) -> torch.Tensor:
    """The critic of the test: V(s) = 3·s₀ + s₁ + 0.5, nowhere 0 on these observations."""
    return 3 * obs[..., 0].float() + obs[..., 1].float() + 0.5


class KnownCritic(ActorCritic):
    """A random policy (the actions do not matter) with the critic `known_value`."""

    def forward(self, obs):
        return self.actor(obs.float()), known_value(obs)

    def value(self, obs):
        return known_value(obs)


def plain_advantages(gamma, lam, num_envs, num_steps, seed, bootstrap):
    """The same rollout played by hand on single envs, GAE by the textbook backward loop.

    `bootstrap(kind, final_obs, reset_obs)` gives the value added (times γ) after an episode
    ends ("terminated" or "truncated"): the right rule and the two wrong ones under test.
    """
    advantages = []
    for i in range(num_envs):
        env = ScheduleEnv()
        obs, _ = env.reset(seed=seed + i)  # the vector env seeds env i with seed + i
        steps = []
        for _ in range(num_steps):
            s = obs
            obs, reward, terminated, truncated, _ = env.step(0)
            final = obs
            if terminated or truncated:
                obs, _ = env.reset()
            kind = "terminated" if terminated else "truncated" if truncated else None
            steps.append((s, reward, kind, final, obs))
        running, row = 0.0, [0.0] * num_steps
        for t in reversed(range(num_steps)):
            s, reward, kind, final, next_obs = steps[t]
            v = float(known_value(torch.tensor(s)))
            if kind is None:
                delta = reward + gamma * float(known_value(torch.tensor(next_obs))) - v
                running = delta + gamma * lam * running
            else:
                running = reward + gamma * bootstrap(kind, final, next_obs) - v
            row[t] = running
        advantages += row
    return torch.tensor(advantages)


def test_the_loop_bootstraps_from_the_final_observation_at_truncation_only(tmp_path, monkeypatch):
    """The batch the trainer hands `ppo_update` against the same rollout computed by hand: a
    truncated episode bootstraps from V(its final observation), a terminated one from 0. Using
    V(the next episode's first observation), or bootstrapping at a termination, gives
    advantages that differ by more than the tolerance (checked), so either mistake fails."""
    num_envs, num_steps, gamma, lam = 2, 12, 0.9, 0.8
    captured = []

    def capture(evaluate, batch, optimizer, config, **kwargs):
        captured.append({name: tensor.clone() for name, tensor in batch.items()})
        return {}

    monkeypatch.setattr(envs.train, "ppo_update", capture)
    monkeypatch.setattr(envs.run_support, "build_agent", lambda config, obs_shape, n_actions: KnownCritic(obs_shape, 2))
    config = TrainConfig(env_id=SCHEDULE_ID, num_envs=num_envs, num_steps=num_steps, minibatch_size=8,
                         total_steps=num_envs * num_steps, gamma=gamma, gae_lambda=lam, seed=1, device="cpu",
                         progress=False, plot_every_seconds=1e9, out=str(tmp_path))
    train(config)
    (batch,) = captured

    def value(obs):
        return float(known_value(torch.tensor(obs)))

    right = plain_advantages(gamma, lam, num_envs, num_steps, config.seed,
                             lambda kind, final, reset: value(final) if kind == "truncated" else 0.0)
    torch.testing.assert_close(batch["advantages"], right, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batch["returns"], right + batch["values"], rtol=1e-5, atol=1e-5)
    wrong_obs = plain_advantages(gamma, lam, num_envs, num_steps, config.seed,
                                 lambda kind, final, reset: value(reset) if kind == "truncated" else 0.0)
    wrong_termination = plain_advantages(gamma, lam, num_envs, num_steps, config.seed,
                                         lambda kind, final, reset: value(final))
    for wrong in (wrong_obs, wrong_termination):
        assert (wrong - right).abs().max() > 0.1


# ---- the command line ---------------------------------------------------------------------

LLM_ONLY = ("--loss-reduction", "--loss-constant", "--ref-kl-coef", "--ref-kl-estimator", "--clip-coef-high")


def test_help_lists_only_what_applies_to_games(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in LLM_ONLY:
        assert flag not in text, flag
    for shown in ("--objective {clip,kl_penalty,clip+kl_penalty,ratio}",
                  "--kl-controller {fixed,adaptive,proportional}", "--kl-coef", "--kl-controller-target",
                  "--target-kl", "--anneal-lr, --no-anneal-lr", "--arch {auto,mlp,mlp_shared,cnn}"):
        assert shown in text, shown
    for family in PRESETS:  # fields left None show where their value comes from
        assert f"  {family} " in text


def test_a_literal_flag_refuses_a_bad_value_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--objective", "clipped"])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --objective: invalid choice: 'clipped'" in last and "'kl_penalty'" in last


def test_presets_fill_only_the_fields_not_given():
    config, _ = parse_config(["--env", "CartPole-v1", "--clip-coef", "0.3"])
    assert config.clip_coef == 0.3  # given
    for name, value in PRESETS["classic"].items():
        if name != "clip_coef":
            assert getattr(config, name) == value, name
    flappy, _ = parse_config([])
    assert {name: getattr(flappy, name) for name in PRESETS["flappy"]} == PRESETS["flappy"]
    assert TrainConfig().num_envs is None  # the dataclass default: "the preset's value"


SMALL_RUN = ["--env", "CartPole-v1", "--num-envs", "2", "--num-steps", "64", "--minibatch-size", "64",
             "--total-steps", "256", "--device", "cpu", "--no-progress", "--plot-every-seconds", "1e9"]


def test_a_run_prints_and_saves_its_resolved_configuration(tmp_path, capsys):
    argv = [*SMALL_RUN, "--out", str(tmp_path)]
    main(argv)
    saved = json.loads((tmp_path / "config.json").read_text())
    resolved, _ = parse_config(argv)
    assert saved == config_to_dict(resolved)
    assert saved["learning_rate"] == PRESETS["classic"]["learning_rate"] and saved["num_envs"] == 2
    err = capsys.readouterr().err
    assert f"preset 'classic': {PRESET_NOTES['classic']}" in err and set(PRESET_NOTES) == set(PRESETS)
    assert "configuration:" in err and f"learning_rate        = {PRESETS['classic']['learning_rate']!r}" in err


def test_no_anneal_lr_keeps_the_learning_rate(tmp_path):
    # None takes the preset's: the annealed rate in flappy, a constant one in classic
    assert resolve(TrainConfig(env_id="flappy")).anneal_lr is True
    assert resolve(TrainConfig(env_id="CartPole-v1")).anneal_lr is False
    assert parse_config(["--no-anneal-lr"])[0].anneal_lr is False
    rates = {}
    for flag in ("--anneal-lr", "--no-anneal-lr", None):
        main([*SMALL_RUN, *([flag] if flag else []), "--out", str(tmp_path / str(flag))])
        rates[flag] = [r["charts/learning_rate"] for r in read_metrics(tmp_path / str(flag) / "metrics.jsonl")]
    lr = PRESETS["classic"]["learning_rate"]
    assert rates["--no-anneal-lr"] == rates[None] == [lr, lr]
    assert rates["--anneal-lr"] == pytest.approx([lr, lr / 2])  # 1 − iteration / 2 updates


def test_resume_names_the_flags_it_ignores(tmp_path, capsys):
    main([*SMALL_RUN, "--out", str(tmp_path / "run")])
    capsys.readouterr()
    config, resume_dir = parse_config(["--resume", str(tmp_path / "run"), "--learning-rate", "0.1", "--num-envs", "4",
                                       "--total-steps", "512", "--out", "elsewhere"])
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["--resume: ignoring --learning-rate, --num-envs, --out (the run's saved configuration is used)"]
    assert resume_dir == str(tmp_path / "run") and config.out == str(tmp_path / "run")
    assert config.total_steps == 512  # applies on resume
    assert config.learning_rate == PRESETS["classic"]["learning_rate"] and config.num_envs == 2  # the saved ones
    parse_config(["--resume", str(tmp_path / "run"), "--total-steps", "512", "--no-progress"])
    assert capsys.readouterr().err == ""  # nothing ignored, nothing said



# ---- speed without changing the computation: the activation, the threads -------------------------


def test_cpu_threads_follow_the_measured_choice_and_the_flag(monkeypatch):
    from envs.run_support import cpu_threads

    monkeypatch.setattr(envs.run_support.os, "sched_getaffinity", lambda pid: set(range(2)), raising=False)
    assert cpu_threads(0, "mlp") == (1, 2)  # collect on one, update on two
    assert cpu_threads(0, "mlp", world=2) == (1, 1)  # two processes share the two cores
    assert cpu_threads(0, "cnn") == (2, 2)
    assert cpu_threads(3, "mlp") == (3, 3)
    monkeypatch.setattr(envs.run_support.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert cpu_threads(0, "mlp") == (1, 2) and cpu_threads(0, "cnn") == (16, 16)


def test_the_initial_weights_do_not_depend_on_the_threads(tmp_path):
    """Orthogonal init's QR differs in the last bit between 1 and 2 threads; the run builds its agent
    on one, so a seed starts from the same weights on any machine."""
    weights = []
    for threads in (2, 1):
        torch.set_num_threads(threads)
        run = envs.run_support.Run(resolve(TrainConfig(env_id="CartPole-v1", num_envs=2, progress=False,
                                                       out=str(tmp_path / str(threads)))))
        weights.append(torch.cat([p.detach().flatten() for p in run.agent.parameters()]))
        run.finish()
    torch.set_num_threads(1)
    assert torch.equal(weights[0], weights[1])


@pytest.mark.parametrize("arch, obs_shape, continuous", [("mlp", (12,), False), ("mlp_shared", (12,), False),
                                                         ("mlp", (5,), True), ("cnn", (4, 84, 84), False)])
def test_greedy_action_is_acts_greedy_action(arch, obs_shape, continuous):
    """Evaluation plays `greedy_action` (the policy's layers only); it must be the action `act` takes
    greedily, the argmax of the full forward pass's logits (the Gaussian's mean)."""
    torch.manual_seed(0)
    agent = ActorCritic(obs_shape, 3, arch=arch, continuous=continuous)
    with torch.no_grad():  # sharper logits than at init, so that every action is someone's argmax
        for p in agent.parameters():
            p.mul_(4.0)
    obs = torch.randint(0, 256, (64, *obs_shape), dtype=torch.uint8) if arch == "cnn" else torch.randn(64, *obs_shape)
    expected = agent.act(obs, greedy=True)[0]
    assert torch.equal(agent.greedy_action(obs), expected)
    if not continuous:
        assert len(set(expected.tolist())) > 1


def test_compile_is_on_for_long_mlp_runs_on_the_cpu_unless_told():
    from envs.run_support import COMPILE_FROM_STEPS, use_compile

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_compile(None, "mlp", cpu, COMPILE_FROM_STEPS)
    assert not use_compile(None, "mlp", cpu, COMPILE_FROM_STEPS - 1)
    assert not use_compile(None, "cnn", cpu, 10**8) and not use_compile(None, "mlp", cuda, 10**8)
    assert use_compile(True, "cnn", cuda, 1) and not use_compile(False, "mlp", cpu, 10**8)
    assert resolve(TrainConfig()).total_steps >= COMPILE_FROM_STEPS  # the default run compiles


def test_a_negative_thread_count_is_refused_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*SMALL_RUN, "--cpu-threads", "-1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: cpu_threads must be ≥ 0 (0 = auto), got -1"
