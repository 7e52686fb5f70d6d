"""Environments stepped together for the actor-critic trainers (A2C, PPO, SAC), and the advantage
estimate they share.

:class:`SteppedEnvs` holds ``n`` Gymnasium environments and steps them as one batch: one policy
call per step for all of them, the environments stepped by a plain NumPy loop. An environment
whose episode ends is reset at once, so every row of a rollout is a real transition from the
observation the action saw; the observation that ended the episode is kept apart
(``final_observations``), so that a time limit (a truncation) can still be bootstrapped from its
value while a terminal state (a termination) is not.

Stepping Gymnasium directly rather than through TF-Agents' ``TFPyEnvironment`` keeps the per-step
cost to the environments' own work and one compiled policy call: no ``py_function`` round trip,
no ``TimeStep`` nest per step, no boundary steps whose action is thrown away.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np


ACTIVATIONS = {
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0.0),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
    "selu": lambda x: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * np.expm1(np.minimum(x, 0.0))),
}


class NumpyMlp:
    """A dense network's forward pass in NumPy: ``weights`` are kernel, bias, kernel, bias, ...;
    every layer but the last applies ``activation``, the last is linear.

    Collection calls the networks once per step on a handful of observations, where the cost of a
    TensorFlow call (a millisecond or so, whatever the batch) outweighs the arithmetic many times
    over; a NumPy copy of the weights, refreshed after each update, does the same arithmetic in
    microseconds.
    """

    def __init__(self, weights: Sequence[np.ndarray], activation: str) -> None:
        arrays = [np.asarray(w, np.float32) for w in weights]
        self.layers = list(zip(arrays[0::2], arrays[1::2]))
        self.activation = ACTIVATIONS[activation]

    def __call__(self, observations: np.ndarray) -> np.ndarray:
        x = np.asarray(observations, np.float32)
        for kernel, bias in self.layers[:-1]:
            x = self.activation(x @ kernel + bias)
        kernel, bias = self.layers[-1]
        return x @ kernel + bias


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class Step:
    """One step of every environment: arrays with one row per environment."""

    next_observations: np.ndarray  # what the next action sees (a reset's observation after an end)
    rewards: np.ndarray
    terminated: np.ndarray  # bool: a terminal state (no value after it)
    truncated: np.ndarray  # bool: cut by the time limit (its final observation still has a value)
    final_observations: np.ndarray  # the observation reached by this step (before any reset)


class SteppedEnvs:
    """``len(seeds)`` environments of ``env_id``, environment ``i`` first reset with ``seeds[i]`` and
    then continuing its own random stream; episodes are capped at ``max_steps``."""

    def __init__(self, env_id: str, seeds: Sequence[int], max_steps: int) -> None:
        self.envs = [gym.make(env_id, max_episode_steps=max_steps) for _ in seeds]
        self.observations = np.stack([env.reset(seed=int(seed))[0]
                                      for env, seed in zip(self.envs, seeds)]).astype(np.float32)
        self.discrete = isinstance(self.envs[0].action_space, gym.spaces.Discrete)
        self._returns = np.zeros(len(self.envs))
        self._lengths = np.zeros(len(self.envs), dtype=np.int64)
        self.episode_returns: list[float] = []  # every finished episode's return, in finishing order
        self.episode_lengths: list[int] = []
        self.steps = 0  # environment steps so far, all environments together

    def __len__(self) -> int:
        return len(self.envs)

    def step(self, actions: np.ndarray) -> Step:
        """Step every environment with its action; reset those whose episode ended."""
        n = len(self.envs)
        next_observations = np.empty_like(self.observations)
        final_observations = np.empty_like(self.observations)
        rewards = np.empty(n, np.float32)
        terminated = np.zeros(n, bool)
        truncated = np.zeros(n, bool)
        for i, (env, action) in enumerate(zip(self.envs, actions)):
            observation, reward, terminated[i], truncated[i], _ = env.step(
                int(action) if self.discrete else action)
            rewards[i] = reward
            final_observations[i] = observation
            self._returns[i] += reward
            self._lengths[i] += 1
            if terminated[i] or truncated[i]:
                self.episode_returns.append(float(self._returns[i]))
                self.episode_lengths.append(int(self._lengths[i]))
                self._returns[i], self._lengths[i] = 0.0, 0
                observation, _ = env.reset()
            next_observations[i] = observation
        self.observations = next_observations
        self.steps += n
        return Step(next_observations, rewards, terminated, truncated, final_observations)

    def mean_return_of_last(self, episodes: int) -> float:
        """Mean return of the last ``episodes`` finished episodes (NaN before the first ends)."""
        recent = self.episode_returns[-episodes:]
        return float(np.mean(recent)) if recent else float("nan")

    def close(self) -> None:
        for env in self.envs:
            env.close()


@dataclass(frozen=True)
class Rollout:
    """``steps`` steps of every environment, arrays shaped ``[steps, environments, ...]``."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    ended: np.ndarray  # terminated or truncated: the advantage does not run past it
    values: np.ndarray  # V(observation)
    next_values: np.ndarray  # V(observation reached): the next row's value, or the final one's


def collect(envs: SteppedEnvs, steps: int, act: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
            value: Callable[[np.ndarray], np.ndarray]) -> Rollout:
    """Play ``steps`` steps of every environment; ``act(observations) -> (actions, values)``.

    ``value(observations)`` evaluates the states reached at the end of the rollout and the final
    observations of truncated episodes (one batched call for all of them).
    """
    n = len(envs)
    observations = np.empty((steps, *envs.observations.shape), np.float32)
    rewards = np.empty((steps, n), np.float32)
    terminated = np.empty((steps, n), bool)
    truncated = np.empty((steps, n), bool)
    values = np.empty((steps, n), np.float32)
    actions = []
    truncated_observations = []
    for t in range(steps):
        observations[t] = envs.observations
        step_actions, values[t] = act(envs.observations)
        actions.append(step_actions)
        step = envs.step(step_actions)
        rewards[t], terminated[t], truncated[t] = step.rewards, step.terminated, step.truncated
        truncated_observations += [step.final_observations[i] for i in np.flatnonzero(step.truncated)]
    # Bootstrap values: the state after the last step, and every truncated episode's final state.
    tail = value(np.concatenate([envs.observations, np.asarray(truncated_observations, np.float32)
                                 .reshape(-1, *envs.observations.shape[1:])]))
    next_values = np.concatenate([values[1:], tail[np.newaxis, :n]])
    next_values[truncated] = tail[n:]  # row-major order, the order they were appended in
    return Rollout(observations, np.stack(actions), rewards, terminated, terminated | truncated,
                   values, next_values)


def advantages(rewards: np.ndarray, values: np.ndarray, next_values: np.ndarray, terminated: np.ndarray,
               ended: np.ndarray, discount: float, gae_lambda: float) -> np.ndarray:
    """Generalised advantage estimates over a rollout, ``[steps, environments]`` arrays.

    Each step's TD error is ``r + discount * V(next) - V(s)``, without the ``V(next)`` term after a
    terminal state; the advantage is the sum of the TD errors ahead, each discounted by
    ``discount * gae_lambda`` per step, up to the end of the rollout or of the episode. With
    ``gae_lambda = 1`` this is the n-step bootstrapped advantage of A2C: the discounted rewards up
    to the rollout's end plus the discounted value of the state reached, less ``V(s)``.
    """
    keep_next = 1.0 - terminated.astype(np.float64)
    continues = 1.0 - ended.astype(np.float64)
    deltas = rewards + discount * keep_next * next_values - values
    result = np.zeros(deltas.shape, np.float64)
    ahead = np.zeros(deltas.shape[1:], np.float64)
    for t in range(len(deltas) - 1, -1, -1):
        ahead = deltas[t] + discount * gae_lambda * continues[t] * ahead
        result[t] = ahead
    return result.astype(np.float32)
