"""Saving and loading a game agent: the training state of a run, and the agent alone.

A checkpoint of kind `ppo_agent` (written atomically by `core.checkpoint`) holds in `state`
the weights, the optimiser, the random streams, the current observations, the observation and
reward normalisers' statistics (continuous control) and, when the env can be snapshot (our
batched Flappy Bird), the env itself (under torchrun: those of every rank, gathered by rank 0
into its one file); in `meta` the env id, what rebuilds
the network (`ActorCritic.describe()`), the resolved configuration, the position in the run
and the KL controller's β. `envs.train` writes and resumes it; `envs.evaluate` and the
lessons only load the agent (and `load_normalizer_statistics`, which evaluation uses frozen).

What a resume continues: with an env snapshot, everything, so the resumed run is the
uninterrupted one (`RESUME_EXACT`); without one (any gymnasium env but ours), the weights, the
optimiser, the random streams, the normaliser statistics and the step counter, while the
episodes in progress restart (`RESUME_EPISODES_RESTART`).
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from core.checkpoint import load_checkpoint, save_checkpoint
from core.config import config_to_dict
from envs.networks import ActorCritic
from envs.vector import resolve_env_id

__all__ = ["CHECKPOINT_KIND", "rank_state", "save_training_state", "restore_training_state", "load_agent",
           "load_agent_weights", "load_normalizer_statistics", "RESUME_EXACT", "RESUME_EPISODES_RESTART"]

CHECKPOINT_KIND = "ppo_agent"
RESUME_EXACT = ("resume: exact — weights, optimiser, random streams, normaliser statistics, step counter and the "
                "environments' own state are restored; the run continues as if never stopped")
RESUME_EPISODES_RESTART = (
    "resume: weights, optimiser, random streams, normaliser statistics and step counter continue exactly; "
    "{env_id} cannot be saved mid-episode, so the episodes in progress restart (fresh episodes, seeded by the "
    "position in the run) and the run will not match an uninterrupted one step for step"
)


def rank_state(shuffle, envs, obs) -> dict[str, Any]:
    """What each rank keeps of its own, on the CPU: its random streams, its current observations, its
    normalisers' statistics (`envs` may be a `envs.normalize.NormalizedEnv`) and, when the env can be
    snapshot, its envs. Under torchrun rank 0 gathers every rank's."""
    state: dict[str, Any] = {
        "torch_rng": torch.get_rng_state(),
        "shuffle_rng": shuffle.get_state(),
        "obs": obs.cpu(),
    }
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    env_state = envs.state_dict()
    if env_state is not None:
        state["env"] = _to_cpu(env_state)
    if hasattr(envs, "statistics"):
        state["normalizers"] = _to_cpu(envs.statistics())
    return state


def save_training_state(path, config, agent, optimizer, kl_controller, shuffle, envs, obs, iteration: int,
                        global_step: int, other_ranks: list[dict] | None = None) -> None:
    """Everything needed to continue exactly where we are, written atomically.

    Under torchrun, rank 0 calls this with `other_ranks`: the `rank_state` of ranks 1…N−1 (their
    envs and random streams), kept in `state["other_ranks"]`; `meta["world_size"]` records N, and
    a resumed run needs the same N. The weights and the optimiser are the same on every rank.
    """
    state: dict[str, Any] = {
        "model": agent.state_dict(),
        "optimizer": optimizer.state_dict(),
        **rank_state(shuffle, envs, obs),
    }
    if other_ranks:
        state["other_ranks"] = list(other_ranks)
    meta = {
        "env_id": resolve_env_id(config.env_id),
        "network": agent.describe(),
        "config": config_to_dict(config),
        "iteration": iteration,
        "global_step": global_step,
        "beta": None if kl_controller is None else float(kl_controller.beta),
        "world_size": 1 + len(other_ranks or []),
    }
    save_checkpoint(path, CHECKPOINT_KIND, state, meta)


def restore_training_state(payload: dict, agent, optimizer, kl_controller, shuffle, envs, seed: int,
                           device: torch.device, rank: int = 0, world_size: int = 1) -> tuple[int, int, torch.Tensor]:
    """Put a run back where `save_training_state` left it; returns (iteration, global_step, obs).

    Rank r of N takes its own envs, normaliser statistics and random streams (rank 0's at the top
    level, the others' in `other_ranks`); the checkpoint must have been written by N processes.
    `seed` seeds fresh episodes when the env cannot be snapshot (this rank's env seed). Prints on
    stderr what continues exactly and what does not (`RESUME_EXACT`, `RESUME_EPISODES_RESTART`).
    """
    meta, state = payload["meta"], payload["state"]
    saved_world = meta.get("world_size", 1)
    if saved_world != world_size:
        raise ValueError(f"the checkpoint was written by {saved_world} process(es) and this run has {world_size}: "
                         f"resume with torchrun --nproc_per_node={saved_world}" if saved_world > 1
                         else f"the checkpoint was written by one process: resume without torchrun "
                              f"(this run has {world_size})")
    own = state if rank == 0 else state["other_ranks"][rank - 1]
    load_agent_weights(agent, payload)
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(own["torch_rng"])
    if "cuda_rng" in own and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(own["cuda_rng"])
    shuffle.set_state(own["shuffle_rng"])
    if kl_controller is not None and meta.get("beta") is not None:
        kl_controller.beta = meta["beta"]
    if hasattr(envs, "load_statistics"):
        envs.load_statistics(own.get("normalizers", {}))
    if "env" in own:
        envs.load_state_dict(own["env"])
        obs = own["obs"].to(device)
        print(RESUME_EXACT, file=sys.stderr)
    else:
        # gymnasium envs cannot be snapshot: start fresh episodes, seeded by the position in the run
        # (the reset also feeds the new first observations to the restored observation statistics)
        obs = envs.reset(seed=seed + meta["iteration"])
        print(RESUME_EPISODES_RESTART.format(env_id=meta["env_id"]), file=sys.stderr)
    return meta["iteration"], meta["global_step"], obs


def _to_cpu(value):
    """`value` with every tensor in it (nested dicts, lists, tuples) moved to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def load_agent_weights(agent: ActorCritic, payload: dict) -> None:
    """Load weights, with a clear error when the checkpoint's network differs from `agent`'s."""
    saved = {"continuous": False, **payload["meta"].get("network", {})}  # older checkpoints: discrete
    if saved != agent.describe():
        raise ValueError(f"checkpoint network {saved} does not match this agent {agent.describe()} "
                         f"(env {payload['meta'].get('env_id')!r})")
    agent.load_state_dict(payload["state"]["model"])


def load_agent(path, device: torch.device | str = "cpu") -> tuple[ActorCritic, dict]:
    """Rebuild the agent saved in a checkpoint; returns (agent, meta)."""
    payload = load_checkpoint(path, kind=CHECKPOINT_KIND, map_location=device)
    net = payload["meta"]["network"]
    agent = ActorCritic(tuple(net["obs_shape"]), net["n_actions"], arch=net["arch"], hidden=net["hidden"],
                        continuous=net.get("continuous", False))
    load_agent_weights(agent, payload)
    return agent.to(device).eval(), payload["meta"]


def load_normalizer_statistics(path) -> dict:
    """The observation/reward normaliser statistics saved with an agent ({} when it used none)."""
    return load_checkpoint(path, kind=CHECKPOINT_KIND)["state"].get("normalizers", {})
