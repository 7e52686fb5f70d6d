"""Advantage actor-critic (A2C), one run per configuration and training seed: its settings.
``a2c`` in params.yaml maps configuration names (an environment each) to A2C settings. The starting values are RL Baselines3
Zoo's published ones (hyperparams/a2c.yml), each with its source in params.yaml's ``a2c``
section."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import RootModel

from stages.policy_gradient.actor_critic_settings import ActorCriticRun
from stages.core.settings import EnvId, Params, argument_parser, member_of, parse_arguments, seeded


class Settings(ActorCriticRun):
    env_id: EnvId
    """A Gymnasium environment with discrete actions (CartPole-v1, LunarLander-v3)."""
    keep: Literal["last", "best"] = "last"
    """Which weights are exported: the last update's, or those in use at the logged rollout whose
    mean return of the last 20 training episodes was highest (the latest of equals). Training
    returns only: the held-out evaluation never chooses."""


class Section(RootModel[dict[str, Settings]]):
    """Every configuration (dvc.yaml: one stage per configuration and training seed)."""


class Run(Settings):
    """One configuration's run, with the configuration's name."""

    config: str
    """The configuration's name in params.yaml."""


def settings(argv: Sequence[str], params: Params) -> Run:
    """``--config NAME --seed S``: configuration NAME's run for training seed S."""
    args = parse_arguments(argument_parser(__doc__, member="config", seed=True), argv)
    config = member_of(params, "a2c", args.config, "configuration")
    run = seeded(Settings, params, f"a2c.{config}", args.seed)
    return Run(**dict(run), config=config)
