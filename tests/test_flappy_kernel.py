"""The C step kernel of the batched Flappy Bird: bit for bit the torch step, on every output and
the whole state after every step; resuming across the two; choosing the kernel; compiling it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from envs.flappy_bird import BatchedFlappyBird, autopilot, kernel
from envs.flappy_bird.kernel import KernelUnavailable
from envs.flappy_bird.rules import BIRD_H

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture
def c_kernel():
    """Skips the test (saying why) where the C kernel cannot be built, e.g. without a compiler."""
    try:
        kernel.load()
    except KernelUnavailable as exc:
        pytest.skip(f"the C step kernel is unavailable here: {exc}")


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bits, so that comparisons tell -0.0 from 0.0 and see NaNs."""
    return tensor.view(torch.int32) if tensor.dtype == torch.float32 else tensor


def assert_same_step(out_c, out_torch, where: str) -> None:
    """The two envs' step outputs are identical, bit for bit (info included)."""
    (obs_c, reward_c, term_c, trunc_c, info_c), (obs_t, reward_t, term_t, trunc_t, info_t) = (
        out_c, out_torch)
    pairs = [("obs", obs_c, obs_t), ("reward", reward_c, reward_t),
             ("terminated", term_c, term_t), ("truncated", trunc_c, trunc_t)]
    pairs += [(key, info_c[key], info_t[key])
              for key in ("score", "final_obs", "_final_obs", "_final_info")]
    pairs += [(f"final_info[{key!r}]", info_c["final_info"][key], info_t["final_info"][key])
              for key in ("score", "episode_length", "episode_return")]
    for name, c, t in pairs:
        assert c.dtype == t.dtype and c.shape == t.shape, f"{where}: {name}"
        assert torch.equal(bits(c), bits(t)), f"{where}: {name} differs"


def random_actions(generator: torch.Generator, flap_prob: torch.Tensor, dtype: torch.dtype):
    """One random 0/1 action per env, env i flapping with probability flap_prob[i]."""
    return (torch.rand(len(flap_prob), generator=generator) < flap_prob).to(dtype)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("n", "steps", "overrides", "dtype"),
    [
        (1, 3000, {}, torch.int64),
        (37, 3000, {"ceiling": "crash", "max_score": 3, "max_episode_steps": 400}, torch.bool),
        (64, 2000, {"pipe_gap": 20, "max_episode_steps": 90}, torch.uint8),  # the bird never fits
        (130, 2500, {"pipe_gap": 150, "pipe_speed": 7, "gravity": 2, "flap_speed": -12,
                     "max_fall_speed": 12, "gap_table_size": 16, "max_score": 5}, torch.int32),
        (65, 3000, {"pipe_gap": 120, "max_episode_steps": 250}, torch.int8),
        (4099, 400, {"ceiling": "crash", "max_episode_steps": 150}, torch.int64),  # torch's wide path
    ],
)
def test_kernel_equals_torch_step_bit_for_bit(c_kernel, n, steps, overrides, dtype):
    c = BatchedFlappyBird(n, step_kernel="c", **overrides)
    ref = BatchedFlappyBird(n, step_kernel="torch", **overrides)
    assert (c.step_kernel, ref.step_kernel) == ("c", "torch")
    obs_c, _ = c.reset(seed=n)
    obs_t, _ = ref.reset(seed=n)
    assert torch.equal(bits(obs_c), bits(obs_t))
    generator = torch.Generator().manual_seed(n)
    # From rarely flapping (ground crashes) to flapping half the time (ceiling, pipes).
    # Env 0 plays well where the bird fits a gap (it scores), with a mistake now and then (it
    # crashes too); the others flap at random, from rarely (ground) to half the time (ceiling).
    flap_prob = torch.linspace(0.02, 0.5, n)
    fits = c.config.pipe_gap > 2 * BIRD_H
    ends = {"terminated": 0, "truncated": 0, "score": 0.0}
    for t in range(steps):
        actions = random_actions(generator, flap_prob, dtype)
        if fits:
            mistake = torch.rand((), generator=generator).item() < 0.02
            actions[0] = autopilot(obs_c[0].numpy(), c.config, horizon=20) ^ mistake
        out_c, out_t = c.step(actions), ref.step(actions)
        assert_same_step(out_c, out_t, f"step {t}")
        obs_c = out_c[0]
        assert torch.equal(bits(c._state), bits(ref._state)), f"step {t}: the state differs"
        assert torch.equal(c._draws, ref._draws), f"step {t}: the draw counts differ"
        ends["terminated"] += int(out_c[2].sum())
        ends["truncated"] += int(out_c[3].sum())
        ends["score"] += float(out_c[4]["final_info"]["score"][out_c[4]["_final_info"]].sum())
    # The run really exercised crashes, truncations (where there is a cap) and scoring (where
    # a gap can be flown).
    assert ends["terminated"] > 10
    if overrides.keys() & {"max_score", "max_episode_steps"}:
        assert ends["truncated"] >= 1
    if fits:
        assert ends["score"] >= 2


def test_kernel_equals_torch_at_the_ceiling(c_kernel):
    """Always flapping: every bird hits the ceiling (zeroed speed, or a crash) on every rule."""
    for ceiling in ("clamp", "crash"):
        c = BatchedFlappyBird(3, step_kernel="c", ceiling=ceiling, max_episode_steps=100)
        ref = BatchedFlappyBird(3, step_kernel="torch", ceiling=ceiling, max_episode_steps=100)
        c.reset(seed=0)
        ref.reset(seed=0)
        ones = torch.ones(3, dtype=torch.long)
        config, hits = c.config, 0
        at_top = float((np.float32(0) - config.feature_mid[9]) * config.feature_scale[9])  # y = 0
        for t in range(200):
            out_c, out_t = c.step(ones), ref.step(ones)
            assert_same_step(out_c, out_t, f"{ceiling}, step {t}")
            assert torch.equal(bits(c._state), bits(ref._state))
            hits += int((out_c[4]["final_obs"][:, 9] == at_top).sum())
        assert hits >= 3


@pytest.mark.parametrize(("first", "second"), [("c", "torch"), ("torch", "c")])
def test_state_dict_moves_a_game_between_kernels(c_kernel, first, second):
    """A snapshot taken mid-episode by one kernel continues identically in the other."""
    settings = {"max_episode_steps": 300, "max_score": 4}
    a = BatchedFlappyBird(7, step_kernel=first, **settings)
    a.reset(seed=11)
    generator = torch.Generator().manual_seed(1)
    flap_prob = torch.full((7,), 0.12)
    actions = [random_actions(generator, flap_prob, torch.int64) for _ in range(600)]
    for t in range(150):
        a.step(actions[t])
    assert (a._length > 0).all()  # mid-episode
    b = BatchedFlappyBird(7, step_kernel=second, **settings)
    b.load_state_dict(a.state_dict())
    for t in range(150, 600):
        assert_same_step(a.step(actions[t]), b.step(actions[t]), f"step {t}")
        assert torch.equal(bits(a._state), bits(b._state))


def test_actions_of_every_dtype_and_layout(c_kernel):
    env = BatchedFlappyBird(5, step_kernel="c")
    ref = BatchedFlappyBird(5, step_kernel="torch")
    env.reset(seed=2)
    ref.reset(seed=2)
    rows = torch.tensor([[0, 1, 0, 0, 1], [1, 0, 0, 1, 0]] * 10)
    for t, dtype in enumerate([torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8,
                               torch.bool] * 3):
        actions = rows[t].to(dtype)
        assert_same_step(env.step(actions), ref.step(actions), f"{dtype}")
    strided = torch.tensor([[1, 0], [0, 0], [1, 1], [0, 1], [1, 0]])[:, 0]  # not contiguous
    assert not strided.is_contiguous()
    assert_same_step(env.step(strided), ref.step(strided), "strided")
    assert_same_step(env.step(np.array([1, 0, 1, 0, 1])), ref.step(np.array([1, 0, 1, 0, 1])),
                     "NumPy")
    # Unchecked, any non-zero value flaps, as in the torch step.
    loose = BatchedFlappyBird(2, step_kernel="c", validate_actions=False)
    loose_ref = BatchedFlappyBird(2, step_kernel="torch", validate_actions=False)
    loose.reset(seed=0)
    loose_ref.reset(seed=0)
    assert_same_step(loose.step(torch.tensor([7, -3])), loose_ref.step(torch.tensor([7, -3])),
                     "unchecked")


def test_bad_actions_change_nothing(c_kernel):
    env = BatchedFlappyBird(4, step_kernel="c")
    env.reset(seed=0)
    env.step(torch.zeros(4, dtype=torch.long))
    state, draws = env._state.clone(), env._draws.clone()
    for bad in (torch.tensor([0, 1, 2, 0]), torch.tensor([0, -1, 0, 0], dtype=torch.int8),
                torch.tensor([0, 0, 0, 255], dtype=torch.uint8)):
        with pytest.raises(ValueError, match=r"0 \(do nothing\) or 1 \(flap\), got \["):
            env.step(bad)
    assert torch.equal(env._state, state) and torch.equal(env._draws, draws)


def test_outputs_are_new_each_step(c_kernel):
    env = BatchedFlappyBird(3, step_kernel="c")
    env.reset(seed=0)
    first = env.step(torch.ones(3, dtype=torch.long))
    kept = [first[0].clone(), first[1].clone(), first[4]["final_obs"].clone()]
    for _ in range(5):
        env.step(torch.zeros(3, dtype=torch.long))
    assert torch.equal(first[0], kept[0]) and torch.equal(first[1], kept[1])
    assert torch.equal(first[4]["final_obs"], kept[2])
    obs = first[0]
    assert obs.shape == (3, 12) and obs.is_contiguous() and first[4]["final_obs"].is_contiguous()


def test_step_kernel_choice():
    with pytest.raises(ValueError, match="step_kernel must be one of 'auto', 'c', 'torch', got 'C'"):
        BatchedFlappyBird(2, step_kernel="C")
    with pytest.raises(ValueError, match="step_kernel='c' is not possible: .*pixel"):
        BatchedFlappyBird(2, obs_type="pixels", step_kernel="c")
    assert BatchedFlappyBird(2, obs_type="pixels").step_kernel == "torch"
    assert BatchedFlappyBird(2, step_kernel="torch").step_kernel == "torch"
    if torch.cuda.is_available():
        assert BatchedFlappyBird(2, device="cuda").step_kernel == "torch"
        with pytest.raises(ValueError, match="CPU only"):
            BatchedFlappyBird(2, device="cuda", step_kernel="c")


@pytest.fixture
def fresh_kernel_module(monkeypatch, tmp_path):
    """The kernel module as in a new process, with an empty cache folder."""
    monkeypatch.setattr(kernel, "_library", None)
    monkeypatch.setattr(kernel, "_warned", False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize(("compiler", "reason"), [
    ("/nonexistent/bin/cc", "no C compiler found"),
    ("false", "compiling step.c with false failed"),
])
def test_auto_falls_back_to_torch_when_the_kernel_cannot_be_built(fresh_kernel_module, monkeypatch,
                                                                 compiler, reason):
    monkeypatch.setenv("CC", compiler)
    with pytest.warns(RuntimeWarning, match=f"torch step .*{reason}"):
        env = BatchedFlappyBird(3)
    assert env.step_kernel == "torch"
    env.reset(seed=0)
    env.step(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=f"step_kernel='c' is not possible: {reason}"):
        BatchedFlappyBird(3, step_kernel="c")


def test_compiles_once_into_the_cache(c_kernel, fresh_kernel_module):
    cache = fresh_kernel_module / "proximal"
    BatchedFlappyBird(2)
    libraries = list(cache.iterdir())
    assert len(libraries) == 1 and libraries[0].name.startswith("flappy_step-")
    assert libraries[0].suffix == ".so"  # no temporary file is left behind
    mtime = libraries[0].stat().st_mtime_ns
    kernel._library = None  # as a new process would: finds the library, compiles nothing
    assert BatchedFlappyBird(2).step_kernel == "c"
    assert list(cache.iterdir()) == libraries and libraries[0].stat().st_mtime_ns == mtime


def test_the_trainer_steps_flappy_bird_with_the_kernel(c_kernel):
    from envs.vector import make_vector_env

    cpu = torch.device("cpu")
    assert make_vector_env("flappy", 3, cpu).env.step_kernel == "c"
    assert make_vector_env("flappy", 3, cpu, step_kernel="torch").env.step_kernel == "torch"
    assert make_vector_env("flappy-pixels", 2, cpu).env.step_kernel == "torch"
