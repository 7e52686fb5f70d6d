"""A Gymnasium environment seen as a TF-Agents ``PyEnvironment``.

TF-Agents 0.19 was written for old gym's 4-tuple ``step``; Gymnasium splits "done" into
*terminated* (the MDP reached a terminal state: discount 0, no bootstrapping) and *truncated*
(a time limit cut the episode: the value of the next state still counts, so the discount stays).
This adapter keeps that distinction instead of collapsing both into one "done".
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from tf_agents.environments import py_environment
from tf_agents.specs import array_spec
from tf_agents.trajectories import time_step as ts


def spec_from_space(space: gym.Space, name: str) -> array_spec.ArraySpec:
    if isinstance(space, gym.spaces.Discrete):
        return array_spec.BoundedArraySpec((), np.int64, minimum=int(space.start),
                                           maximum=int(space.start + space.n - 1), name=name)
    if isinstance(space, gym.spaces.Box):
        return array_spec.BoundedArraySpec(space.shape, space.dtype, minimum=space.low,
                                           maximum=space.high, name=name)
    raise TypeError(f"{name} space {space!r} is not supported: only Discrete and Box spaces are")


class GymnasiumPyEnvironment(py_environment.PyEnvironment):
    """Wraps a ``gymnasium.Env``; the base class resets it when stepped after a last step."""

    def __init__(self, env: gym.Env, *, discount: float = 1.0, seed: int | None = None) -> None:
        super().__init__(handle_auto_reset=True)
        self._env = env
        self._discount = np.float32(discount)
        self._next_seed = seed
        self._observation_spec = spec_from_space(env.observation_space, "observation")
        self._action_spec = spec_from_space(env.action_space, "action")
        self._reward_dtype = np.float32

    @property
    def gym_env(self) -> gym.Env:
        return self._env

    def observation_spec(self) -> array_spec.ArraySpec:
        return self._observation_spec

    def action_spec(self) -> array_spec.ArraySpec:
        return self._action_spec

    def seed(self, seed: int) -> None:
        """The next reset starts from this seed (Gymnasium seeds at reset, not before)."""
        self._next_seed = seed

    def _observation(self, obs: Any) -> np.ndarray:
        return np.asarray(obs, dtype=self._observation_spec.dtype)

    def _reset(self) -> ts.TimeStep:
        obs, _ = self._env.reset(seed=self._next_seed)
        self._next_seed = None
        return ts.restart(self._observation(obs))

    def _step(self, action: np.ndarray) -> ts.TimeStep:
        if isinstance(self._env.action_space, gym.spaces.Discrete):
            action = int(action)
        obs, reward, terminated, truncated, _ = self._env.step(action)
        obs = self._observation(obs)
        reward = np.asarray(reward, dtype=self._reward_dtype)
        if terminated:
            return ts.termination(obs, reward)
        if truncated:
            return ts.truncation(obs, reward, self._discount)
        return ts.transition(obs, reward, self._discount)

    def render(self, mode: str = "rgb_array") -> np.ndarray:
        if mode != "rgb_array":
            raise ValueError(f"render mode {mode!r} is not supported: only 'rgb_array' is")
        return self._env.render()

    def close(self) -> None:
        self._env.close()


def make_py_environment(env_id: str, *, discount: float = 1.0, seed: int | None = None,
                        **make_kwargs: Any) -> GymnasiumPyEnvironment:
    """``gymnasium.make(env_id, **make_kwargs)`` wrapped for TF-Agents."""
    return GymnasiumPyEnvironment(gym.make(env_id, **make_kwargs), discount=discount, seed=seed)
