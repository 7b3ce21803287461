"""The 84×84 grey frames of `obs_type="pixels"`, drawn as tensors for N games at once.

`Rasteriser(device)(pipes, y)` draws what `envs.flappy_bird.render` would show, squeezed to
84×84 the way gymnasium's `ResizeObservation` would (288 → 84 columns, 512 → 84 rows, each
pixel sampled at its centre) in four grey levels (`render.GRAY`): sky, pipes, ground, bird.
`BatchedFlappyBird` uses it on the device, so pixel observations never leave it; the game's
dynamics live in `batched.py`, the drawing only here.
"""

from __future__ import annotations

import torch

from .render import GRAY
from .rules import BIRD_H, BIRD_W, BIRD_X, GROUND_Y, PIPE_W, SCREEN_H, SCREEN_W

__all__ = ["PIXELS", "Rasteriser"]

PIXELS = 84  # side of the square grey image of obs_type="pixels"


class Rasteriser:
    """Draws grey frames `(n, 84, 84)` uint8 from the pipes and the bird's height of n games."""

    def __init__(self, device: torch.device):
        # Centres of the 84 × 84 pixels in screen coordinates (px); the screen is squeezed
        # like gymnasium's ResizeObservation would, 288 → 84 columns and 512 → 84 rows.
        rows = (torch.arange(PIXELS, device=device) + 0.5) * (SCREEN_H / PIXELS)  # (84,)
        cols = (torch.arange(PIXELS, device=device) + 0.5) * (SCREEN_W / PIXELS)  # (84,)
        self._sky_rows = int((rows < GROUND_Y).sum())  # rows above the ground
        self._rows = rows[: self._sky_rows]  # (R,)
        self._cols = cols  # (84,)
        bird_cols = ((cols >= BIRD_X) & (cols < BIRD_X + BIRD_W)).nonzero()[:, 0]  # fixed
        self._bird_cols = slice(int(bird_cols[0]), int(bird_cols[-1]) + 1)  # a band of columns
        background = torch.full((PIXELS, PIXELS), GRAY["ground"], dtype=torch.uint8, device=device)
        background[: self._sky_rows] = GRAY["sky"]
        self._background = background  # (84, 84)

    def __call__(self, pipes: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Frames `(n, 84, 84)` uint8.

        `pipes` (9, n): for the last, next and next-next pipe, its left edge x, gap top and
        gap bottom (rows x, top, bottom, x, top, …, as in the batched env's state); `y` (n,):
        the bird's top edge. Pipes are drawn over the sky, the bird over both.
        """
        n = pipes.shape[1]
        far = 4 * SCREEN_H  # a row index no pixel reaches
        x = pipes[0:9:3].T[:, :, None]  # (n, 3, 1) left edges
        top, bottom = pipes[1:9:3].T[:, :, None], pipes[2:9:3].T[:, :, None]  # (n, 3, 1)
        d = self._cols - x  # (n, 3, 84): pixel centre minus pipe left edge
        covers = ((d >= 0) & (d < PIPE_W)).float()  # (n, 3, 84) column inside pipe s
        # Pipes never overlap (they are ≥ 144 px apart), so each column is covered by at most
        # one pipe: sums over s pick its gap; uncovered columns get an "open" gap (-1, far).
        col_top = (covers * (top + 1)).sum(1) - 1  # (n, 84)
        col_bottom = far - (covers * (far - bottom)).sum(1)  # (n, 84)
        rows = self._rows[None, :, None]  # (1, R, 1)
        pipe = (rows < col_top[:, None, :]) | (rows >= col_bottom[:, None, :])  # (n, R, 84)
        y = y[:, None]  # (n, 1)
        bird_rows = (self._rows >= y) & (self._rows < y + BIRD_H)  # (n, R)
        frame = self._background.expand(n, PIXELS, PIXELS).clone()  # (n, 84, 84)
        sky = frame[:, : self._sky_rows]  # (n, R, 84)
        sky.masked_fill_(pipe, GRAY["pipe"])
        sky[:, :, self._bird_cols].masked_fill_(bird_rows[:, :, None], GRAY["bird"])  # on top
        return frame
