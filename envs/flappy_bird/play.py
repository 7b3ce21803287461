"""Play Flappy Bird yourself, or watch the autopilot: `python -m envs.flappy_bird.play`.

Keys: space or up arrow to flap, Esc (or closing the window) to quit; after a crash, space
starts a new game. `--autopilot` lets the look-ahead player fly instead. The game is the
`proximal/FlappyBird-v0` env in human render mode, so what you play is exactly what an agent
is trained on (30 frames per second, one step per frame).

    python -m envs.flappy_bird.play --seed 3 --pipe-gap 120
    python -m envs.flappy_bird.play --autopilot
"""

from __future__ import annotations

import argparse

from .autopilot import autopilot
from .env import FlappyBirdEnv


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=None, help="seed of the first game")
    parser.add_argument("--pipe-gap", type=int, default=100, help="gap between pipes, px")
    parser.add_argument("--ceiling", choices=("clamp", "crash"), default="clamp")
    parser.add_argument("--autopilot", action="store_true", help="watch the scripted player")
    args = parser.parse_args(argv)

    env = FlappyBirdEnv(render_mode="human", pipe_gap=args.pipe_gap, ceiling=args.ceiling)
    obs, info = env.reset(seed=args.seed)  # opens the window
    import pygame  # after the env: rendering has imported and initialised it

    flap_keys = (pygame.K_SPACE, pygame.K_UP)
    best = 0
    try:
        while True:
            flap, quit_game = False, False
            for event in pygame.event.get():
                if event.type == pygame.QUIT or (
                    event.type == pygame.KEYDOWN and event.key == pygame.K_ESCAPE
                ):
                    quit_game = True
                elif event.type == pygame.KEYDOWN and event.key in flap_keys:
                    flap = True
            if quit_game:
                break
            action = autopilot(obs, env.config) if args.autopilot else int(flap)
            obs, reward, terminated, truncated, info = env.step(action)  # draws, waits 1/30 s
            if terminated or truncated:
                best = max(best, info["score"])
                print(f"score {info['score']}  (best {best})")
                if not args.autopilot and not _wait_for_restart(pygame, flap_keys):
                    break
                obs, info = env.reset()
    finally:
        env.close()


def _wait_for_restart(pygame, flap_keys) -> bool:
    """Block until a flap key (True: play again) or Esc / window close (False)."""
    while True:
        event = pygame.event.wait()
        if event.type == pygame.QUIT:
            return False
        if event.type == pygame.KEYDOWN:
            if event.key == pygame.K_ESCAPE:
                return False
            if event.key in flap_keys:
                return True


if __name__ == "__main__":
    main()
