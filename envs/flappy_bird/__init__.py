"""Flappy Bird: the game, a gymnasium env, a batched tensor env, play, GIFs."""

from .env import FlappyBirdEnv
from .rules import FlappyConfig

__all__ = ["FlappyBirdEnv", "FlappyConfig"]
