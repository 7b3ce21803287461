"""Drawing the game: a pygame renderer for the single env and the shared colour palette.

Every sprite is drawn here with pygame's drawing functions (nothing is loaded from disk or
downloaded). Pipes are drawn exactly as wide as their hit-box, and the bird's body fills its
34×24 hit-box, so what you see is what collides. pygame is imported only when a `Renderer` is
created, i.e. only when something is rendered.

The batched env rasterises the same scene on its device in grey levels (`GRAY`), computed from
the same palette with the luma weights of gymnasium's `GrayscaleObservation`.
"""

from __future__ import annotations

import os

import numpy as np

from .rules import (
    BIRD_H,
    BIRD_W,
    BIRD_X,
    FPS,
    GROUND_Y,
    PIPE_H,
    PIPE_W,
    ROT_VISIBLE_MAX,
    SCREEN_H,
    SCREEN_W,
)

__all__ = ["PALETTE", "GRAY", "Renderer", "RenderState"]

# RGB colours of the scene.
PALETTE = {
    "sky": (112, 197, 230),
    "cloud": (236, 248, 246),
    "bush": (120, 206, 110),
    "pipe": (83, 160, 40),
    "pipe_light": (140, 214, 80),
    "pipe_dark": (40, 80, 20),
    "ground": (222, 216, 149),
    "grass": (115, 190, 48),
    "grass_dark": (84, 150, 34),
    "bird": (214, 54, 42),
    "wing": (250, 214, 190),
    "beak": (250, 150, 30),
    "eye": (255, 255, 255),
    "outline": (40, 28, 24),
    "text": (255, 255, 255),
}

_LUMA = (0.2125, 0.7154, 0.0721)  # weights of gymnasium.wrappers.GrayscaleObservation


def _gray(rgb: tuple[int, int, int]) -> int:
    return int(sum(w * c for w, c in zip(_LUMA, rgb)))


# Grey levels of the flat-shaded scene the batched env draws: sky 181, pipe 134, ground 212,
# bird 87. The colours above were picked so that these differ clearly: in grey, a green pipe on
# a blue sky can otherwise vanish.
GRAY = {name: _gray(PALETTE[name]) for name in ("sky", "pipe", "ground", "bird")}


class RenderState:
    """What the renderer needs to know about one frame (plain numbers, px and degrees)."""

    __slots__ = ("pipes", "bird_y", "rotation", "frame", "score", "scroll")

    def __init__(self, pipes, bird_y, rotation, frame, score, scroll):
        self.pipes = pipes  # [(x, gap_top, gap_bottom)] * 3
        self.bird_y = bird_y  # top of the bird's box
        self.rotation = rotation  # degrees, positive = nose up
        self.frame = frame  # frames since the episode started (wing animation)
        self.score = score  # pipes passed
        self.scroll = scroll  # px the ground has scrolled


class Renderer:
    """Draws frames of the game on an off-screen surface, and in a window for human mode."""

    def __init__(self, human: bool = False):
        # Off-screen surfaces and fonts need no video driver: rgb_array works headless. Only
        # `show` (human mode) opens a window.
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        import pygame  # imported here: only rendering needs pygame

        self.pygame = pygame
        pygame.font.init()
        self.human = human
        self.window = None
        self.clock = None
        self.surface = pygame.Surface((SCREEN_W, SCREEN_H))
        self.font = pygame.font.Font(None, 56)
        self.background = self._draw_background()
        self.bird_frames = [self._draw_bird(wing) for wing in (-5, 0, 5, 0)]

    # ---- sprites, drawn once -------------------------------------------------------------
    def _draw_background(self):
        pg = self.pygame
        surf = pg.Surface((SCREEN_W, GROUND_Y))
        surf.fill(PALETTE["sky"])
        for cx, cy, r in ((30, 330, 34), (90, 345, 28), (150, 328, 38), (220, 342, 30),
                          (275, 332, 32)):
            pg.draw.circle(surf, PALETTE["cloud"], (cx, cy), r)
        pg.draw.rect(surf, PALETTE["cloud"], (0, 340, SCREEN_W, GROUND_Y - 340))
        for cx in range(0, SCREEN_W + 40, 36):
            pg.draw.circle(surf, PALETTE["bush"], (cx, GROUND_Y - 4), 22)
        return surf

    def _draw_bird(self, wing_dy: int):
        pg = self.pygame
        surf = pg.Surface((BIRD_W, BIRD_H), pg.SRCALPHA)
        body = pg.Rect(0, 0, BIRD_W - 4, BIRD_H)
        pg.draw.ellipse(surf, PALETTE["bird"], body)
        pg.draw.ellipse(surf, PALETTE["outline"], body, 2)
        pg.draw.polygon(surf, PALETTE["beak"], [(BIRD_W - 10, 11), (BIRD_W - 1, 14),
                                                  (BIRD_W - 10, 18)])
        pg.draw.circle(surf, PALETTE["eye"], (BIRD_W - 12, 8), 5)
        pg.draw.circle(surf, PALETTE["outline"], (BIRD_W - 10, 8), 2)
        pg.draw.ellipse(surf, PALETTE["wing"], (3, 9 + wing_dy, 14, 8))
        pg.draw.ellipse(surf, PALETTE["outline"], (3, 9 + wing_dy, 14, 8), 1)
        return surf

    # ---- one frame -----------------------------------------------------------------------
    def _draw_pipe(self, x: int, y0: int, y1: int, cap_y: int) -> None:
        """A pipe column from y0 to y1 with its 24 px cap at cap_y (the end facing the gap)."""
        pg, s = self.pygame, self.surface
        pg.draw.rect(s, PALETTE["pipe"], (x + 2, y0, PIPE_W - 4, y1 - y0))
        pg.draw.rect(s, PALETTE["pipe_light"], (x + 6, y0, 6, y1 - y0))
        pg.draw.rect(s, PALETTE["pipe_dark"], (x + 2, y0, PIPE_W - 4, y1 - y0), 2)
        pg.draw.rect(s, PALETTE["pipe"], (x, cap_y, PIPE_W, 24))
        pg.draw.rect(s, PALETTE["pipe_light"], (x + 4, cap_y, 6, 24))
        pg.draw.rect(s, PALETTE["pipe_dark"], (x, cap_y, PIPE_W, 24), 2)

    def draw(self, state: RenderState, show_score: bool = True):
        pg, s = self.pygame, self.surface
        s.blit(self.background, (0, 0))
        for x, top, bottom in state.pipes:
            if -PIPE_W < x < SCREEN_W:
                self._draw_pipe(x, top - PIPE_H, top, top - 24)  # upper pipe
                self._draw_pipe(x, bottom, GROUND_Y, bottom)  # lower pipe
        # Ground: sand with a striped grass edge that scrolls with the pipes.
        pg.draw.rect(s, PALETTE["ground"], (0, GROUND_Y, SCREEN_W, SCREEN_H - GROUND_Y))
        pg.draw.rect(s, PALETTE["grass"], (0, GROUND_Y, SCREEN_W, 12))
        offset = -(state.scroll % 24)
        for sx in range(offset, SCREEN_W + 24, 24):
            stripe = [(sx, GROUND_Y + 12), (sx + 12, GROUND_Y), (sx + 20, GROUND_Y),
                      (sx + 8, GROUND_Y + 12)]
            pg.draw.polygon(s, PALETTE["grass_dark"], stripe)
        pg.draw.line(s, PALETTE["outline"], (0, GROUND_Y), (SCREEN_W, GROUND_Y), 2)
        pg.draw.line(s, PALETTE["grass_dark"], (0, GROUND_Y + 12), (SCREEN_W, GROUND_Y + 12), 2)
        if show_score:
            self._draw_score(state.score)
        # The bird, flapping its wing every 3 frames and tilted as in the original
        # (never more than ROT_VISIBLE_MAX degrees nose-up on screen).
        sprite = self.bird_frames[(state.frame // 3) % 4]
        angle = min(state.rotation, ROT_VISIBLE_MAX)
        rotated = pg.transform.rotate(sprite, angle)
        centre = (BIRD_X + BIRD_W // 2, int(state.bird_y) + BIRD_H // 2)
        s.blit(rotated, rotated.get_rect(center=centre))
        return s

    def _draw_score(self, score: int) -> None:
        text = str(score)
        outline = self.font.render(text, True, PALETTE["outline"])
        front = self.font.render(text, True, PALETTE["text"])
        x = (SCREEN_W - front.get_width()) // 2
        y = int(SCREEN_H * 0.1)
        for dx, dy in ((-2, 0), (2, 0), (0, -2), (0, 2)):
            self.surface.blit(outline, (x + dx, y + dy))
        self.surface.blit(front, (x, y))

    def rgb_array(self, state: RenderState, show_score: bool = True) -> np.ndarray:
        """The frame as a `(SCREEN_H, SCREEN_W, 3)` uint8 array (rows = y, columns = x)."""
        surface = self.draw(state, show_score)
        pixels = self.pygame.surfarray.array3d(surface)  # (W, H, 3)
        return np.ascontiguousarray(pixels.transpose(1, 0, 2))

    def show(self, state: RenderState) -> None:
        """Draw the frame in a window and wait so that the game runs at FPS frames per second."""
        pg = self.pygame
        if self.window is None:
            pg.display.init()
            pg.display.set_caption("Flappy Bird (proximal)")
            self.window = pg.display.set_mode((SCREEN_W, SCREEN_H))
            self.clock = pg.time.Clock()
        self.draw(state)
        self.window.blit(self.surface, (0, 0))
        pg.event.pump()  # keep the window responsive; key events stay queued for the caller
        pg.display.flip()
        self.clock.tick(FPS)

    def close(self) -> None:
        if self.window is not None:
            self.pygame.display.quit()
            self.window = None
