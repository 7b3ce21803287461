"""Actor-critic networks for the gymnasium agent: tanh MLPs for feature vectors, the Nature CNN
for pixels, and a diagonal Gaussian policy for continuous actions.

Details of "The 37 Implementation Details of PPO" (Huang et al. 2022): orthogonal initialisation
(detail 2: gain √2 in hidden layers, 0.01 for the policy head, 1 for the value head), separate
actor and critic MLPs of 64 units by default (detail 13), and for a Box action space CleanRL's
`ppo_continuous_action.py`: a state-independent log-std (σ = 1 at the start), actions sampled
unclipped (the env adapter clips them), log π and entropy summed over the action's dimensions.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.losses import entropy_from_logits
from core.ppo import Evaluation

__all__ = ["layer_init", "ActorCritic", "ARCHITECTURES", "gaussian_log_prob", "gaussian_entropy"]

ARCHITECTURES = ("mlp", "mlp_shared", "cnn")
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def gaussian_log_prob(actions: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(a; μ, diag σ²) = Σ_i [−½((a_i − μ_i)/σ_i)² − log σ_i − ½ log 2π].

    actions a and mean μ (B, A); log_std log σ (A,) or (B, A). Returns (B,): the log-density of
    the whole action vector, its dimensions independent (CleanRL: `Normal(μ, σ).log_prob(a).sum(1)`).
    """
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - HALF_LOG_2PI).sum(-1)


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    """H[N(μ, diag σ²)] = Σ_i ½ log(2πe σ_i²) = Σ_i (log σ_i + ½ + ½ log 2π), independent of μ.

    log_std log σ (..., A) → (...) (CleanRL: `Normal(μ, σ).entropy().sum(1)`).
    """
    return (log_std + 0.5 + HALF_LOG_2PI).sum(-1)


def layer_init(layer: nn.Module, gain: float = math.sqrt(2), bias: float = 0.0) -> nn.Module:
    """Orthogonal weights with `gain`, constant bias (detail 2)."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.constant_(layer.bias, bias)
    return layer


def _mlp(in_dim: int, hidden: int, out_dim: int, out_gain: float) -> nn.Sequential:
    return nn.Sequential(
        layer_init(nn.Linear(in_dim, hidden)), nn.Tanh(),
        layer_init(nn.Linear(hidden, hidden)), nn.Tanh(),
        layer_init(nn.Linear(hidden, out_dim), gain=out_gain),
    )


class NatureCNN(nn.Module):
    """Mnih et al. 2015's convolutional trunk: (B, C, 84, 84) uint8 → (B, 512) features."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.net = nn.Sequential(
            layer_init(nn.Conv2d(in_channels, 32, 8, stride=4)), nn.ReLU(),  # (B, 32, 20, 20)
            layer_init(nn.Conv2d(32, 64, 4, stride=2)), nn.ReLU(),  # (B, 64, 9, 9)
            layer_init(nn.Conv2d(64, 64, 3, stride=1)), nn.ReLU(),  # (B, 64, 7, 7)
            nn.Flatten(),
            layer_init(nn.Linear(64 * 7 * 7, 512)), nn.ReLU(),  # (B, 512)
        )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs.float() / 255.0)  # pixels in [0, 1] (detail: scale the input)


class ActorCritic(nn.Module):
    """π_θ(a|s) and V_ψ(s), for one of three architectures.

    The policy is a categorical over `n_actions` actions, or with `continuous` a diagonal
    Gaussian over an `n_actions`-dimensional action vector: the policy head gives its mean,
    `log_std` (n_actions,) its state-independent log standard deviation.

    - "mlp": separate tanh MLPs for actor and critic (features; CleanRL's default)
    - "mlp_shared": one tanh trunk, two linear heads
    - "cnn": the Nature CNN trunk shared by a policy head and a value head (pixels, Atari)
    """

    def __init__(self, obs_shape: tuple[int, ...], n_actions: int, arch: str = "mlp", hidden: int = 64,
                 continuous: bool = False):
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {arch!r}: expected one of {ARCHITECTURES}")
        self.obs_shape, self.n_actions, self.arch, self.hidden = tuple(obs_shape), n_actions, arch, hidden
        self.continuous = continuous
        if continuous:  # CleanRL's actor_logstd: σ = 1 at the start, learned, the same in every state
            self.log_std = nn.Parameter(torch.zeros(n_actions))
        if arch == "cnn":
            if len(obs_shape) != 3:
                raise ValueError(f"the CNN needs (C, H, W) observations, got shape {tuple(obs_shape)}")
            self.trunk = NatureCNN(obs_shape[0])
            self.policy_head = layer_init(nn.Linear(512, n_actions), gain=0.01)
            self.value_head = layer_init(nn.Linear(512, 1), gain=1.0)
        else:
            if len(obs_shape) != 1:
                raise ValueError(
                    f"the MLP needs flat feature observations, got shape {tuple(obs_shape)}; use --arch cnn"
                )
            if arch == "mlp":
                self.actor = _mlp(obs_shape[0], hidden, n_actions, out_gain=0.01)
                self.critic = _mlp(obs_shape[0], hidden, 1, out_gain=1.0)
            else:
                self.trunk = nn.Sequential(
                    layer_init(nn.Linear(obs_shape[0], hidden)), nn.Tanh(),
                    layer_init(nn.Linear(hidden, hidden)), nn.Tanh(),
                )
                self.policy_head = layer_init(nn.Linear(hidden, n_actions), gain=0.01)
                self.value_head = layer_init(nn.Linear(hidden, 1), gain=1.0)

    def describe(self) -> dict:
        """What a checkpoint needs to rebuild this network."""
        return {"obs_shape": list(self.obs_shape), "n_actions": self.n_actions, "arch": self.arch,
                "hidden": self.hidden, "continuous": self.continuous}

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """obs (B, *obs_shape) → logits (B, A) (the Gaussian's mean with `continuous`), values (B,)."""
        if self.arch == "mlp":
            obs = obs.float()
            return self.actor(obs), self.critic(obs).squeeze(-1)
        features = self.trunk(obs if self.arch == "cnn" else obs.float())
        return self.policy_head(features), self.value_head(features).squeeze(-1)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        if self.arch == "mlp":
            return self.critic(obs.float()).squeeze(-1)
        return self.forward(obs)[1]

    @torch.no_grad()
    def act(self, obs: torch.Tensor, greedy: bool = False, generator: torch.Generator | None = None):
        """Sample (or take the most likely) action: returns actions (B,) or (B, A), log π (B,), V (B,)."""
        logits, values = self.forward(obs)
        if self.continuous:  # a = μ + σ·ξ, ξ ~ N(0, I), unclipped; greedy: a = μ
            actions = logits
            if not greedy:
                noise = torch.randn(logits.shape, device=logits.device, generator=generator)
                actions = logits + torch.exp(self.log_std) * noise
            return actions, gaussian_log_prob(actions, logits, self.log_std), values
        if greedy:
            actions = logits.argmax(dim=-1)
        else:
            # Gumbel-max sampling: one kernel, no host sync, and an optional explicit generator.
            uniform = torch.rand(logits.shape, device=logits.device, generator=generator)
            actions = (logits - torch.log(-torch.log(uniform.clamp_(1e-20, 1.0)))).argmax(dim=-1)
        logprobs = F.log_softmax(logits, dim=-1).gather(-1, actions[:, None]).squeeze(-1)
        return actions, logprobs, values

    @torch.no_grad()
    def greedy_action(self, obs: torch.Tensor) -> torch.Tensor:
        """The most likely action (B,), or the Gaussian's mean (B, A): `act(obs, greedy=True)`'s actions
        from the policy's layers alone, what an evaluation plays (the critic and log π are not needed,
        so a 100-env Flappy Bird frame costs 70 µs of network instead of 157 on this CPU)."""
        if self.arch == "mlp":
            logits = self.actor(obs.float())
        else:
            logits = self.policy_head(self.trunk(obs if self.arch == "cnn" else obs.float()))
        return logits if self.continuous else logits.argmax(dim=-1)

    def predict(self, obs, greedy: bool = True):
        """The action for one observation or a batch, as gymnasium envs take it (the SB3-style call).

        `obs`: a NumPy array or tensor, one observation `obs_shape` or a batch `(B, *obs_shape)`.
        Returns an int for one observation, a NumPy array `(B,)` for a batch; `greedy=False`
        samples from π(·|s) instead of taking its most likely action.
        """
        device = next(self.parameters()).device
        obs = torch.as_tensor(obs, device=device)
        single = obs.shape == self.obs_shape
        actions = self.act(obs[None] if single else obs, greedy=greedy)[0].cpu()
        return int(actions[0]) if single else actions.numpy()

    def evaluate(self, minibatch: dict[str, torch.Tensor]) -> Evaluation:
        """The `evaluate` callable of `core.ppo.ppo_update`: new log π, entropy and V of stored actions."""
        logits, values = self.forward(minibatch["obs"])
        if self.continuous:
            entropy = gaussian_entropy(self.log_std).expand(logits.shape[0])
            return Evaluation(gaussian_log_prob(minibatch["actions"], logits, self.log_std), entropy, values)
        log_probs = F.log_softmax(logits, dim=-1)  # (B, A)
        taken = log_probs.gather(-1, minibatch["actions"].long()[:, None]).squeeze(-1)  # (B,)
        return Evaluation(taken, entropy_from_logits(logits), values)
