"""Saving and loading a game agent: the training state of a run, and the agent alone.

A checkpoint of kind `ppo_agent` (written atomically by `core.checkpoint`) holds in `state`
the weights, the optimiser, the random streams, the current observations and, when the env
can be snapshot (our batched Flappy Bird), the env itself; in `meta` the env id, what rebuilds
the network (`ActorCritic.describe()`), the resolved configuration, the position in the run
and the KL controller's β. `envs.train` writes and resumes it; `envs.evaluate` and the
lessons only load the agent.
"""

from __future__ import annotations

from typing import Any

import torch

from core.checkpoint import load_checkpoint, save_checkpoint
from core.config import config_to_dict
from envs.networks import ActorCritic
from envs.vector import resolve_env_id

__all__ = ["CHECKPOINT_KIND", "save_training_state", "restore_training_state", "load_agent", "load_agent_weights"]

CHECKPOINT_KIND = "ppo_agent"


def save_training_state(path, config, agent, optimizer, kl_controller, shuffle, envs, obs, iteration: int,
                        global_step: int) -> None:
    """Everything needed to continue exactly where we are, written atomically."""
    state: dict[str, Any] = {
        "model": agent.state_dict(),
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "shuffle_rng": shuffle.get_state(),
        "obs": obs,
    }
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    if envs.state_dict() is not None:
        state["env"] = envs.state_dict()
    meta = {
        "env_id": resolve_env_id(config.env_id),
        "network": agent.describe(),
        "config": config_to_dict(config),
        "iteration": iteration,
        "global_step": global_step,
        "beta": None if kl_controller is None else float(kl_controller.beta),
    }
    save_checkpoint(path, CHECKPOINT_KIND, state, meta)


def restore_training_state(payload: dict, agent, optimizer, kl_controller, shuffle, envs, seed: int,
                           device: torch.device) -> tuple[int, int, torch.Tensor]:
    """Put a run back where `save_training_state` left it; returns (iteration, global_step, obs)."""
    meta, state = payload["meta"], payload["state"]
    load_agent_weights(agent, payload)
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    shuffle.set_state(state["shuffle_rng"])
    if kl_controller is not None and meta.get("beta") is not None:
        kl_controller.beta = meta["beta"]
    if "env" in state:
        envs.load_state_dict(state["env"])
        obs = state["obs"].to(device)
    else:
        # gymnasium envs cannot be snapshot: start fresh episodes, seeded by the position in the run
        obs = envs.reset(seed=seed + meta["iteration"])
    return meta["iteration"], meta["global_step"], obs


def load_agent_weights(agent: ActorCritic, payload: dict) -> None:
    """Load weights, with a clear error when the checkpoint's network differs from `agent`'s."""
    saved = payload["meta"].get("network", {})
    if saved != agent.describe():
        raise ValueError(f"checkpoint network {saved} does not match this agent {agent.describe()} "
                         f"(env {payload['meta'].get('env_id')!r})")
    agent.load_state_dict(payload["state"]["model"])


def load_agent(path, device: torch.device | str = "cpu") -> tuple[ActorCritic, dict]:
    """Rebuild the agent saved in a checkpoint; returns (agent, meta)."""
    payload = load_checkpoint(path, kind=CHECKPOINT_KIND, map_location=device)
    net = payload["meta"]["network"]
    agent = ActorCritic(tuple(net["obs_shape"]), net["n_actions"], arch=net["arch"], hidden=net["hidden"])
    load_agent_weights(agent, payload)
    return agent.to(device).eval(), payload["meta"]
