"""Checkpoints, devices, seeds, metrics, rollout storage and config-generated command lines."""

from __future__ import annotations

import argparse
import importlib
import json
import os
from dataclasses import dataclass

import pytest
import torch

from core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from core.config import add_arguments, config_to_dict, field_docs, from_arguments
from core.device import resolve_device, seed_everything
from core.metrics import METRICS, MetricsWriter, read_metrics
from core.ppo import PPOConfig
from envs.train import RolloutBuffer


def test_checkpoint_round_trip(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = save_checkpoint(tmp_path / "a" / "ckpt.pt", "toy", {"model": model.state_dict()},
                           {"step": 7, "config": {"lr": 0.1}})
    payload = load_checkpoint(path, kind="toy")
    restored = torch.nn.Linear(3, 2)
    restored.load_state_dict(payload["state"]["model"])
    assert torch.equal(restored.weight, model.weight)
    assert payload["meta"] == {"step": 7, "config": {"lr": 0.1}}
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]  # no temporary file left behind


def test_checkpoint_errors_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    path = save_checkpoint(tmp_path / "ckpt.pt", "toy", {"w": torch.ones(3)})
    with pytest.raises(CheckpointError, match="of kind 'toy', expected llm_sft"):
        load_checkpoint(path, kind="llm_sft")
    data = path.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "truncated.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "text.pt")
    torch.save({"format_version": 99, "state": {}}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(tmp_path / "future.pt")


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoint_never_executes_code(tmp_path):
    torch.save({"format_version": 1, "kind": "toy", "meta": {}, "state": {"x": Evil()}}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="corrupt or not a proximal checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")


def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt.pt", "toy", {"w": torch.ones(3)})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, "toy", {"w": Unpicklable()})
    assert torch.equal(load_checkpoint(path)["state"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_seed_everything_reproduces_streams():
    seed_everything(5)
    a = torch.rand(3)
    seed_everything(5)
    assert torch.equal(a, torch.rand(3))
    with pytest.raises(ValueError, match="seed"):
        seed_everything(-1)


def test_metrics_writer(tmp_path):
    with MetricsWriter(tmp_path / "metrics.jsonl") as writer:
        writer.write(10, {"losses/approx_kl": 0.01, "charts/sps": float("nan")})
        with pytest.raises(KeyError, match="losses/aprox_kl"):
            writer.write(11, {"losses/aprox_kl": 0.01})
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert records == [{"step": 10, "losses/approx_kl": 0.01, "charts/sps": None}]
    assert all(json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines())
    assert all(description for description in METRICS.values())


def _plain_gae(rewards, values, next_values, terminations, truncations, gamma, lam):
    """GAE(λ) of one env's steps by the textbook backward loop, in Python floats."""
    advantages, running = [0.0] * len(rewards), 0.0
    for t in reversed(range(len(rewards))):
        bootstrap = 0.0 if terminations[t] else gamma * next_values[t]
        delta = rewards[t] + bootstrap - values[t]
        running = delta if (terminations[t] or truncations[t]) else delta + gamma * lam * running
        advantages[t] = running
    return advantages


def test_rollout_buffer_batch(device):
    """`batch` bootstraps from the next step's V, V(last obs) after the last step and V(final
    obs) where an episode ended; GAE and the flattening agree with a plain per-env loop."""
    N, T = 3, 5
    buf = RolloutBuffer.allocate(num_envs=N, num_steps=T, obs_shape=(2,), device=device)
    g = torch.Generator().manual_seed(0)
    for name in ("rewards", "values", "logprobs"):
        getattr(buf, name).copy_(torch.randn(N, T, generator=g))
    buf.obs.copy_(torch.randn(N, T, 2, generator=g))
    buf.final_obs.copy_(torch.randn(N, T, 2, generator=g))
    buf.terminations[1, 2] = 1.0
    buf.truncations[2, 3] = 1.0
    buf.truncations[0, 4] = 1.0  # the last step: V(final obs), not V(last obs)
    last_obs = torch.randn(N, 2, generator=g).to(device)

    def critic(obs):  # a known function of the observation
        return 10 * obs[:, 0] - obs[:, 1]

    batch = buf.batch(critic, last_obs, gamma=0.9, gae_lambda=0.8)
    assert batch["obs"].shape == (N * T, 2) and batch["advantages"].shape == (N * T,)
    assert batch["obs"].device.type == torch.device(device).type
    cpu = {name: getattr(buf, name).cpu() for name in ("rewards", "values", "terminations", "truncations",
                                                        "final_obs", "obs")}
    for n in range(N):
        next_values = []
        for t in range(T):
            if cpu["terminations"][n, t] or cpu["truncations"][n, t]:
                s_next = cpu["final_obs"][n, t]
            else:
                s_next = last_obs[n].cpu() if t == T - 1 else None
            v = float(10 * s_next[0] - s_next[1]) if s_next is not None else float(cpu["values"][n, t + 1])
            next_values.append(v)
        expected = _plain_gae(cpu["rewards"][n].tolist(), cpu["values"][n].tolist(), next_values,
                              cpu["terminations"][n].tolist(), cpu["truncations"][n].tolist(), 0.9, 0.8)
        rows = slice(n * T, (n + 1) * T)  # row n·T + t is env n's step t
        torch.testing.assert_close(batch["advantages"][rows].cpu(), torch.tensor(expected), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(batch["returns"][rows].cpu(), torch.tensor(expected) + cpu["values"][n],
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(batch["obs"][rows].cpu(), cpu["obs"][n])


def test_cli_generated_from_config_dataclass():
    parser = argparse.ArgumentParser()
    add_arguments(parser, PPOConfig)
    args = parser.parse_args(["--clip-coef", "0.1", "--target-kl", "none", "--no-norm-adv"])
    config = from_arguments(PPOConfig, args)
    assert config.clip_coef == 0.1 and config.target_kl is None and config.norm_adv is False
    assert "ε" in field_docs(PPOConfig)["clip_coef"]
    assert config_to_dict(config)["clip_coef"] == 0.1
    assert all(field_docs(PPOConfig).get(name) for name in config_to_dict(config)), "every field has a docstring"
    with pytest.raises(ValueError, match="clip_coef must be > 0"):
        from_arguments(PPOConfig, parser.parse_args(["--clip-coef", "-1"]))


@dataclass
class _Child(PPOConfig):
    extra: int = 3
    """An extra field."""


def test_field_docs_include_base_classes():
    docs = field_docs(_Child)
    assert docs["extra"] == "An extra field." and "clip_coef" in docs


@pytest.mark.parametrize(
    "module",
    ["envs.train", "envs.evaluate", "envs.bench", "envs.bench_train", "envs.bench_gpu", "envs.flappy_bird.play",
     "llm.pipeline", "llm.sample", "llm.bench", "llm.compare"],
)
def test_every_command_prints_its_help(module, capsys):
    # argparse %-formats help text: a stray % in a field docstring used to crash --help
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out
