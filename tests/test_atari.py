"""The Atari builders on Breakout (lives, FIRE) with the standard preprocessing."""

from __future__ import annotations

import importlib.util

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.wrappers import (
    AtariPreprocessing,
    ClipReward,
    FrameStackObservation,
    RecordEpisodeStatistics,
)

from envs.atari import (
    EpisodicLifeEnv,
    FireResetEnv,
    make_atari_env,
    make_atari_vector_env,
    register_ale,
)

GAME = "ALE/Breakout-v5"
needs_cv2 = pytest.mark.skipif(
    importlib.util.find_spec("cv2") is None,
    reason="gymnasium's AtariPreprocessing needs OpenCV (opencv-python-headless)",
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def wrappers_of(env):
    found = []
    while hasattr(env, "env"):
        found.append(type(env))
        env = env.env
    return found


@needs_cv2
def test_standard_preprocessing_stack():
    env = make_atari_env(GAME)
    layers = wrappers_of(env)
    for wrapper in (FrameStackObservation, ClipReward, FireResetEnv, EpisodicLifeEnv,
                    AtariPreprocessing, RecordEpisodeStatistics):
        assert wrapper in layers
    # outermost first: stack, clip, fire, life, preprocessing, statistics
    order = [layers.index(w) for w in (FrameStackObservation, ClipReward, FireResetEnv,
                                       EpisodicLifeEnv, AtariPreprocessing,
                                       RecordEpisodeStatistics)]
    assert order == sorted(order)
    assert env.unwrapped._frameskip == 1  # skipping happens in AtariPreprocessing
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    assert env.observation_space.shape == (4, 84, 84)
    env.close()


@needs_cv2
def test_episodic_life_and_clipped_rewards():
    env = make_atari_env(GAME)
    env.reset(seed=0)
    ale = env.unwrapped.ale
    lives_at_start = ale.lives()
    rng = np.random.default_rng(0)
    rewards = []
    for _ in range(2000):
        obs, reward, terminated, truncated, info = env.step(int(rng.integers(4)))
        rewards.append(reward)
        if terminated:
            break
    assert terminated and ale.lives() == lives_at_start - 1  # one life lost, game not over
    frame = ale.getEpisodeFrameNumber()
    env.reset()
    assert ale.lives() == lives_at_start - 1  # reset continued the same game ...
    assert ale.getEpisodeFrameNumber() > frame  # ... from where it was
    assert set(rewards) <= {-1.0, 0.0, 1.0}
    env.reset(seed=1)  # a seed always starts a new game
    assert ale.lives() == lives_at_start
    env.close()


@needs_cv2
def test_options_switch_layers_off():
    env = make_atari_env(GAME, frame_stack=1, episodic_life=False, clip_rewards=False,
                         fire_reset=False)
    layers = wrappers_of(env)
    assert EpisodicLifeEnv not in layers and ClipReward not in layers
    assert FireResetEnv not in layers
    obs, _ = env.reset(seed=0)
    assert obs.shape == (1, 84, 84)
    env.close()


@needs_cv2
def test_vector_env_same_step_autoreset():
    venv = make_atari_vector_env(GAME, 2)
    assert venv.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
    seen_end = False
    for _ in range(400):
        obs, reward, terminated, truncated, info = venv.step(venv.action_space.sample())
        for i in np.flatnonzero(terminated | truncated):
            seen_end = True
            assert info["_final_obs"][i] and info["final_obs"][i].shape == (4, 84, 84)
    assert seen_end
    venv.close()


@needs_cv2
def test_vector_env_with_torch_tensors():
    venv = make_atari_vector_env(GAME, 2, device="cpu")
    obs, _ = venv.reset(seed=0)
    assert isinstance(obs, torch.Tensor) and obs.shape == (2, 4, 84, 84)
    assert obs.dtype == torch.uint8
    seen_end = False
    for _ in range(400):
        obs, reward, terminated, truncated, info = venv.step(torch.randint(0, 4, (2,)))
        assert reward.dtype == torch.float32 and terminated.dtype == torch.bool
        assert info["final_obs"].shape == (2, 4, 84, 84)
        done = terminated | truncated
        assert torch.equal(info["_final_obs"], done)
        assert torch.equal(info["final_obs"][~done], obs[~done])
        seen_end |= bool(done.any())
    assert seen_end
    venv.close()


@needs_cv2
def test_agent_interface_over_atari():
    from envs.vector import make_vector_env

    envs = make_vector_env(GAME, 2, torch.device("cpu"))
    obs = envs.reset(seed=0)
    assert isinstance(obs, torch.Tensor) and obs.shape == (2, 4, 84, 84)
    step = envs.step(torch.zeros(2, dtype=torch.long))
    assert step.obs.shape == step.final_obs.shape == (2, 4, 84, 84)
    envs.close()


def test_bad_arguments():
    with pytest.raises(ValueError, match="vectorization"):
        make_atari_vector_env(GAME, 2, vectorization="threads")
    with pytest.raises(ValueError, match="num_envs"):
        make_atari_vector_env(GAME, 0)


def test_life_and_fire_wrappers_on_the_raw_game():
    """The two wrappers written here, on ALE's own v5 env (frame skip 4, no OpenCV needed)."""
    register_ale()
    env = FireResetEnv(EpisodicLifeEnv(gym.make(GAME, repeat_action_probability=0.0)))
    env.reset(seed=0)
    ale = env.unwrapped.ale
    lives = ale.lives()
    rng = np.random.default_rng(1)
    for _ in range(3000):
        *_, terminated, truncated, _ = env.step(int(rng.integers(4)))
        if terminated:
            break
    assert terminated and ale.lives() == lives - 1  # a life lost ends the agent's episode
    frame = ale.getEpisodeFrameNumber()
    env.reset()
    assert ale.lives() == lives - 1 and ale.getEpisodeFrameNumber() > frame  # same game
    env.close()
    with pytest.raises(ValueError, match="FIRE"):
        FireResetEnv(gym.make("ALE/Freeway-v5"))  # a game without a FIRE action


def test_native_backend_gives_the_wrappers_observation_format():
    from envs.vector import make_vector_env

    for backend in ("native", "wrappers"):
        if backend == "wrappers" and importlib.util.find_spec("cv2") is None:
            continue
        envs = make_vector_env(GAME, 3, torch.device("cpu"), atari_backend=backend)
        obs = envs.reset(seed=0)
        step = envs.step(torch.zeros(3, dtype=torch.long))
        for frames in (obs, step.obs, step.final_obs):
            assert frames.shape == (3, 4, 84, 84) and frames.dtype == torch.uint8, backend
        assert int(obs.max()) > 0  # real frames, not an empty buffer
        envs.close()


def test_native_backend_reports_whole_game_returns():
    """Against ale-py's vector env without life-loss signals (the same emulator, same seed and
    actions): our episodes end at every lost life, but a game ends, with the raw (unclipped)
    sum of its rewards as its return, exactly where the raw env's episode does."""
    from ale_py.vector_env import AtariVectorEnv

    from envs.vector import make_vector_env

    n, steps, seed = 2, 1500, 3
    ours = make_vector_env(GAME, n, torch.device("cpu"), atari_backend="native")
    raw = AtariVectorEnv("breakout", n, autoreset_mode="SameStep", reward_clipping=False,
                         repeat_action_probability=0.0)
    ours.reset(seed=seed)
    raw.reset(seed=seed)
    rng = np.random.default_rng(0)
    raw_returns, expected, reported, life_losses = np.zeros(n), [], [], 0
    for _ in range(steps):
        actions = rng.integers(0, 4, n)
        step = ours.step(torch.as_tensor(actions))
        _, reward, terminated, truncated, _ = raw.step(actions)
        assert np.array_equal(step.reward.numpy(), np.clip(reward, -1, 1))  # the agent learns from clipped rewards
        raw_returns += reward
        game_over = terminated | truncated
        assert np.array_equal(step.game_over.numpy(), game_over)
        expected += list(raw_returns[game_over])
        reported += list(step.episode_return.numpy()[game_over])
        raw_returns[game_over] = 0
        life_losses += int((step.terminated.numpy() & ~game_over).sum())
    assert len(expected) >= 4 and life_losses >= 3 * len(expected)  # Breakout: 5 lives per game
    assert reported == expected and max(expected) > 0
    ours.close()
    raw.close()
