"""The configuration of a game run: `TrainConfig`, its presets by env family, the command line.

    python -m envs.train --help          # every field as a flag, and the presets

Defaults: the fields of `TrainConfig`; those that differ by env family (flappy, flappy-pixels,
atari, classic, pendulum, mujoco, continuous) default to None and take the value of `PRESETS`
in `resolve`. The PPO update's fields are those of `core.ppo.PPOConfig` that apply to games, with
its defaults; `TrainConfig.ppo` builds the PPOConfig. `parse_config` reads a command line, or
the configuration saved in a run folder for `--resume`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Literal

import gymnasium as gym

from core.checkpoint import CheckpointError, load_checkpoint
from core.config import add_arguments, check_choices, from_arguments, given_flags
from core.device import resolve_device
from core.kl import KLControllerKind
from core.metrics import Tracker
from core.ppo import Objective, PPOConfig
from envs.checkpoints import CHECKPOINT_KIND
from envs.vector import env_spaces, gym_id, resolve_env_id

__all__ = ["TrainConfig", "PRESETS", "PRESET_NOTES", "env_family", "preset_for", "resolve", "parse_config",
           "parse_command_line", "make_parser", "check_env", "RESUME_FLAGS"]

DESCRIPTION = "Train a PPO agent on Flappy Bird (default), CartPole, Pendulum, MuJoCo, Atari or any gymnasium id."

@dataclass
class TrainConfig:
    """Everything one training run needs; the command line is generated from these fields.

    A field whose default is None takes its env family's value from `PRESETS` (see `resolve`).
    The PPO update's fields are those of `core.ppo.PPOConfig` that apply to games, with its
    defaults (`ppo` builds the PPOConfig).
    """

    # ---- the environment and the run ----
    env_id: str = "flappy"
    """Environment: 'flappy' (features), 'flappy-pixels', CartPole-v1, Pendulum-v1, HalfCheetah-v5, ALE/Pong-v5,
    any registered id, or 'module:EnvId' (the module is imported first and registers the id)."""
    atari_backend: Literal["native", "wrappers"] = "native"
    """Atari only: 'native' (ale-py's C++ vector env, fast) or 'wrappers' (gymnasium's wrappers, the reference)."""
    seed: int = 1
    """Seeds torch, NumPy, Python and the environments."""
    device: str = "auto"
    """'auto' (CUDA when present), 'cpu' or 'cuda'."""
    total_steps: int | None = None
    """Environment steps to train for (over all parallel envs), the most a run takes when it may stop when
    mastered; None: the preset's value."""
    stop_when_mastered: bool | None = None
    """Flappy Bird: every mastery_check_every steps the greedy policy plays 100 held-out episodes with the
    500-pipe cap; once ≥ 95% reach it, 100 more on fresh seeds; the run stops when both pass, its checkpoint
    the policy that passed (envs.mastery). --no-stop-when-mastered trains all total_steps. None: the preset's
    value (on for Flappy Bird from features; Flappy Bird is the only game with a mastery check)."""
    mastery_check_every: int = 327_680
    """Env steps between mastery checks (40 updates of the Flappy Bird preset; a check costs seconds, more
    as the policy nears the cap: its time is kept out of charts/sps)."""
    num_envs: int | None = None
    """N parallel environments (actors); None: the preset's value."""
    num_steps: int | None = None
    """T steps per env per rollout; a batch holds N·T transitions. None: the preset's value."""
    learning_rate: float | None = None
    """Adam's learning rate at the start (annealed linearly to 0 when anneal_lr); None: the preset's value."""
    anneal_lr: bool | None = None
    """Anneal the learning rate linearly to 0 over the run (detail 4); None: the preset's value."""
    gamma: float | None = None
    """γ, the discount factor; None: the preset's value."""
    gae_lambda: float = 0.95
    """λ of GAE(λ) (AD-4)."""
    arch: Literal["auto", "mlp", "mlp_shared", "cnn"] = "auto"
    """'mlp' (separate actor and critic), 'mlp_shared', 'cnn' (Nature CNN), or 'auto' (cnn for images, else mlp)."""
    hidden: int = 64
    """Width of the MLP layers."""
    norm_obs: bool | None = None
    """Normalise observations by their running mean and std, clipped to ±10 (continuous control); None: preset."""
    norm_reward: bool | None = None
    """Scale rewards by the running std of the discounted return, clipped to ±10 (continuous control); None: preset."""

    # ---- the PPO update (core.ppo.PPOConfig's fields for games) ----
    objective: Objective = PPOConfig.objective
    """'clip' (CL-1), 'kl_penalty' (TR-2), 'clip+kl_penalty', or 'ratio' (plain ρÂ, no trust region)."""
    clip_coef: float | None = None
    """ε: the ratio is clipped to [1 − ε, 1 + ε] (CL-1); None: the preset's value."""
    update_epochs: int | None = None
    """K: passes over the batch per update; None: the preset's value."""
    minibatch_size: int | None = None
    """Rows (steps) per minibatch; None: the preset's value."""
    norm_adv: bool = PPOConfig.norm_adv
    """Normalise advantages to zero mean, unit std in each minibatch (detail 7)."""
    clip_vloss: bool = PPOConfig.clip_vloss
    """Clip the value loss around the old values (detail 9)."""
    vf_clip_coef: float = PPOConfig.vf_clip_coef
    """ε_v: how far the value may move from the old value before its loss is clipped."""
    vf_coef: float | None = None
    """c₁: weight of the value loss ½(V − V^targ)² (CL-4); None: the preset's value."""
    ent_coef: float | None = None
    """c₂: weight of the entropy bonus (CL-4); None: the preset's value."""
    max_grad_norm: float | None = PPOConfig.max_grad_norm
    """Global gradient-norm clip (detail 11); none disables it."""
    target_kl: float | None = PPOConfig.target_kl
    """Early stop: end the epochs once the mean approx_kl of an epoch passes this; none never stops."""
    kl_coef: float = 1.0
    """β of the kl_penalty objective (TR-2), its initial value under a controller."""
    kl_controller: KLControllerKind = "adaptive"
    """β schedule of the kl_penalty objective: 'adaptive' (TR-3), 'proportional' (TR-4) or 'fixed'."""
    kl_controller_target: float = 0.01
    """d_targ: the KL[π_old‖π_θ] per update the adaptive/proportional β controller steers to."""

    # ---- output ----
    out: str | None = None
    """Output folder: config.json, metrics.jsonl, learning_curve.png, checkpoint.pt. None: a new folder
    runs/<env>__<seed>__<start time>, as CleanRL names its runs, so no run overwrites another."""
    overwrite: bool = False
    """Write into an --out folder that already holds a run (its files are replaced). Without it the
    trainer refuses, so a finished run is never lost by accident; --resume DIR continues one instead."""
    track: Tracker = "none"
    """Also log every metric of metrics.jsonl to 'tensorboard' event files in the run folder (CleanRL's
    names: charts/episodic_return, losses/approx_kl, …); 'none' writes metrics.jsonl only."""
    checkpoint_every: int = 25
    """Save a checkpoint every this many updates (and at the end, and on Ctrl-C)."""
    plot_every_seconds: float = 15.0
    """Redraw learning_curve.png at most this often."""
    progress: bool = True
    """Show a progress bar."""
    compile: bool | None = None
    """torch.compile each minibatch's network, loss and backward as one graph (core.ppo.ppo_update): about 1.3×
    faster minibatches on this CPU, 1–18 s to compile at the first update. None: on for an MLP on the CPU in a
    run of at least 2 M steps, where it pays for itself (envs.run_support.use_compile); off otherwise."""
    cpu_threads: int = 0
    """Torch CPU threads; 0 = auto: for MLPs 1 while collecting and up to 2 while updating (measured fastest on
    2 cores), all cores for the CNN (envs.run_support.cpu_threads). N: N threads throughout."""

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("total_steps", "num_envs", "num_steps", "checkpoint_every", "hidden", "update_epochs",
                     "mastery_check_every"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)!r}")
        if self.cpu_threads < 0:
            raise ValueError(f"cpu_threads must be ≥ 0 (0 = auto), got {self.cpu_threads!r}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        for name in ("gamma", "gae_lambda"):
            if getattr(self, name) is not None and not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        self._ppo_config(validate_only=True)  # the PPO fields, minibatch_size ≤ N·T among them

    @property
    def batch_size(self) -> int:
        """N·T transitions per rollout."""
        return self.num_envs * self.num_steps

    @property
    def num_iterations(self) -> int:
        return max(1, self.total_steps // self.batch_size)

    @property
    def ppo(self) -> PPOConfig:
        """The PPO update's configuration (of a resolved TrainConfig)."""
        return self._ppo_config()

    def _ppo_config(self, validate_only: bool = False) -> PPOConfig:
        ours = {f.name for f in dataclasses.fields(self)}
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(PPOConfig) if f.name in ours}
        if validate_only:  # fields still None take PPOConfig's defaults, just to check the others
            values = {name: value for name, value in values.items() if value is not None or name not in PRESET_FIELDS}
        batch_size = self.batch_size if self.num_envs is not None and self.num_steps is not None else None
        return PPOConfig(**values, batch_size=batch_size)


# The defaults that differ by env family: the value of every TrainConfig field left None.
# Discrete families follow CleanRL's ppo.py / ppo_atari.py (Flappy Bird tuned for speed); the
# continuous ones its ppo_continuous_action.py (lr 3e-4, 2048 steps per update, 32 minibatches,
# 10 epochs, no entropy bonus, normalised observations and rewards). MuJoCo keeps its one env ×
# 2048 steps: at 1 M steps on Hopper-v5, 8 envs × 256 (the same batch, 2.3× the steps/s, since one
# policy pass serves 8 envs) reached a training return of 1 709 where 1 × 2048 reached 3 041
# (envs/README.md); Pendulum and other continuous tasks take the faster 8 × 256.
_DISCRETE = dict(gamma=0.99, update_epochs=4, norm_obs=False, norm_reward=False, anneal_lr=True,
                 stop_when_mastered=False)
# vf_coef 1.0 on the continuous presets is twice CleanRL's value weight (its 0.5 with the same ½ in the loss):
# every continuous figure in envs/README.md was measured with it ("Differences from CleanRL" there).
_CONTINUOUS = dict(num_envs=8, num_steps=256, minibatch_size=64, learning_rate=3e-4, clip_coef=0.2, ent_coef=0.0,
                   vf_coef=1.0, total_steps=1_000_000, gamma=0.99, update_epochs=10, norm_obs=True, norm_reward=True,
                   anneal_lr=True, stop_when_mastered=False)
# Flappy Bird: at most 20 M steps, stopping once mastered (≥ 95% of greedy episodes at the 500-pipe cap on
# the held-out seeds, then on fresh ones). 20 M is the cap because a fixed-length run needs the long
# annealed tail: seed 1 with 10 M steps ended at 86% at the cap; with 20 M at 97% on the 100 held-out
# and 97% on 100 fresh seeds (seed 2: 94% and 98%). The share at the cap swings while the learning rate
# is large (seed 1: 83%, 67%, 94% at 5, 10, 15 M), which is why a stop needs the second check on fresh
# seeds (envs/README.md). The learning rate anneals over the cap; a stop comes partway down that ramp.
# vf_coef 1.0: the tuned weight, ½ in the loss.
_FLAPPY = dict(num_envs=64, num_steps=128, minibatch_size=1024, learning_rate=3e-3, clip_coef=0.2, ent_coef=0.01,
               vf_coef=1.0, total_steps=20_000_000, **{**_DISCRETE, "stop_when_mastered": True})
PRESETS: dict[str, dict] = {
    "flappy": _FLAPPY,
    # the same recipe; the observation shape picks the CNN. No mastery stop by default: its check would
    # render 200 games to the cap every 40 updates (--stop-when-mastered asks for it)
    "flappy-pixels": {**_FLAPPY, "stop_when_mastered": False},
    "atari": dict(num_envs=8, num_steps=128, minibatch_size=256, learning_rate=2.5e-4, clip_coef=0.1,
                  ent_coef=0.01, vf_coef=0.5, total_steps=10_000_000, **_DISCRETE),
    # any other discrete task: CleanRL's ppo.py loss and details with SB3's defaults for the update
    # (2 048-step batches, 32 minibatches of 64, 10 epochs, lr 3e-4 held constant, no entropy bonus):
    # 320 gradient steps per 2 048 steps where ppo.py takes 16 per 512. ppo.py's own update learned
    # nothing on Flappy Bird's 12 features in 400 k steps; with the entropy bonus and the annealed
    # rate it learned, below SB3 (17.8 against 20.5 at 300 k); without them it holds CleanRL's bars on
    # CartPole and Acrobot and matches or beats SB3 on the unseen tasks (envs/README.md, "Defaults that hold").
    "classic": {**_DISCRETE, **dict(num_envs=8, num_steps=256, minibatch_size=64, learning_rate=3e-4, clip_coef=0.2,
                                    ent_coef=0.0, vf_coef=0.5, total_steps=500_000, update_epochs=10,
                                    anneal_lr=False)},
    # Pendulum-v1: the continuous recipe with a shorter horizon (γ 0.9, as RL Zoo's tuned PPO), a larger
    # learning rate and 4 minibatches: greedy mean ≥ −200 after 1.2e5 steps, in about 2 minutes here (envs/README.md)
    "pendulum": {**_CONTINUOUS, **dict(minibatch_size=512, learning_rate=1e-3, gamma=0.9, total_steps=120_000)},
    "mujoco": {**_CONTINUOUS, **dict(num_envs=1, num_steps=2048)},
    "continuous": dict(_CONTINUOUS),
}
PRESET_FIELDS = tuple(PRESETS["flappy"])
# What each preset is, in the one line the trainer prints at the start of a run.
PRESET_NOTES = {  # the reference each preset follows; its values are printed just above this line
    "flappy": "our Flappy Bird's tuned recipe (the shipped agent's)",
    "flappy-pixels": "our Flappy Bird's tuned recipe, Nature CNN on the frames",
    "atari": "CleanRL's ppo_atari.py",
    "classic": "discrete actions: CleanRL's ppo.py loss with SB3's update (constant rate, no entropy bonus), the "
               "default that held CleanRL's bars and beat SB3 on unseen tasks (envs.bench_suite; envs/README.md)",
    "pendulum": "CleanRL's ppo_continuous_action.py with Pendulum's shorter horizon and larger learning rate",
    "mujoco": "CleanRL's ppo_continuous_action.py",
    "continuous": "CleanRL's ppo_continuous_action.py with 8 envs × 256 steps",
}


@lru_cache(maxsize=64)
def env_family(env_id: str) -> str:
    """The row of `PRESETS` for an env id: 'flappy', 'flappy-pixels', 'atari', 'pendulum',
    'mujoco' (gymnasium's MuJoCo envs), 'continuous' (any other Box action space) or 'classic'
    (the rest: discrete actions). Raises ValueError for an unknown id or an unsupported space."""
    name = gym_id(resolve_env_id(env_id))
    if name.startswith("proximal/"):
        return "flappy-pixels" if "Pixels" in name else "flappy"
    if name.startswith("ALE/"):
        return "atari"
    if not isinstance(env_spaces(env_id)[1], gym.spaces.Box):
        return "classic"
    if name.startswith("Pendulum-"):
        return "pendulum"
    return "mujoco" if "gymnasium.envs.mujoco" in str(gym.spec(name).entry_point) else "continuous"


def preset_for(env_id: str) -> dict:
    """The preset of an env id's family (a copy)."""
    return dict(PRESETS[env_family(env_id)])


def resolve(config: TrainConfig) -> TrainConfig:
    """`config` with every field left None filled from its env family's preset, and the run folder
    named when `out` is None (a no-op on a resolved config)."""
    preset = preset_for(config.env_id)
    filled = {name: value for name, value in preset.items() if getattr(config, name) is None}
    if config.out is None:
        filled["out"] = default_run_folder(config.env_id, config.seed)
    if config.stop_when_mastered and not env_family(config.env_id).startswith("flappy"):
        raise ValueError(f"stop_when_mastered: only Flappy Bird has a mastery check, not {config.env_id!r}; "
                         "leave --stop-when-mastered out (the run trains total_steps)")
    return replace(config, **filled)


def default_run_folder(env_id: str, seed: int) -> str:
    """runs/<env>__<seed>__<YYYYmmdd-HHMMSS>, e.g. runs/FlappyBird-v0__1__20261130-041502 (CleanRL's
    `{env_id}__{exp_name}__{seed}__{time}` without the script name)."""
    env = resolve_env_id(env_id).split("/")[-1].replace(":", "-")
    return f"runs/{env}__{seed}__{time.strftime('%Y%m%d-%H%M%S')}"




# What a resumed run may change: how long it runs and where and how it shows its progress.
# Every other flag would change the run itself, so `--resume` keeps the saved value and says so.
RESUME_FLAGS = ("total_steps", "stop_when_mastered", "mastery_check_every", "device", "cpu_threads", "compile",
                "progress", "plot_every_seconds", "checkpoint_every", "track")


def make_parser() -> argparse.ArgumentParser:
    presets = "\n".join(f"  {family:<14} " + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                                     for k, v in values.items())
                        for family, values in PRESETS.items())
    parser = argparse.ArgumentParser(
        prog="python -m envs.train",
        description=DESCRIPTION,
        epilog=f"presets (the value of a field whose default is None), by env family:\n{presets}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser, TrainConfig)
    parser.add_argument("--env", dest="env_id", default=argparse.SUPPRESS, help="alias of --env-id")
    parser.add_argument("--resume", metavar="DIR", default=None,
                        help=f"continue the run saved in DIR with its saved configuration; only "
                             f"{', '.join('--' + f.replace('_', '-') for f in RESUME_FLAGS)} apply")
    return parser


def parse_config(argv: list[str] | None = None) -> tuple[TrainConfig, str | None]:
    """The resolved configuration of a command line, and the run folder to resume (or None).

    With `--resume DIR` the configuration saved in DIR's checkpoint is used, with the output
    folder DIR and the flags of `RESUME_FLAGS` the command line gave; any other flag given is
    named on stderr as ignored.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.resume is None:
        config = from_arguments(TrainConfig, args)
        check_env(config.env_id)
        return resolve(config), None
    try:
        saved = load_checkpoint(Path(args.resume) / "checkpoint.pt", kind=CHECKPOINT_KIND)["meta"]["config"]
    except CheckpointError as exc:
        raise CheckpointError(f"--resume {args.resume}: {exc}") from None
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    given = given_flags(argv, parser) - {"resume"}
    ignored = sorted(given - set(RESUME_FLAGS))
    if ignored:
        print(f"--resume: ignoring {', '.join('--' + name.replace('_', '-') for name in ignored)} "
              "(the run's saved configuration is used)", file=sys.stderr)
    config = TrainConfig(**{name: value for name, value in saved.items() if name in known})
    kept = {name: getattr(args, name) for name in given if name in RESUME_FLAGS}
    return resolve(replace(config, out=str(args.resume), **kept)), args.resume


def parse_command_line(argv: list[str] | None = None) -> tuple[TrainConfig, dict | None]:
    """The resolved configuration of a command line and the loaded checkpoint to resume (or None).
    Raises ValueError or CheckpointError naming the flag at fault, before anything is built."""
    config, resume_dir = parse_config(argv)
    resolve_device(config.device)  # --device cuda without a GPU
    resume = load_checkpoint(Path(resume_dir) / "checkpoint.pt", kind=CHECKPOINT_KIND) if resume_dir else None
    return config, resume


def check_env(env_id: str) -> None:
    """Raise ValueError naming --env-id for an id that is unknown, whose module cannot be imported,
    which cannot be built, or whose action space the agent has no policy for."""
    try:
        env_family(env_id)
    except ValueError as exc:
        raise ValueError(f"--env-id {env_id!r}: {exc}") from None

