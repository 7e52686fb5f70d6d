"""REINFORCE on CartPole with the book's settings: its settings."""

from __future__ import annotations

from collections.abc import Sequence

from stages.policy_gradient.settings import Reinforce
from stages.core.settings import Params, argument_parser, env_family, parse_arguments, seeded


class Settings(Reinforce):
    env_id: env_family("CartPole", "the policy outputs P(left), CartPole's two actions")


def settings(argv: Sequence[str], params: Params) -> Settings:
    """``--seed S``: training seed S's run (dvc.yaml: one stage per seed of ``seeds``)."""
    args = parse_arguments(argument_parser(__doc__, seed=True), argv)
    return seeded(Settings, params, "pg_cartpole", args.seed)
