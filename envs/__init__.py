"""Game front end: environments (Flappy Bird, Atari) and their benchmark.

Importing `envs` registers the Flappy Bird ids with gymnasium:

- `proximal/FlappyBird-v0`: 12 normalised features (`obs_type="features"`);
- `proximal/FlappyBirdPixels-v0`: the rendered RGB frame (`obs_type="pixels"`).

Both are limited to 20,000 frames by `max_episode_steps` and have a batched version as their
`vector_entry_point`, so `gymnasium.make_vec(id, num_envs=N, vectorization_mode=
"vector_entry_point", device="cuda")` builds `envs.flappy_bird.BatchedFlappyBird`.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium

from .flappy_bird.rules import MAX_EPISODE_STEPS

__all__ = ["FLAPPY_ID", "FLAPPY_PIXELS_ID", "SHIPPED_AGENT"]

FLAPPY_ID = "proximal/FlappyBird-v0"
FLAPPY_PIXELS_ID = "proximal/FlappyBirdPixels-v0"
# The trained Flappy Bird agent that ships with the package (`envs.checkpoints.load_agent(SHIPPED_AGENT)`).
SHIPPED_AGENT = Path(__file__).resolve().parent / "agents" / "flappy_features.pt"

for _id, _obs_type in ((FLAPPY_ID, "features"), (FLAPPY_PIXELS_ID, "pixels")):
    if _id not in gymnasium.registry:  # importing twice must not register twice
        gymnasium.register(
            id=_id,
            entry_point="envs.flappy_bird.env:FlappyBirdEnv",
            vector_entry_point="envs.flappy_bird.batched:BatchedFlappyBird",
            max_episode_steps=MAX_EPISODE_STEPS,
            kwargs={"obs_type": _obs_type},
        )
