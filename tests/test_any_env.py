"""Any gymnasium task from the command line: `module:EnvId` ids, what a resume says it
restores, and one clear line (exit code 2) for every bad input of envs.train and envs.evaluate."""

from __future__ import annotations

import sys

import gymnasium as gym
import pytest
import torch

import envs.config
import envs.evaluate
import envs.train
from core.checkpoint import load_checkpoint
from envs.checkpoints import RESUME_EPISODES_RESTART

SMALL = ["--num-envs", "2", "--num-steps", "32", "--minibatch-size", "32", "--update-epochs", "2", "--no-progress",
         "--plot-every-seconds", "1e9", "--total-steps", "128"]

THIRD_PARTY = '''
import gymnasium as gym
import numpy as np

class TwoKnobs(gym.Env):
    """A made-up env with an action space the agent has no policy for."""
    observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)

    def __init__(self, space="multidiscrete"):
        self.action_space = (gym.spaces.MultiDiscrete([2, 3]) if space == "multidiscrete" else
                             gym.spaces.Dict({"a": gym.spaces.Discrete(2)}))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, True, False, {}

gym.register("ThirdPartyPole-v0", entry_point="gymnasium.envs.classic_control.cartpole:CartPoleEnv",
             max_episode_steps=50)
gym.register("KnobsMulti-v0", entry_point=TwoKnobs, kwargs={"space": "multidiscrete"})
gym.register("KnobsDict-v0", entry_point=TwoKnobs, kwargs={"space": "dict"})
'''


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """A package on the path that registers its ids when imported, as a third-party one does;
    removed afterwards (module and ids), so the next test imports it afresh."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "proximal_third_party.py").write_text(THIRD_PARTY)
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    torch.set_num_threads(1)
    yield "proximal_third_party"
    sys.modules.pop("proximal_third_party", None)
    for env_id in ("ThirdPartyPole-v0", "KnobsMulti-v0", "KnobsDict-v0"):
        gym.registry.pop(env_id, None)
    envs.config.env_family.cache_clear()
    envs.vector.env_spaces.cache_clear()


def refused(entry, argv, capsys) -> str:
    """Run `entry.main(argv)`; check it exits with code 2 and one line on stderr; return the line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        entry.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0] and "weights_only=False" not in err[0].replace(" ", "")
    return err[0]


def test_a_module_env_id_trains_and_evaluates_in_a_fresh_registry(third_party, tmp_path, capsys):
    env_id = f"{third_party}:ThirdPartyPole-v0"
    envs.train.main(["--env", env_id, *SMALL, "--out", str(tmp_path / "run")])
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["meta"]["env_id"] == env_id
    # as in a new process: the module is not imported and the id not registered
    sys.modules.pop(third_party)
    for registered in ("ThirdPartyPole-v0", "KnobsMulti-v0", "KnobsDict-v0"):
        gym.registry.pop(registered)
    capsys.readouterr()
    envs.evaluate.main(["--checkpoint", str(tmp_path / "run" / "checkpoint.pt"), "--episodes", "3"])
    assert capsys.readouterr().out.startswith(f"{env_id}: 3 episodes")


def test_unknown_env_id_or_module_is_one_line(third_party, capsys):
    line = refused(envs.train, ["--env", "no_such_module_xyz:Foo-v0"], capsys)
    assert line.startswith("error: --env-id 'no_such_module_xyz:Foo-v0'") and "cannot import module" in line
    line = refused(envs.train, ["--env", f"{third_party}:NoSuchPole-v0"], capsys)
    assert "unknown env id 'NoSuchPole-v0'" in line and "did not register it" in line
    line = refused(envs.train, ["--env", "NoSuchGame-v9"], capsys)
    assert line.startswith("error: --env-id 'NoSuchGame-v9': unknown env id") and "CartPole-v1" in line


@pytest.mark.parametrize("env_id, space", [("KnobsMulti-v0", "MultiDiscrete"), ("KnobsDict-v0", "Dict")])
def test_an_unsupported_action_space_is_named(third_party, env_id, space, capsys):
    line = refused(envs.train, ["--env", f"{third_party}:{env_id}"], capsys)
    assert f"({space})" in line and "supports Discrete" in line and "1-D Box" in line and "--env-id" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_a_gpu(tmp_path, capsys):
    line = refused(envs.train, ["--env", "CartPole-v1", "--device", "cuda", "--out", str(tmp_path)], capsys)
    assert "CUDA is not available" in line and "--device cpu" in line
    line = refused(envs.evaluate, ["--checkpoint", "x.pt", "--device", "cuda"], capsys)
    assert line.startswith("error: --device 'cuda'") and "CUDA is not available" in line


@pytest.fixture(scope="module")
def cartpole_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cartpole") / "run"
    torch.set_num_threads(1)
    envs.train.main(["--env", "CartPole-v1", *SMALL, "--out", str(out)])
    return out


def test_resume_of_a_missing_or_truncated_checkpoint(cartpole_run, tmp_path, capsys):
    line = refused(envs.train, ["--resume", str(tmp_path / "nowhere")], capsys)
    assert line.startswith(f"error: --resume {tmp_path / 'nowhere'}:") and "does not exist" in line
    data = (cartpole_run / "checkpoint.pt").read_bytes()
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    line = refused(envs.train, ["--resume", str(tmp_path / "cut")], capsys)
    assert "--resume" in line and "corrupt or not a proximal checkpoint" in line


class SomeoneElsesObject:
    def __init__(self):
        self.weights = torch.zeros(3)


@pytest.mark.parametrize("kind", ["random bytes", "another program's pickle", "another program's tensors"])
def test_a_file_that_is_not_a_proximal_checkpoint(kind, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    path = tmp_path / "run" / "checkpoint.pt"
    if kind == "random bytes":
        path.write_bytes(bytes(range(256)) * 8)
    elif kind == "another program's pickle":
        torch.save({"model": SomeoneElsesObject()}, path)
    else:
        torch.save({"model": {"w": torch.zeros(2)}, "epoch": 3}, path)
    for entry, argv in ((envs.evaluate, ["--checkpoint", str(path)]),
                        (envs.train, ["--resume", str(tmp_path / "run")])):
        line = refused(entry, argv, capsys)
        assert "not a proximal checkpoint" in line and str(path) in line
        assert "weights_only" not in line or "weights_only=True" in line.replace(" ", "")


def test_evaluate_refuses_zero_episodes_and_a_negative_cap(cartpole_run, capsys):
    checkpoint = str(cartpole_run / "checkpoint.pt")
    assert refused(envs.evaluate, ["--checkpoint", checkpoint, "--episodes", "0"], capsys) == \
        "error: --episodes must be ≥ 1, got 0"
    line = refused(envs.evaluate, ["--checkpoint", checkpoint, "--cap", "-5"], capsys)
    assert line.startswith("error: --cap must be ≥ 1") and line.endswith("got -5")
    assert refused(envs.evaluate, ["--checkpoint", checkpoint, "--video", "run.avi"], capsys) == \
        "error: --video must end in .gif or .mp4, got 'run.avi'"
    assert refused(envs.evaluate, ["--checkpoint", checkpoint, "--shrink", "0"], capsys).startswith(
        "error: --shrink must be ≥ 1")


def test_resume_of_a_gymnasium_env_says_what_continues_and_continues(cartpole_run, capsys):
    before = load_checkpoint(cartpole_run / "checkpoint.pt")
    capsys.readouterr()
    envs.train.main(["--resume", str(cartpole_run), "--total-steps", "192"])
    err = capsys.readouterr().err
    assert RESUME_EPISODES_RESTART.format(env_id="CartPole-v1") in err
    assert "continue exactly" in err and "episodes in progress restart" in err
    after = load_checkpoint(cartpole_run / "checkpoint.pt")
    assert before["meta"]["global_step"] == 128 and after["meta"]["global_step"] == 192  # one more update of 64
    # Adam's step count went on from the saved one: 2 epochs × 2 minibatches per update
    steps = [s["step"] for s in before["state"]["optimizer"]["state"].values()]
    steps_after = [s["step"] for s in after["state"]["optimizer"]["state"].values()]
    assert all(float(a) == float(b) + 4 for a, b in zip(steps_after, steps)) and float(steps[0]) == 8
