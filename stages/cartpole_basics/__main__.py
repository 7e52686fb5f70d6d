"""CartPole's first observation and frame, and the hard-coded policy's statistics.

The hard-coded policy pushes the cart toward the side the pole leans to. It is evaluated by the
shared evaluation helper on one seed per episode, so its numbers depend on nothing but the seeds.
"""

from __future__ import annotations

import sys

import gymnasium as gym
import numpy as np
import pandas as pd

from stages.cartpole_basics import settings
from stages.policies.cartpole import RIGHT, basic_policy
from stages.policies.evaluation import evaluate_policy
from stages.core.frames import record_episode, write_gif
from stages.core.io import write_csv, write_json
from stages.core.plotting import new_figure, save_figure
from stages.core.seeding import seed_everything
from stages.core.settings import Params, run_stage

REPORTS = "reports/cartpole_basics"


def plot_frame(frame: np.ndarray, path: str) -> None:
    fig, ax = new_figure(figsize=(5, 4))
    ax.imshow(frame)
    ax.axis("off")
    save_figure(fig, path)


def main() -> None:
    cfg = settings(sys.argv[1:], Params.load())
    seed_everything(cfg.seed)

    env = gym.make(cfg.env_id, render_mode="rgb_array", max_episode_steps=cfg.max_steps)
    first_observation, _ = env.reset(seed=cfg.seed)
    first_frame = env.render()
    after_push, *_ = env.step(RIGHT)
    plot_frame(env.render(), f"{REPORTS}/cart_pole_plot.png")

    seeds = list(cfg.evaluation.seeds)
    result = evaluate_policy(cfg.env_id, basic_policy, seeds, max_steps=cfg.max_steps)
    write_csv(f"{REPORTS}/basic_policy_returns.csv",
              pd.DataFrame({"episode": np.arange(len(seeds)), "seed": seeds, "return": result.returns}))

    episode = record_episode(env, lambda obs: int(basic_policy(obs)), cfg.gif.seed, cfg.max_steps)
    env.close()
    write_gif(f"{REPORTS}/basic_policy.gif", episode.frames, fps=cfg.gif.fps)

    write_json(f"{REPORTS}/metrics.json", {
        "first_observation": [float(x) for x in first_observation],
        "observation_after_pushing_right": [float(x) for x in after_push],
        "frame_shape": list(first_frame.shape),
        "basic_policy": result.summary(),
        "gif_episode": {"seed": cfg.gif.seed, "return": episode.total_reward, "frames": len(episode.frames)},
    })
    summary = result.summary()
    print(f"hard-coded policy over {summary['episodes']} episodes: mean {summary['mean']:.1f}, "
          f"std {summary['std']:.1f}, min {summary['min']:.0f}, max {summary['max']:.0f}")


if __name__ == "__main__":
    run_stage(main)
