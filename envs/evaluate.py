"""Evaluate a trained agent: greedy actions on held-out seeds, score statistics, watching.

    python -m envs.evaluate --checkpoint runs/<run>/checkpoint.pt
    python -m envs.evaluate --checkpoint envs/agents/flappy_features.pt --episodes 100 --cap 500 --json
    python -m envs.evaluate --checkpoint envs/agents/flappy_features.pt --render human
    python -m envs.evaluate --checkpoint runs/<run>/checkpoint.pt --video episode.mp4

Every episode runs in its own environment copy, all stepped together, and only each copy's
first episode counts, so short episodes are not over-represented. Seeds start at `--seed`
(10 000 by default, away from the training seeds). For Flappy Bird the score is the number of
pipes passed and `--cap` ends an episode (truncation) once it reaches that many; for other
games the score is the undiscounted episode return (the whole game's, on Atari) and `--cap` is
not used. An agent trained with observation normalisation sees its observations normalised by
the statistics saved in its checkpoint, frozen (they are not updated by evaluation).

Bad input (a missing or foreign checkpoint, an env id whose module is gone, `--episodes 0`,
`--cap -5`, `--device cuda` without a GPU) is refused in one line, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from core.checkpoint import CheckpointError
from envs.checkpoints import load_agent, load_normalizer_statistics
from envs.flappy_bird.record import VideoWriter
from envs.networks import ActorCritic
from envs.normalize import NormalizedEnv
from envs.vector import gym_id, make_vector_env, resolve_env_id


@torch.no_grad()
def evaluate_policy(
    agent: ActorCritic,
    env_id: str,
    *,
    episodes: int = 100,
    cap: int | None = 500,
    seed: int = 10_000,
    device: torch.device | str = "cpu",
    max_steps: int = 1_000_000,
    normalizers: dict | None = None,
    atari_backend: str = "native",
    give_up_below_cap: int | None = None,
) -> list[float]:
    """Scores of `episodes` greedy episodes, one per environment copy, seeds seed..seed+episodes−1.

    `normalizers`: the statistics a training run saved (`load_normalizer_statistics`); the
    observation normaliser is applied with them, frozen. `atari_backend`: see `make_vector_env`.
    `give_up_below_cap` (with `cap`): stop as soon as that many episodes have ended below the cap;
    the episodes still running then score NaN (a mastery check stops once mastery is out of reach).
    """
    if episodes < 1:
        raise ValueError(f"episodes must be ≥ 1, got {episodes}")
    give_up = give_up_below_cap is not None and cap is not None
    device = torch.device(device)
    env_id = resolve_env_id(env_id)  # "flappy" → "proximal/FlappyBird-v0", so the cap applies
    if device.type == "cpu" and agent.arch != "cnn":
        torch.set_num_threads(1)  # batch-of-100 MLP steps: threads only add synchronisation
    kwargs = {"max_score": cap} if gym_id(env_id).startswith("proximal/") and cap is not None else {}
    envs = make_vector_env(env_id, episodes, device, atari_backend=atari_backend, **kwargs)
    if normalizers and "obs" in normalizers:
        envs = NormalizedEnv(envs, obs=True, reward=False, frozen=True)
        envs.load_statistics(normalizers)
    agent = agent.to(device).eval()
    obs = envs.reset(seed=seed)
    scores = torch.zeros(episodes, device=device)
    finished = torch.zeros(episodes, dtype=torch.bool, device=device)
    for _ in range(max_steps):
        step = envs.step(agent.greedy_action(obs))
        ended = step.game_over & ~finished
        scores = torch.where(ended, step.episode_score, scores)
        finished |= ended
        if give_up:  # one host sync for both tests
            all_done, below = torch.stack([finished.all().long(), (finished & (scores < cap)).sum()]).tolist()
            if all_done or below >= give_up_below_cap:
                break
        elif bool(finished.all()):
            break
        obs = step.obs
    envs.close()
    if give_up and not bool(finished.all()):
        return torch.where(finished, scores, torch.nan).tolist()
    if not bool(finished.all()):
        raise RuntimeError(f"{int((~finished).sum())} episodes did not end within {max_steps} steps")
    return scores.tolist()


def summarize(scores: list[float], cap: int | None) -> dict:
    return {
        "episodes": len(scores),
        "cap": cap,
        "mean": statistics.fmean(scores),
        "median": statistics.median(scores),
        "min": min(scores),
        "max": max(scores),
        "at_cap": (sum(s >= cap for s in scores) / len(scores)) if cap is not None else None,
        "scores": scores,
    }


def np_obs_float(obs):
    """A gymnasium observation as the trainer saw it (float64 → float32; uint8 frames kept)."""
    import numpy as np

    obs = np.asarray(obs)
    return obs.astype(np.float32) if obs.dtype == np.float64 else obs


def watch(agent: ActorCritic, env_id: str, *, render: str | None, video: str | None, seed: int,
          cap: int | None, normalizers: dict | None = None, shrink: int = 1) -> dict:
    """Play one greedy episode in a pygame window (`render='human'`) and/or stream it to a video (.gif or .mp4).

    For Flappy Bird the agent sees exactly what it saw in training — the batched env's
    observations (features, or the 84×84 frames rasterised on the device) — while a single
    `FlappyBirdEnv` with the same seed draws the game: both play the same game step for step
    (tested bit for bit), so the lock-step below shows the agent's own episode. Returns the
    scores of what was shown: {"video": …, "human": …}.
    """
    shown: dict = {}
    from envs.flappy_bird.record import record_video, run_episode

    obs_rms = (normalizers or {}).get("obs")

    if env_id.startswith("proximal/"):
        kwargs = {"max_score": cap} if cap is not None else {}
        display_id = "proximal/FlappyBird-v0"

        def make_policy():
            training_view = make_vector_env(env_id, 1, torch.device("cpu"), **kwargs)
            state = {"obs": training_view.reset(seed=seed)}

            def policy(_display_obs):
                action = agent.greedy_action(state["obs"])
                state["obs"] = training_view.step(action).obs
                return int(action)

            return policy
    else:
        kwargs, display_id = {}, env_id
        if gym_id(env_id).startswith("ALE/"):
            from envs.atari import make_atari_env

            display_id = make_atari_env(env_id, render_mode="rgb_array" if video else render)

        def make_policy():
            def policy(obs):
                obs = torch.as_tensor(np_obs_float(obs))[None]
                if obs_rms is not None:  # the training statistics, frozen
                    obs = ((obs - obs_rms["mean"]) / torch.sqrt(obs_rms["var"] + 1e-8)).clamp(-10, 10).float()
                action = agent.greedy_action(obs)[0]
                return action.numpy() if agent.continuous else int(action)

            return policy

    if video:
        result = record_video(display_id, make_policy(), video, seed=seed, shrink=shrink, **kwargs)
        shown["video"] = result["score"] if result["score"] is not None else result["return"]
        print(f"saved {video}: {result['frames']} frames, score {shown['video']}", file=sys.stderr)
    if render == "human":
        if not isinstance(display_id, str):
            from envs.atari import make_atari_env

            display_id = make_atari_env(env_id, render_mode="human")
        shown["human"] = run_episode(display_id, make_policy(), seed=seed, render_mode="human", **kwargs)
        print(f"score {shown['human']}", file=sys.stderr)
    return shown


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by envs.train")
    parser.add_argument("--episodes", type=int, default=100, help="greedy episodes to run")
    parser.add_argument("--cap", type=int, default=500, help="Flappy Bird: end an episode at this many pipes")
    parser.add_argument("--seed", type=int, default=10_000, help="first held-out seed")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of the statistics")
    parser.add_argument("--render", choices=["human"], default=None, help="watch one episode in a window")
    parser.add_argument("--video", default=None, metavar="FILE",
                        help="stream one greedy episode to FILE: .gif or .mp4 (frames are written as they are drawn)")
    parser.add_argument("--shrink", type=int, default=1, metavar="K",
                        help="--video keeps one pixel in K along each side (2: half the width and height)")
    args = parser.parse_args(argv)
    from core.device import resolve_device

    def fail(message: str) -> None:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)

    if args.episodes < 1:
        fail(f"--episodes must be ≥ 1, got {args.episodes}")
    if args.video is not None and not args.video.lower().endswith(VideoWriter.SUFFIXES):
        fail(f"--video must end in {' or '.join(VideoWriter.SUFFIXES)}, got {args.video!r}")
    if args.shrink < 1:
        fail(f"--shrink must be ≥ 1 (1 keeps every pixel, 2 halves each side), got {args.shrink}")
    if args.cap < 1:
        fail(f"--cap must be ≥ 1 (pipes at which a Flappy Bird episode ends), got {args.cap}")
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        fail(f"--device {args.device!r}: {exc}")
    try:
        agent, meta = load_agent(args.checkpoint, device)
        normalizers = load_normalizer_statistics(args.checkpoint)
        env_id = resolve_env_id(meta["env_id"])
    except (CheckpointError, ValueError) as exc:
        fail(f"--checkpoint {args.checkpoint}: {exc}")
    backend = meta.get("config", {}).get("atari_backend", "native")
    cap = args.cap if gym_id(env_id).startswith("proximal/") else None
    if args.render or args.video:
        watch(agent.cpu(), env_id, render=args.render, video=args.video, seed=args.seed, cap=cap,
              normalizers=normalizers, shrink=args.shrink)
        if not args.json:
            return
    scores = evaluate_policy(agent, env_id, episodes=args.episodes, cap=cap, seed=args.seed, device=device,
                             normalizers=normalizers, atari_backend=backend)
    result = summarize(scores, cap)
    print(f"{env_id}: {result['episodes']} episodes · mean {result['mean']:.1f} · median {result['median']:.1f} · "
          f"min {result['min']:.0f} · max {result['max']:.0f}"
          + (f" · at cap {100 * result['at_cap']:.0f}%" if cap is not None else ""))
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
