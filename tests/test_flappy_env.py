"""The single Flappy Bird env: gymnasium API, rules, rewards, ceiling, rendering, bad input."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.flappy_bird import FlappyBirdEnv, autopilot, decode_features, record_video, run_episode
from envs.flappy_bird.record import VideoWriter
from envs.flappy_bird.rules import BIRD_START_Y, GROUND_Y, MAX_EPISODE_STEPS, FlappyConfig

IDS = [envs.FLAPPY_ID, envs.FLAPPY_PIXELS_ID]


def raw(obs):
    return decode_features(obs)


def play(env, policy, seed, max_steps=100_000):
    """Play one episode; returns the list of (obs, reward, terminated, truncated, info)."""
    obs, _ = env.reset(seed=seed)
    steps = []
    for _ in range(max_steps):
        obs, reward, terminated, truncated, info = env.step(policy(obs))
        steps.append((obs, reward, terminated, truncated, info))
        if terminated or truncated:
            break
    return steps


@pytest.mark.parametrize("env_id", IDS)
def test_check_env_passes(env_id):
    env = gym.make(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning fails the test
        check_env(env.unwrapped)  # also makes the env in every render mode (headless)
    env.close()


@pytest.mark.parametrize("env_id", IDS)
def test_registration(env_id):
    spec = gym.spec(env_id)
    assert spec.max_episode_steps == MAX_EPISODE_STEPS
    assert spec.vector_entry_point is not None
    env = gym.make(env_id, pipe_gap=120)
    assert env.unwrapped.config.pipe_gap == 120


def test_same_seed_same_episode():
    policy_rng = np.random.default_rng(0)
    actions = (policy_rng.random(5000) < 0.1).astype(int).tolist()
    episodes = []
    for _ in range(2):
        env = gym.make(envs.FLAPPY_ID)
        it = iter(actions)
        episodes.append(play(env, lambda obs, it=it: next(it), seed=11))
    assert len(episodes[0]) == len(episodes[1])
    for a, b in zip(*episodes):
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1:4] == b[1:4]
    other = gym.make(envs.FLAPPY_ID)
    other.reset(seed=12)
    env = gym.make(envs.FLAPPY_ID)
    env.reset(seed=11)
    # The gap heights differ with the seed (they show once the pipes scroll in).
    for t in range(60):
        a, *_ = env.step(0 if t % 6 else 1)
        b, *_ = other.step(0 if t % 6 else 1)
    assert not np.array_equal(a[3:9], b[3:9])


def test_reset_without_seed_continues_the_stream():
    env = FlappyBirdEnv()

    def gaps_after_reset(seed=None):
        env.reset(seed=seed)
        return [p[1] for p in env._pipes[1:]]

    first = gaps_after_reset(seed=5)
    second = gaps_after_reset()
    assert gaps_after_reset(seed=5) == first and gaps_after_reset() == second
    assert first != second


def test_initial_state():
    env = FlappyBirdEnv()
    obs, info = env.reset(seed=0)
    assert info == {"score": 0}
    r = raw(obs)
    # No pipe on screen yet: all three reported at an edge with an open gap.
    np.testing.assert_array_equal(r[:9], [-52, 0, GROUND_Y, 288, 0, GROUND_Y, 288, 0, GROUND_Y])
    np.testing.assert_array_equal(r[9:], [BIRD_START_Y, -9, 45])
    assert obs.dtype == np.float32 and obs.shape == (12,)


def test_physics_of_a_flap_and_a_fall():
    env = FlappyBirdEnv()
    env.reset(seed=0)
    ys, speeds, rots = [], [], []
    for action in [0, 0, 1, 0, 0] + [0] * 20:
        obs, *_ = env.step(action)
        y, v, rot = raw(obs)[9:]
        ys.append(y), speeds.append(v), rots.append(rot)
    # Starts at -9 (as after a flap): -8, -7, flap → -9 (no gravity that frame), -8, -7 ...
    assert speeds[:5] == [-8, -7, -9, -8, -7]
    assert ys[:3] == [BIRD_START_Y - 8, BIRD_START_Y - 15, BIRD_START_Y - 24]
    assert max(speeds) == 10  # terminal fall speed
    assert rots[:4] == [42, 39, 45, 42] and min(rots) >= -90


def test_reward_table_and_score():
    cfg = FlappyConfig()
    alive, alive_and_pipe, crashed = cfg.rewards
    steps = play(FlappyBirdEnv(max_score=3), autopilot, seed=2)
    rewards = [s[1] for s in steps]
    scores = [s[4]["score"] for s in steps]
    assert set(rewards) == {alive, alive_and_pipe}
    # +1 exactly on the frames where the score goes up, and nowhere else
    increments = np.diff([0] + scores)
    assert [r == alive_and_pipe for r in rewards] == [bool(i) for i in increments]
    assert scores[-1] == 3 and steps[-1][3] and not steps[-1][2]  # score cap truncates
    # Never flapping: the bird falls to the ground, the last reward is the crash.
    steps = play(FlappyBirdEnv(), lambda obs: 0, seed=2)
    assert steps[-1][1] == crashed and steps[-1][2] and not steps[-1][3]
    assert raw(steps[-1][0])[9] == GROUND_Y - 24  # standing on the ground
    assert all(s[1] == alive for s in steps[:-1])


def test_custom_rewards():
    env = FlappyBirdEnv(reward_alive=0.0, reward_pipe=5.0, reward_crash=-10.0)
    steps = play(env, lambda obs: 0, seed=0)
    assert [s[1] for s in steps[:-1]] == [0.0] * (len(steps) - 1)
    assert steps[-1][1] == -10.0


def test_ceiling_clamp_never_traps_the_bird():
    env = FlappyBirdEnv(ceiling="clamp")
    env.reset(seed=0)
    for _ in range(30):  # flapping all the time: the bird reaches the top and stays there
        obs, reward, terminated, truncated, _ = env.step(1)
        y, v, _ = raw(obs)[9:]
        assert y >= 0 and not terminated
    assert y == 0 and v == 0  # at the ceiling, upward speed stopped
    ys = []
    for _ in range(8):  # released: it falls from the very next frame
        obs, *_ = env.step(0)
        ys.append(raw(obs)[9])
    assert ys == sorted(ys) and ys[0] > 0 and len(set(ys)) == len(ys)


def test_ceiling_is_no_way_past_a_pipe():
    steps = play(FlappyBirdEnv(ceiling="clamp"), lambda obs: 1, seed=3)
    obs, reward, terminated, truncated, info = steps[-1]
    assert terminated and info["score"] == 0 and raw(obs)[9] == 0
    assert 45 < len(steps) < 110  # it hits the first pipe, which reaches x = 91 at frame 100


def test_ceiling_crash():
    steps = play(FlappyBirdEnv(ceiling="crash"), lambda obs: 1, seed=3)
    obs, reward, terminated, truncated, info = steps[-1]
    assert terminated and reward == -1.0 and raw(obs)[9] == 0
    assert len(steps) < 40  # long before the first pipe


def test_observation_bounds_hold_in_long_play():
    env = FlappyBirdEnv()
    rng = np.random.default_rng(0)
    space = env.observation_space
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        for _ in range(600):
            obs, _, terminated, truncated, _ = env.step(int(rng.random() < 0.15))
            assert space.contains(obs)
            if terminated or truncated:
                env.reset()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_autopilot_passes_twenty_pipes(seed):
    """The game is playable: a scripted player reading only the features passes 20 pipes."""
    steps = play(FlappyBirdEnv(max_score=20), autopilot, seed=seed)
    assert steps[-1][4]["score"] == 20 and steps[-1][3] and not steps[-1][2]


def test_bad_actions_raise():
    env = FlappyBirdEnv()
    env.reset(seed=0)
    for action in (1, 0, True, np.int64(1), np.array(0), np.uint8(1)):
        env.step(action)
    for action in (2, -1, np.int64(3)):
        with pytest.raises(ValueError, match="0 .*or 1"):
            env.step(action)
    for action in (0.5, 1.0, "1", [1], np.array([1]), None):
        with pytest.raises(TypeError):
            env.step(action)


def test_step_after_end_raises():
    env = FlappyBirdEnv()
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)
    play(env, lambda obs: 0, seed=0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)
    env.reset()
    env.step(0)  # fine again


def test_invalid_config_through_make():
    with pytest.raises(ValueError, match="pipe_gap"):
        gym.make(envs.FLAPPY_ID, pipe_gap=0)
    with pytest.raises(ValueError, match="pipe_speed"):
        FlappyBirdEnv(pipe_speed=-4)
    with pytest.raises(ValueError, match="obs_type"):
        FlappyBirdEnv(obs_type="lidar")


def test_rgb_array_rendering_headless():
    env = gym.make(envs.FLAPPY_ID, render_mode="rgb_array")
    env.reset(seed=0)
    for _ in range(70):  # the first pipe has scrolled in by now
        env.step(autopilot(env.unwrapped._observe()))
    frame = env.render()
    assert frame.shape == (512, 288, 3) and frame.dtype == np.uint8
    sky = np.array([112, 197, 230])
    assert (frame[20, 5] == sky).all()  # top-left corner is sky
    pipe_x = int(raw(env.unwrapped._observe())[3])
    assert 0 < pipe_x < 250
    assert not (frame[5, pipe_x + 20] == sky).all()  # the upper pipe is drawn
    env.close()


def test_pixel_observation_is_the_frame():
    env = FlappyBirdEnv(obs_type="pixels", render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (512, 288, 3) and obs.dtype == np.uint8
    assert env.observation_space.contains(obs)
    obs2, *_ = env.step(1)
    assert not np.array_equal(obs, obs2)


def test_make_flappy_pixels_standard_preprocessing():
    from envs.flappy_bird import make_flappy_pixels

    env = make_flappy_pixels()
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    for _ in range(3):
        obs, *_ = env.step(1)
    assert env.observation_space.contains(obs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the checker advises checking unwrapped envs
        check_env(env, skip_render_check=True)


def test_record_video_gif_holds_every_frame(tmp_path):
    from PIL import Image

    result = record_video(envs.FLAPPY_ID, autopilot, tmp_path / "run" / "bird.gif", seed=1,
                          max_frames=12)
    assert result["frames"] == 13  # the reset frame and 12 steps
    # the same episode drawn again, frame by frame, for comparison
    env = gym.make(envs.FLAPPY_ID, render_mode="rgb_array")
    obs, _ = env.reset(seed=1)
    drawn = [env.render()]
    for _ in range(12):
        obs, *_ = env.step(autopilot(obs))
        drawn.append(env.render())
    with Image.open(result["path"]) as gif:
        assert gif.size == (288, 512) and gif.n_frames == 13
        for i, expected in enumerate(drawn):
            gif.seek(i)
            frame = np.asarray(gif.convert("RGB"), dtype=np.int16)
            # quantised to the first frame's palette: close to the drawn colours everywhere
            assert np.abs(frame - expected).mean() < 4.0, i
    env = gym.make(envs.FLAPPY_ID)  # no rgb_array render mode
    with pytest.raises(ValueError, match="rgb_array"):
        record_video(env, autopilot, tmp_path / "x.gif", seed=0, max_frames=2)
    with pytest.raises(ValueError, match=r"\.gif or \.mp4"):
        record_video(envs.FLAPPY_ID, autopilot, tmp_path / "x.avi", seed=0, max_frames=2)


def test_video_writer_streams_frames_to_the_file(tmp_path):
    """Each frame reaches the file when it is appended (memory stays flat), GIF and MP4 alike."""
    import imageio_ffmpeg

    frames = [np.full((24, 17, 3), 40 * i, dtype=np.uint8) for i in range(6)]  # odd width: MP4 pads it
    gif = VideoWriter(tmp_path / "a.gif", fps=10)
    sizes = []
    for frame in frames:
        gif.append(frame)
        sizes.append((tmp_path / "a.gif").stat().st_size)
    gif.close()
    assert all(b > a for a, b in zip(sizes, sizes[1:])), sizes  # the file grew with every frame
    with VideoWriter(tmp_path / "a.mp4", fps=10) as mp4:
        for frame in frames:
            mp4.append(frame)
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "a.mp4"))
    meta = next(reader)
    decoded = [np.frombuffer(f, dtype=np.uint8) for f in reader]
    assert meta["size"] == (18, 24) and len(decoded) == len(frames)
    for frame, raw in zip(frames, decoded):  # flat grey frames survive H.264 almost exactly
        assert abs(float(raw.reshape(24, 18, 3)[:, :17].mean()) - float(frame.mean())) < 3.0


def test_play_smoke(monkeypatch):
    """`python -m envs.flappy_bird.play`: flaps on space, quits on Esc (headless window)."""
    import pygame

    from envs.flappy_bird import play

    script = [[pygame.event.Event(pygame.KEYDOWN, key=pygame.K_SPACE)], [], [],
              [pygame.event.Event(pygame.KEYDOWN, key=pygame.K_UP)], [],
              [pygame.event.Event(pygame.KEYDOWN, key=pygame.K_ESCAPE)]]
    calls = iter(script)
    monkeypatch.setattr(pygame.event, "get", lambda *args, **kwargs: next(calls))
    play.main(["--seed", "0"])
    with pytest.raises(StopIteration):  # every scripted frame was consumed, then it quit
        next(calls)


def test_run_episode():
    assert run_episode(envs.FLAPPY_ID, autopilot, seed=0, max_score=3) == 3.0
    env = FlappyBirdEnv()
    assert run_episode(env, lambda obs: 0, seed=0) == 0.0  # falls, scores nothing
