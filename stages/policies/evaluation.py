"""Policy evaluation: N episodes on given seeds, played side by side, one policy call per step.

Each episode ``i`` starts from ``env.reset(seed=seeds[i])``, so a result depends only on the
policy and the seeds, not on how the episodes were batched. The policy receives a batch of
observations (the episodes still running) and returns one action per row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm import tqdm

BatchPolicy = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class EvaluationResult:
    seeds: list[int]
    returns: np.ndarray
    lengths: np.ndarray = field(repr=False)

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        """Population standard deviation (ddof=0), as NumPy and the book compute it."""
        return float(np.std(self.returns))

    @property
    def min(self) -> float:
        return float(np.min(self.returns))

    @property
    def max(self) -> float:
        return float(np.max(self.returns))

    def summary(self) -> dict[str, Any]:
        return {"episodes": len(self.seeds), "mean": self.mean, "std": self.std,
                "min": self.min, "max": self.max, "mean_length": float(np.mean(self.lengths))}


def evaluate_policy(
    env_id: str,
    policy: BatchPolicy,
    seeds: Sequence[int],
    *,
    max_steps: int | None = None,
    batch_size: int = 64,
    env_kwargs: dict[str, Any] | None = None,
    make_env: Callable[[], gym.Env] | None = None,
    progress: bool = True,
) -> EvaluationResult:
    """Play one episode per seed; ``max_steps`` overrides the environment's own time limit.

    ``make_env`` builds one environment instead of ``gym.make(env_id, **env_kwargs)``, for
    policies that see wrapped observations (Atari: see ``policies.make_policy_env``).
    """
    if len(seeds) == 0:
        raise ValueError("evaluate_policy needs at least one seed")
    if make_env is None:
        make_kwargs = dict(env_kwargs or {})
        if max_steps is not None:
            make_kwargs["max_episode_steps"] = max_steps
        make_env = partial(gym.make, env_id, **make_kwargs)
    elif max_steps is not None:
        make_env = partial(_capped, make_env, max_steps)
    envs = [make_env() for _ in range(min(batch_size, len(seeds)))]
    returns = np.zeros(len(seeds), dtype=np.float64)
    lengths = np.zeros(len(seeds), dtype=np.int64)
    try:
        with tqdm(total=len(seeds), desc=f"evaluate {env_id}", unit="episode",
                  disable=not progress, leave=False) as bar:
            for start in range(0, len(seeds), len(envs)):
                chunk = range(start, min(start + len(envs), len(seeds)))
                _play_together(envs, chunk, seeds, policy, returns, lengths)
                bar.update(len(chunk))
    finally:
        for env in envs:
            env.close()
    return EvaluationResult(seeds=[int(s) for s in seeds], returns=returns, lengths=lengths)


def _capped(make_env: Callable[[], gym.Env], max_steps: int) -> gym.Env:
    return gym.wrappers.TimeLimit(make_env(), max_episode_steps=max_steps)


def _play_together(envs: list[gym.Env], episodes: range, seeds: Sequence[int], policy: BatchPolicy,
                   returns: np.ndarray, lengths: np.ndarray) -> None:
    running = list(zip(envs, episodes))
    observations = [env.reset(seed=int(seeds[i]))[0] for env, i in running]
    while running:
        actions = np.asarray(policy(np.stack(observations)))
        still_running, next_observations = [], []
        for (env, i), action in zip(running, actions):
            obs, reward, terminated, truncated, _ = env.step(action.item() if action.ndim == 0 else action)
            returns[i] += float(reward)
            lengths[i] += 1
            if not (terminated or truncated):
                still_running.append((env, i))
                next_observations.append(obs)
        running, observations = still_running, next_observations
