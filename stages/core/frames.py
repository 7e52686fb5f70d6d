"""Capturing an episode's frames and writing them as an animated GIF."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from PIL import Image

from stages.core.io import atomic_path


@dataclass(frozen=True)
class RecordedEpisode:
    frames: list[np.ndarray]
    total_reward: float
    steps: int


def record_episode(env: gym.Env, policy: Callable[[np.ndarray], int], seed: int,
                   max_steps: int) -> RecordedEpisode:
    """Play one episode from ``env.reset(seed=seed)``, keeping the first frame and one per step.

    ``env`` must have been made with ``render_mode="rgb_array"``.
    """
    obs, _ = env.reset(seed=seed)
    frames = [env.render()]
    total_reward, steps = 0.0, 0
    for steps in range(1, max_steps + 1):
        obs, reward, terminated, truncated, _ = env.step(policy(obs))
        total_reward += float(reward)
        frames.append(env.render())
        if terminated or truncated:
            break
    return RecordedEpisode(frames=frames, total_reward=total_reward, steps=steps)


def write_gif(path: str | os.PathLike, frames: list[np.ndarray], fps: int = 30) -> None:
    """An endlessly looping GIF; one shared palette keeps colours steady from frame to frame."""
    if not frames:
        raise ValueError(f"no frames to write to {path}")
    images = [Image.fromarray(np.asarray(frame, dtype=np.uint8)) for frame in frames]
    palette_source = images[0].convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    paletted = [image.quantize(palette=palette_source, dither=Image.Dither.NONE) for image in images]
    with atomic_path(path) as tmp:
        paletted[0].save(tmp, save_all=True, append_images=paletted[1:],
                         duration=round(1000 / fps), loop=0, optimize=False)
