"""REINFORCE on LunarLander, one run per configuration and training seed:
its settings. ``pg_lunarlander`` in params.yaml maps configuration names to REINFORCE settings."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import RootModel

from stages.policy_gradient.settings import Reinforce
from stages.core.settings import Params, argument_parser, env_family, member_of, parse_arguments, seeded


class Settings(Reinforce):
    env_id: env_family("LunarLander", "the policy is a softmax over LunarLander's four actions")


class Section(RootModel[dict[str, Settings]]):
    """Every configuration (dvc.yaml: one stage per configuration and training seed)."""


class Run(Settings):
    """One configuration's run, with the configuration's name."""

    config: str
    """The configuration's name in params.yaml."""


def settings(argv: Sequence[str], params: Params) -> Run:
    """``--config NAME --seed S``: configuration NAME's run for training seed S."""
    args = parse_arguments(argument_parser(__doc__, member="config", seed=True), argv)
    config = member_of(params, "pg_lunarlander", args.config, "configuration")
    run = seeded(Settings, params, f"pg_lunarlander.{config}", args.seed)
    return Run(**dict(run), config=config)
