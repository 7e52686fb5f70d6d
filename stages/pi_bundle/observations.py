"""The observations a policy's conversion is calibrated, fine-tuned and checked on.

Each set comes from the policy's own greedy episodes, one seed per episode, on seeds no training
or evaluation uses (checked against the policy's training seeds before anything runs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import gymnasium as gym
import numpy as np

from stages.policies.evaluation import evaluate_policy
from stages.policies.index import PolicyEntry, make_policy_env
from stages.core.settings import ParamError
from stages.pi_bundle import EnvironmentEvaluation, ObservationSet, Settings


def environment_settings(cfg: Settings, entry: PolicyEntry) -> EnvironmentEvaluation:
    if entry.env_id not in cfg.evaluation:
        raise ParamError(f"pi_bundle.evaluation has no entry for env_id {entry.env_id!r} "
                         f"(policy {entry.name}); add its evaluation seeds and episode cap")
    return cfg.evaluation[entry.env_id]


MakeEnv = Callable[[], Any] | None


class _Lent(gym.Wrapper):
    """An environment lent to one evaluation: closing it hands it back for the next one."""

    def __init__(self, env: Any, idle: list[Any]) -> None:
        super().__init__(env)
        self._idle = idle

    def close(self) -> None:
        self._idle.append(self.env)


@contextmanager
def episode_environments(entry: PolicyEntry) -> Iterator[MakeEnv]:
    """What builds the environments of a policy's episodes, for ``evaluate_policy``'s ``make_env``.

    Atari policies see preprocessed frames (``make_policy_env``). Building one of those loads the
    game's ROM, about a quarter of a second, and the stage plays a few dozen short batches of
    episodes per policy; so an environment, once built, is lent again to the next batch. That
    changes no episode: each starts from ``reset(seed=...)``, which reloads the game and reseeds
    every random choice of the wrappers. Other policies play the environment's own observations
    (``None``: ``evaluate_policy`` makes them, cheaply). All built environments close at the end.
    """
    if not entry.preprocessing:
        yield None
        return
    idle: list[Any] = []
    built: list[Any] = []

    def lend() -> Any:
        if idle:
            return _Lent(idle.pop(), idle)
        built.append(make_policy_env(entry))
        return _Lent(built[-1], idle)

    try:
        yield lend
    finally:
        for env in built:
            env.close()


def record_observations(entry: PolicyEntry, policy: Callable[[np.ndarray], np.ndarray],
                        wanted: ObservationSet, max_steps: int, make_env: MakeEnv) -> np.ndarray:
    """``wanted.observations`` observations of the policy's greedy episodes, one seed per episode
    from ``wanted.seed_start``, evenly spaced over all steps played (episodes are played in
    chunks until there are enough; fewer if ``max_episodes`` runs out first)."""
    recorded: list[np.ndarray] = []

    def recording(observations: np.ndarray) -> np.ndarray:
        recorded.append(np.array(observations))
        return policy(observations)

    seed, last = wanted.seed_start, wanted.seed_start + wanted.max_episodes
    while sum(map(len, recorded)) < wanted.observations and seed < last:
        seeds = list(range(seed, min(seed + wanted.episodes_per_batch, last)))
        evaluate_policy(entry.env_id, recording, seeds, max_steps=max_steps, make_env=make_env, progress=False)
        seed = seeds[-1] + 1
    observations = np.concatenate(recorded)
    # Evenly spaced over every step played: the episodes' ends as well as their starts.
    observations = observations[np.linspace(0, len(observations) - 1, min(len(observations), wanted.observations)).astype(np.int64)]
    if len(observations) < wanted.observations:
        print(f"warning: {entry.name}: only {len(observations)} observations in "
              f"{wanted.max_episodes} episodes (wanted {wanted.observations})")
    return observations


def check_seeds_unseen(cfg: Settings, entry: PolicyEntry) -> None:
    for key, wanted in (("calibration", cfg.calibration), ("parity", cfg.parity),
                        ("fine_tuning.observations", cfg.fine_tuning.observations)):
        seen = [s for s in entry.training_seeds if wanted.seed_start <= s < wanted.seed_start + wanted.max_episodes]
        if seen:
            raise ParamError(f"pi_bundle.{key}.seed_start = {wanted.seed_start} is not allowed: policy "
                             f"{entry.name} was trained on seed {seen[0]} of that range")
