"""The batched env: step-for-step agreement with the single env, autoreset, devices, errors."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, VectorEnv

import envs
from envs.flappy_bird import BatchedFlappyBird, autopilot, kernel, make_batched_flappy
from envs.flappy_bird.render import GRAY

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def policy_actions(obs: torch.Tensor, rng: np.random.Generator, config) -> np.ndarray:
    """A mix that covers every rule: env 0 plays well (scores, shifts), env 1 rarely flaps
    (ground crashes), env 2 flaps half the time (ceiling, pipes), the rest flap at random."""
    n = obs.shape[0]
    flap_prob = np.array([0.0, 0.04, 0.5] + [0.15] * (n - 3))[:n]
    actions = (rng.random(n) < flap_prob).astype(np.int64)
    actions[0] = autopilot(obs[0].cpu().numpy(), config)
    return actions


@pytest.fixture(params=["torch", "c"])
def step_kernel(request, device):
    """Each of the batched env's two steps: the torch ops and, on the CPU, the C kernel."""
    if request.param == "c":
        if device.type != "cpu":
            pytest.skip("the C step kernel runs on the CPU only")
        try:
            kernel.load()
        except kernel.KernelUnavailable as exc:
            pytest.skip(f"the C step kernel is unavailable here: {exc}")
    return request.param


@pytest.mark.parametrize(
    ("seed", "overrides"),
    [
        (0, {}),
        (100, {"ceiling": "crash", "max_score": 4}),
        (2**40, {"pipe_gap": 130, "pipe_speed": 5, "gravity": 2, "flap_speed": -12,
                 "max_fall_speed": 12, "gap_table_size": 16}),
    ],
)
def test_batched_equals_single_env_step_for_step(seed, overrides, device, step_kernel):
    n, steps, limit = 5, 1200, 700
    batched = BatchedFlappyBird(n, device=device, max_episode_steps=limit,
                                step_kernel=step_kernel, **overrides)
    assert batched.step_kernel == step_kernel
    singles = [gym.make(envs.FLAPPY_ID, max_episode_steps=limit, **overrides) for _ in range(n)]
    obs, _ = batched.reset(seed=seed)
    single_obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(singles)])
    np.testing.assert_array_equal(obs.cpu().numpy(), single_obs)
    rng = np.random.default_rng(seed % 1000)
    ends = {"terminated": 0, "truncated": 0, "score": 0}
    for t in range(steps):
        actions = policy_actions(obs, rng, batched.config)
        obs, reward, terminated, truncated, info = batched.step(torch.as_tensor(actions,
                                                                                device=device))
        final_obs = info["final_obs"].cpu().numpy()
        for i, env in enumerate(singles):
            s_obs, s_reward, s_term, s_trunc, s_info = env.step(int(actions[i]))
            where = f"step {t}, env {i}"
            np.testing.assert_array_equal(final_obs[i], s_obs, err_msg=where)
            assert reward[i].item() == np.float32(s_reward), where
            assert (terminated[i].item(), truncated[i].item()) == (s_term, s_trunc), where
            if s_term or s_trunc:
                assert info["_final_obs"][i].item()
                assert info["final_info"]["score"][i].item() == s_info["score"], where
                ends["terminated"] += s_term
                ends["truncated"] += s_trunc
                ends["score"] += s_info["score"]
                s_obs, _ = env.reset()
            else:
                assert info["score"][i].item() == s_info["score"], where
            np.testing.assert_array_equal(obs[i].cpu().numpy(), s_obs, err_msg=where)
    # The run really exercised crashes, truncations and scoring.
    assert ends["terminated"] > 10 and ends["truncated"] >= 1 and ends["score"] >= 10, ends


def test_outputs_types_devices_and_spaces(device):
    env = make_batched_flappy(8, device=device, seed=0)
    assert isinstance(env, VectorEnv)
    assert env.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    obs, info = env.reset()
    assert obs.shape == (8, 12) and obs.dtype == torch.float32 and obs.device == env.device
    assert env.observation_space.shape == (8, 12) and env.single_observation_space.shape == (12,)
    obs2, reward, terminated, truncated, info = env.step(torch.ones(8, dtype=torch.long,
                                                                    device=device))
    for tensor, dtype in ((obs2, torch.float32), (reward, torch.float32),
                          (terminated, torch.bool), (truncated, torch.bool),
                          (info["final_obs"], torch.float32), (info["_final_obs"], torch.bool)):
        assert tensor.dtype == dtype and tensor.device == env.device
    assert not obs2.data_ptr() == obs.data_ptr()  # new tensors every step
    for key in ("score", "episode_return", "episode_length"):
        assert info["final_info"][key].shape == (8,)


def test_seed_reproduces_and_constructor_seed(device):
    a = make_batched_flappy(6, device=device, seed=3)
    b = BatchedFlappyBird(6, device=device)
    a.reset()
    b.reset(seed=3)
    actions = torch.zeros(6, dtype=torch.bool, device=device)
    for t in range(80):
        actions[:] = t % 7 == 0
        oa, ra, *_ = a.step(actions)
        ob, rb, *_ = b.step(actions)
        assert torch.equal(oa, ob) and torch.equal(ra, rb)
    # a list of seeds seeds each env; env 2 of seed=3 is seed 5
    c = BatchedFlappyBird(2, device=device)
    c.reset(seed=[5, 9])
    assert torch.equal(c._table[0], a._table[2])


def test_autoreset_same_step(device):
    env = BatchedFlappyBird(3, device=device, max_episode_steps=50)
    first, _ = env.reset(seed=0)
    actions = torch.zeros(3, dtype=torch.long, device=device)
    steps = 0
    while steps < 50:
        obs, reward, terminated, truncated, info = env.step(actions)
        steps += 1
        done = terminated | truncated
        assert torch.equal(info["_final_obs"], done)
        assert torch.equal(info["final_obs"][~done], obs[~done])  # same where nothing ended
        if done.any():
            break
    # Never flapping: all three crash on the ground at the same frame.
    assert terminated.all() and not truncated.any()
    assert torch.equal(obs, first)  # the returned obs is the first of the new episode
    assert not torch.equal(info["final_obs"], first)  # the final one is on the ground
    assert (info["final_info"]["episode_length"] == steps).all()
    expected_return = torch.full((3,), 0.1 * (steps - 1) - 1.0, device=device)
    assert torch.allclose(info["final_info"]["episode_return"], expected_return)
    assert (info["score"] == 0).all()


def test_truncation_at_step_limit_keeps_final_obs(device):
    env = BatchedFlappyBird(2, device=device, max_episode_steps=10)
    env.reset(seed=0)
    for _ in range(10):
        obs, reward, terminated, truncated, info = env.step(
            torch.tensor([1, 0], device=device))
    assert truncated.all() and not terminated.any()
    assert not torch.equal(info["final_obs"], obs)  # the bootstrap obs is the pre-reset one
    assert (info["final_info"]["episode_length"] == 10).all()


def test_bad_actions_raise(device):
    env = BatchedFlappyBird(4, device=device)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(torch.zeros(4, dtype=torch.long))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        env.step(torch.zeros(4, 1, dtype=torch.long))
    with pytest.raises(TypeError, match="integer or bool"):
        env.step(torch.zeros(4))
    with pytest.raises(ValueError, match="0 .*or 1"):
        env.step(torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="0 .*or 1"):
        env.step(torch.tensor([0, -1, 0, 0]))
    env.step(np.array([0, 1, 1, 0]))  # NumPy and lists are moved to the device
    env.step([True, False, True, False])
    unchecked = BatchedFlappyBird(4, device=device, validate_actions=False)
    unchecked.reset(seed=0)
    unchecked.step(torch.tensor([0, 1, 2, 0]))  # not checked: any non-zero value flaps


def test_invalid_construction():
    with pytest.raises(ValueError, match="pipe_gap"):
        BatchedFlappyBird(4, pipe_gap=-1)
    with pytest.raises(ValueError, match="pipe_speed"):
        make_batched_flappy(4, device="cpu", pipe_speed=-4)
    with pytest.raises(ValueError, match="num_envs"):
        BatchedFlappyBird(0)
    with pytest.raises(ValueError, match="obs_type"):
        BatchedFlappyBird(2, obs_type="rgb")
    with pytest.raises(ValueError, match="max_episode_steps"):
        BatchedFlappyBird(2, max_episode_steps=0)


def test_make_vec_uses_the_batched_env():
    venv = gym.make_vec(envs.FLAPPY_ID, num_envs=3, vectorization_mode="vector_entry_point",
                        device="cpu", pipe_gap=110)
    assert isinstance(venv, BatchedFlappyBird)
    assert venv.max_episode_steps == gym.spec(envs.FLAPPY_ID).max_episode_steps
    assert venv.config.pipe_gap == 110
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (3, 12)


def test_no_step_limit(device):
    env = BatchedFlappyBird(2, device=device, max_episode_steps=None)
    env.reset(seed=0)
    _, _, _, truncated, _ = env.step(torch.zeros(2, dtype=torch.long))
    assert not truncated.any()


def test_pixels(device):
    env = BatchedFlappyBird(3, device=device, obs_type="pixels", frame_stack=4)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (3, 4, 84, 84) and obs.dtype == torch.uint8
    assert env.single_observation_space.shape == (4, 84, 84)
    first = obs[0, 0].clone()
    assert torch.equal(obs, first.expand(3, 4, 84, 84))  # the same first frame, stacked
    assert set(first.unique().tolist()) == {GRAY["sky"], GRAY["ground"], GRAY["bird"]}
    # The bird's 24 px box is 4 rows tall at 84/512 px per row.
    bird_rows = (first == GRAY["bird"]).any(1).nonzero()[:, 0]
    assert 3 <= len(bird_rows) <= 5 and 35 <= bird_rows[0] <= 42
    actions = torch.tensor([0, 1, 0], device=device)
    for t in range(60):  # the first pipe scrolls in after ~50 frames
        actions[1] = int(t % 5 == 0)
        obs, _, terminated, truncated, info = env.step(actions)
    assert (obs[1, -1] == GRAY["pipe"]).any()  # env 1 is still flying: a pipe is visible
    assert torch.equal(obs[1, :-1], info["final_obs"][1, :-1])
    # env 0 never flapped: it crashed on the ground long ago and restarted with a fresh stack
    assert env._length[0] < 60


def test_pixels_autoreset_stack(device):
    env = BatchedFlappyBird(2, device=device, obs_type="pixels", frame_stack=2)
    first, _ = env.reset(seed=0)
    zeros = torch.zeros(2, dtype=torch.long, device=device)
    for _ in range(100):
        obs, _, terminated, truncated, info = env.step(zeros)
        if terminated.any():
            break
    assert terminated.all()
    assert torch.equal(obs, first)
    assert info["final_obs"].shape == (2, 2, 84, 84)
    assert not torch.equal(info["final_obs"], first)  # the bird on the ground


@pytest.mark.gpu
def test_cuda_matches_cpu():
    cpu = BatchedFlappyBird(64, device="cpu")
    gpu = BatchedFlappyBird(64, device="cuda")
    cpu.reset(seed=1)
    gpu.reset(seed=1)
    generator = torch.Generator().manual_seed(0)
    for _ in range(500):
        actions = (torch.rand(64, generator=generator) < 0.15).long()
        oc, rc, tc, uc, ic = cpu.step(actions)
        og, rg, tg, ug, ig = gpu.step(actions.cuda())
        assert torch.equal(oc, og.cpu()) and torch.equal(rc, rg.cpu())
        assert torch.equal(tc, tg.cpu()) and torch.equal(uc, ug.cpu())


@pytest.mark.parametrize("obs_type", ["features", "pixels"])
def test_state_dict_resumes_exactly(obs_type, device):
    a = BatchedFlappyBird(5, device=device, obs_type=obs_type, max_episode_steps=300)
    a.reset(seed=1)
    generator = torch.Generator().manual_seed(0)
    actions = [(torch.rand(5, generator=generator) < 0.12).to(device) for _ in range(400)]
    for t in range(100):
        a.step(actions[t])
    b = BatchedFlappyBird(5, device=device, obs_type=obs_type, max_episode_steps=300)
    b.load_state_dict(a.state_dict())
    for t in range(100, 400):
        out_a, out_b = a.step(actions[t]), b.step(actions[t])
        for x, y in zip(out_a[:4], out_b[:4]):
            assert torch.equal(x, y)
        assert torch.equal(out_a[4]["final_obs"], out_b[4]["final_obs"])
    with pytest.raises(ValueError, match="FlappyConfig"):
        BatchedFlappyBird(5, device=device, obs_type=obs_type, pipe_gap=120).load_state_dict(
            a.state_dict())
    with pytest.raises(ValueError, match="envs"):
        BatchedFlappyBird(4, device=device, obs_type=obs_type).load_state_dict(a.state_dict())


def test_agent_interface(device):
    from envs.vector import make_vector_env

    venv = make_vector_env("flappy", 3, torch.device(device), max_score=2)
    assert venv.single_observation_space.shape == (12,) and venv.single_action_space.n == 2
    obs = venv.reset(seed=0)
    assert obs.shape == (3, 12) and obs.device.type == torch.device(device).type
    ended_scores = []
    for _ in range(200):
        actions = torch.tensor([autopilot(o) for o in obs.cpu().numpy()], device=device)
        actions[2] = 0  # env 2 falls to the ground
        step = venv.step(actions)
        done = step.terminated | step.truncated
        assert torch.equal(step.final_obs[~done], step.obs[~done])
        assert (step.episode_score[~done] == 0).all() and (step.episode_return[~done] == 0).all()
        ended_scores += step.episode_score[done].tolist()
        obs = step.obs
    assert 2.0 in ended_scores and 0.0 in ended_scores  # capped at 2 pipes; crashed at 0
    pixels = make_vector_env("flappy-pixels", 2, torch.device(device))
    assert pixels.reset(seed=0).shape == (2, 4, 84, 84)


def test_wide_batch_path_equals_single_env(monkeypatch, device):
    """Large CPU batches take a sparse path (only restarting columns are touched); force it at
    N = 5 and replay the step-for-step comparison with the single env."""
    from envs.flappy_bird import batched as batched_module

    monkeypatch.setattr(batched_module, "_SPARSE_MIN_ENVS", 1)
    test_batched_equals_single_env_step_for_step(100, {"ceiling": "crash", "max_score": 4}, device,
                                                 "torch")
