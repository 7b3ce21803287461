"""Train a PPO agent on Flappy Bird (default), CartPole, Pendulum, MuJoCo, Atari or any gymnasium id.

    python -m envs.train                                  # Flappy Bird from features, until mastered
    python -m envs.train --no-stop-when-mastered          # the same, for all of total_steps (20 M)
    python -m envs.train --env CartPole-v1 --total-steps 200000
    python -m envs.train --env Pendulum-v1 --out runs/pendulum     # continuous actions: a Gaussian policy
    python -m envs.train --env HalfCheetah-v5 --out runs/cheetah   # MuJoCo (pip install mujoco)
    python -m envs.train --env ALE/Pong-v5 --device cuda
    python -m envs.train --env my_package:MyEnv-v0        # a third-party id: the module registers it
    python -m envs.train --resume runs/FlappyBird-v0__1__20261130-041502   # continue a stopped run

PPO as in Algorithm 1 of the PPO paper with the 13 core details of "The 37 Implementation
Details of PPO" (Huang et al. 2022): vectorised envs (1), orthogonal init (2), Adam ε = 1e-5
(3), learning-rate annealing (4), GAE (5), shuffled minibatches (6), advantage normalisation
(7), clipped surrogate (8), value clipping (9), entropy bonus (10), global grad-norm clipping
(11), debug metrics (12), separate or shared networks (13) — plus what CleanRL's `ppo.py`
lacks: a truncated episode bootstraps from V(final observation), a terminated one from 0.

Continuous actions (diagonal Gaussian, normalised observations and rewards), the stop once
Flappy Bird is mastered (`stop_when_mastered`: held-out, then fresh seeds; `total_steps` the
cap, the learning rate annealed over it) and the presets: `envs.config` and envs/README.md.

Read in order: `train` (the loop), `collect`, `RolloutBuffer.batch` (GAE), then `core.ppo`
(`ppo_update`, `ppo_loss`) and the agent (`envs.networks.ActorCritic.act`, `.evaluate`). The
configuration and its presets are in `envs.config`; setup, logs, plots, checkpoints, Ctrl-C and
torchrun in `envs.run_support`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

from core import distributed
from core.advantages import gae
from core.checkpoint import CheckpointError
from core.ppo import ppo_update
from envs.config import TrainConfig, parse_command_line, resolve
from envs.networks import ActorCritic
from envs.run_support import Run, StopRequest, print_end, print_start
from envs.vector import AgentEnv

__all__ = ["train", "collect", "RolloutBuffer", "main"]


def train(
    config: TrainConfig,
    resume: dict | None = None,
    stop_after_iterations: int | None = None,
    stop_when: Callable[[ActorCritic, int], bool] | None = None,
) -> dict:
    """Run PPO; return a summary. `config` is resolved first (fields left None take the preset);
    `resume` is a loaded checkpoint; `stop_after_iterations` stops as if interrupted (tests of
    resumption); `stop_when(agent, global_step)` is asked after each update whether the run is
    done (benchmarks stop once the task is solved). With `config.stop_when_mastered` the run also
    stops once the Flappy Bird mastery check passes on held-out and fresh seeds (`envs.mastery`);
    the summary's `mastered` is then that check's record."""
    config = resolve(config)
    run = Run(config, resume, stop_after_iterations, stop_when)  # seeds, envs, agent, optimiser, outputs
    agent, envs, optimizer, obs = run.agent, run.envs, run.optimizer, run.obs
    rollout = RolloutBuffer.for_agent(agent, obs, config.num_steps)
    with StopRequest() as stop:  # Ctrl-C: finish this update, save, stop
        for iteration in range(run.start_iteration, run.num_iterations):
            if config.anneal_lr:  # detail 4: linear decay to 0 over total_steps (a run that stops when
                # mastered stops partway down this ramp: the schedule, and so the run up to its stop, is
                # the fixed-length run's)
                optimizer.param_groups[0]["lr"] = config.learning_rate * (1.0 - iteration / run.num_iterations)

            # 1. Collect N × T transitions with the current policy (no gradients, no host syncs).
            torch.set_num_threads(run.rollout_threads)  # on a CPU, small ops run fastest on one thread
            obs = collect(agent, envs, obs, rollout, run.episodes)
            run.global_step += config.batch_size * run.world

            # 2. Advantages by GAE(λ), bootstrapping from V(final obs) at a truncation and from
            # nothing at a termination; the critic's targets V^targ = Â + V.
            batch = rollout.batch(agent.value, obs, gamma=config.gamma, gae_lambda=config.gae_lambda)

            # 3. K epochs of PPO on the N·T rows (gradients averaged over the ranks under torchrun).
            torch.set_num_threads(run.update_threads)  # larger ops: two threads (envs.run_support.cpu_threads)
            stats = ppo_update(agent.evaluate, batch, optimizer, run.ppo_config, kl_controller=run.kl_controller,
                               generator=run.shuffle, ranks=distributed.ranks(), compile=run.compile)

            # 4. Log, plot, checkpoint; stop on Ctrl-C, `stop_when` or `stop_after_iterations`.
            if run.end_update(iteration, stats, obs, stop):
                break
    return run.finish()


def collect(agent: ActorCritic, envs: AgentEnv, obs: torch.Tensor, rollout: RolloutBuffer,
            episodes: dict[str, torch.Tensor]) -> torch.Tensor:
    """Step the N envs T times with actions sampled from π_θ, filling `rollout`; add the return, score,
    length and count of the episodes that end to `episodes`. Returns the observations after the
    last step. `obs` (N, *obs_shape); `envs` an `envs.vector.AgentEnv` (or its `NormalizedEnv`);
    everything stays on the device."""
    for t in range(rollout.num_steps):
        actions, logprobs, values = agent.act(obs)
        step = envs.step(actions)
        rollout.obs[:, t], rollout.actions[:, t] = obs, actions
        rollout.logprobs[:, t], rollout.values[:, t] = logprobs, values
        rollout.rewards[:, t] = step.reward
        rollout.terminations[:, t], rollout.truncations[:, t] = step.terminated, step.truncated
        rollout.final_obs[:, t] = step.final_obs  # where an episode ended: the observation it ended in
        episodes["returns"] += step.episode_return.sum()
        episodes["scores"] += step.episode_score.sum()
        episodes["lengths"] += step.episode_length.sum()
        episodes["count"] += step.game_over.sum()
        obs = step.obs
    return obs


@dataclass
class RolloutBuffer:
    """One rollout of `num_envs` × `num_steps` transitions, preallocated on the device the envs step on.

    Env-major, N actors × T steps: every field is `(N, T, ...)`. `core.advantages` takes time
    *last*, so GAE runs on the fields as they are, and `batch` flattens them to N·T rows with a
    reshape. Nothing leaves the device except one `nonzero` per rollout (which rows ended an episode).

    Per step t the loop writes: `obs[:, t]` (the observation the action was chosen from),
    `actions[:, t]`, `logprobs[:, t]` (log π_old), `values[:, t]` (V(s_t)), then after stepping
    `rewards[:, t]`, `terminations[:, t]`, `truncations[:, t]` and `final_obs[:, t]`: the
    observation step t ended in where an episode ended there (gymnasium's `final_obs`; the
    next observation elsewhere, where it is not read).
    """

    obs: torch.Tensor  # (N, T, *obs_shape)
    actions: torch.Tensor  # (N, T, *action_shape)
    logprobs: torch.Tensor  # (N, T)
    values: torch.Tensor  # (N, T)
    rewards: torch.Tensor  # (N, T)
    terminations: torch.Tensor  # (N, T), 1.0 where the episode reached a terminal state
    truncations: torch.Tensor  # (N, T), 1.0 where a time or score limit cut the episode
    final_obs: torch.Tensor  # (N, T, *obs_shape), read only where terminations or truncations is 1

    @classmethod
    def allocate(
        cls,
        *,
        num_envs: int,
        num_steps: int,
        obs_shape: tuple[int, ...],
        action_shape: tuple[int, ...] = (),
        obs_dtype: torch.dtype = torch.float32,
        action_dtype: torch.dtype = torch.long,
        device: torch.device | str = "cpu",
    ) -> RolloutBuffer:
        if num_steps < 1 or num_envs < 1:
            raise ValueError(f"num_envs and num_steps must be ≥ 1, got {num_envs} and {num_steps}")

        def zeros(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        n, t = num_envs, num_steps
        return cls(
            obs=zeros(n, t, *obs_shape, dtype=obs_dtype),
            actions=zeros(n, t, *action_shape, dtype=action_dtype),
            logprobs=zeros(n, t),
            values=zeros(n, t),
            rewards=zeros(n, t),
            terminations=zeros(n, t),
            truncations=zeros(n, t),
            final_obs=zeros(n, t, *obs_shape, dtype=obs_dtype),
        )

    @classmethod
    def for_agent(cls, agent: ActorCritic, obs: torch.Tensor, num_steps: int) -> RolloutBuffer:
        """Storage for `num_steps` steps of the envs whose observations are `obs` (N, *obs_shape), holding
        the agent's actions: () long or (A,) float32 (it asks for a greedy action: no random number drawn)."""
        actions = agent.act(obs[:1], greedy=True)[0]
        return cls.allocate(num_envs=obs.shape[0], num_steps=num_steps, obs_shape=tuple(obs.shape[1:]),
                            obs_dtype=obs.dtype, action_shape=tuple(actions.shape[1:]), action_dtype=actions.dtype,
                            device=obs.device)

    @property
    def num_envs(self) -> int:
        return self.rewards.shape[0]

    @property
    def num_steps(self) -> int:
        return self.rewards.shape[1]

    @torch.no_grad()
    def next_values(self, critic: Callable[[torch.Tensor], torch.Tensor], last_obs: torch.Tensor) -> torch.Tensor:
        """V(s_{t+1}) of the state each step led to, (N, T).

        Where the episode went on, s_{t+1} is the next step's observation and its value is
        `values[:, t+1]`, already computed when the action was chosen; after the last step it
        is V(`last_obs`), one critic pass (CleanRL's `next_value`). Where the episode ended at
        step t, it is V(final observation): one critic pass over those rows only, gathered
        with one `nonzero` (the rollout's only host sync). A terminated row's value is then
        dropped by GAE; a truncated row's is its bootstrap (AD-5).

        `critic(obs (B, *obs_shape)) -> (B,)`; `last_obs` (N, *obs_shape).
        """
        next_values = torch.cat([self.values[:, 1:], critic(last_obs)[:, None]], dim=1)  # (N, T)
        ended = (self.terminations + self.truncations).nonzero(as_tuple=True)  # (k,), (k,) env and step
        if ended[0].numel() > 0:
            next_values[ended] = critic(self.final_obs[ended]).to(next_values.dtype)
        return next_values

    def batch(
        self,
        critic: Callable[[torch.Tensor], torch.Tensor],
        last_obs: torch.Tensor,
        *,
        gamma: float,
        gae_lambda: float,
    ) -> dict[str, torch.Tensor]:
        """The batch `core.ppo.ppo_update` expects, N·T rows (row n·T + t is env n's step t).

        Â = GAE(λ) over each env's steps with termination ≠ truncation (AD-4, AD-5), and the
        critic's target V^targ = Â + V (AD-7). `critic` and `last_obs`: see `next_values`.
        """
        next_values = self.next_values(critic, last_obs)  # (N, T)
        advantages = gae(self.rewards, self.values, gamma=gamma, gae_lambda=gae_lambda, next_values=next_values,
                         terminations=self.terminations, truncations=self.truncations)  # (N, T)
        rows = self.num_envs * self.num_steps
        return {
            "obs": self.obs.reshape(rows, *self.obs.shape[2:]),
            "actions": self.actions.reshape(rows, *self.actions.shape[2:]),
            "logprobs": self.logprobs.reshape(rows),
            "values": self.values.reshape(rows),
            "advantages": advantages.reshape(rows),
            "returns": (advantages + self.values).reshape(rows),
        }


def main(argv: list[str] | None = None) -> None:
    """python -m envs.train: read the command line (or the run to resume), train, say where the agent is."""
    try:
        config, resume = parse_command_line(argv)
    except (ValueError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print_start(config, resume)
    try:
        summary = train(config, resume=resume)
    finally:
        distributed.cleanup()
    print_end(config, summary)


if __name__ == "__main__":
    main()
