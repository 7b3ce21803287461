"""A scripted Flappy Bird player that reads only the 12 features.

`autopilot(obs)` looks ahead: it replays the game's rules (from `rules.py`) on the pipes it
can see, and flaps only when not flapping now would leave no way to survive the next
`horizon` frames. A depth-first search tries "do nothing" before "flap" at every frame, so the
bird rides as low as it safely can, which keeps it ready for the next gap however far below it
lies. It is a test of the game (every gap the generator makes can be passed) and a yardstick
for learned policies, not a learning method.

`decode_features(obs)` turns a normalised observation back into pixels and frames.
"""

from __future__ import annotations

import numpy as np

from .rules import BIRD_H, BIRD_W, BIRD_X, GROUND_Y, PIPE_W, FlappyConfig

__all__ = ["autopilot", "decode_features"]

_DEFAULT = FlappyConfig()


def decode_features(obs, config: FlappyConfig | None = None) -> np.ndarray:
    """Raw features (px, px/frame, degrees) from a normalised observation `(12,)`."""
    config = config or _DEFAULT
    raw = np.asarray(obs, dtype=np.float64) / config.feature_scale + config.feature_mid
    return np.rint(raw)  # every raw feature is a whole number


def autopilot(obs, config: FlappyConfig | None = None, horizon: int = 40,
              max_nodes: int = 20_000) -> int:
    """1 (flap) or 0, chosen by a look-ahead search over the visible pipes."""
    config = config or _DEFAULT
    raw = decode_features(obs, config)
    pipes = [tuple(raw[i : i + 3]) for i in (3, 6)]  # next, next-next: x, gap top, gap bottom
    y0, v0 = raw[9], raw[10]
    g, flap_speed, max_fall = config.gravity, config.flap_speed, config.max_fall_speed
    speed, clamp = config.pipe_speed, config.ceiling == "clamp"

    def move(y, v, flap):  # rules 1, 3 and 4; None if the ceiling kills the bird
        v = flap_speed if flap else min(v + g, max_fall)
        y = min(y + v, GROUND_Y - BIRD_H)
        if y < 0:
            if not clamp:
                return None
            y, v = 0, 0
        return y, v

    def crashes(t, y):  # rule 7 at frame t from now, with the pipes scrolled t frames
        if y >= GROUND_Y - BIRD_H:
            return True
        for x, top, bottom in pipes:
            x -= speed * t
            if BIRD_X - PIPE_W < x < BIRD_X + BIRD_W and (y < top or y + BIRD_H > bottom):
                return True
        return False

    doomed: set[tuple[int, float, float]] = set()  # states known to crash within the horizon
    nodes = 0

    def survives(t, y, v) -> bool:
        nonlocal nodes
        if t == horizon or nodes > max_nodes:
            return True
        if (t, y, v) in doomed:
            return False
        nodes += 1
        for flap in (False, True):
            state = move(y, v, flap)
            if state is not None and not crashes(t + 1, state[0]) and survives(t + 1, *state):
                return True
        doomed.add((t, y, v))
        return False

    state = move(y0, v0, flap=False)
    if state is not None and not crashes(1, state[0]) and survives(1, *state):
        return 0
    return 1
