"""What every training stage reports about the policy it exported: held-out returns and a GIF.

The assessed thing is the exported artifact, loaded back from its folder through the index's
loader, so the numbers describe exactly what a consumer of ``data/policies`` gets. Returns are
measured greedily (the most likely action) and sampled (as in training, seeded), on evaluation
seeds that the stages keep disjoint from their training seeds.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from stages.policies.evaluation import evaluate_policy
from stages.core.frames import record_episode, write_gif
from stages.policies.index import PolicyEntry, load_policy


def assess_policy(entry: PolicyEntry, eval_seeds: Sequence[int], max_steps: int) -> dict[str, Any]:
    """Greedy and sampled returns over one episode per evaluation seed."""
    greedy = evaluate_policy(entry.env_id, load_policy(entry), eval_seeds, max_steps=max_steps,
                             env_kwargs=entry.env_kwargs)
    sampling_rng = np.random.default_rng(int(eval_seeds[0]))
    sampled = evaluate_policy(entry.env_id, load_policy(entry, rng=sampling_rng), eval_seeds,
                              max_steps=max_steps, env_kwargs=entry.env_kwargs)
    return {
        "seeds": {"first": int(eval_seeds[0]), "last": int(eval_seeds[-1]), "count": len(eval_seeds)},
        "max_steps": max_steps,
        "greedy": greedy.summary(),
        "sampled": sampled.summary(),
    }


def record_policy_gif(entry: PolicyEntry, path: str | os.PathLike, seed: int, max_steps: int,
                      fps: int) -> dict[str, Any]:
    """An animated GIF of one greedy episode of the exported policy; returns what it shows."""
    policy = load_policy(entry)
    env = gym.make(entry.env_id, render_mode="rgb_array", max_episode_steps=max_steps,
                   **entry.env_kwargs)
    try:
        episode = record_episode(env, lambda obs: _one_action(policy(obs[np.newaxis])), seed, max_steps)
    finally:
        env.close()
    write_gif(path, episode.frames, fps=fps)
    return {"seed": seed, "return": episode.total_reward, "frames": len(episode.frames)}


def _one_action(actions: np.ndarray) -> Any:
    """The single row of a batch of actions: an int (a discrete action) or a vector (continuous)."""
    first = actions[0]
    return first if np.ndim(first) else int(first)
