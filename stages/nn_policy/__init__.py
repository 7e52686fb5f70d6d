"""A network that imitates the hard-coded CartPole policy: its settings."""

from __future__ import annotations

from collections.abc import Sequence

from stages.policy_gradient.settings import PolicyRun
from stages.core.settings import (
    Count,
    Params,
    SeededTraining,
    argument_parser,
    env_family,
    parse_arguments,
    seeded,
)


class Training(SeededTraining):
    iterations: Count
    """Updates, one per step of the environments."""
    environments: Count
    """Environments stepped together (a Gymnasium vector environment, reset in the step an
    episode ends)."""

    @property
    def environment_count(self) -> int:
        return self.environments


class Settings(PolicyRun):
    env_id: env_family("CartPole", "the imitated policy reads the pole angle")
    training: Training
    """How long, on how many environments, from which seeds."""


def settings(argv: Sequence[str], params: Params) -> Settings:
    """``--seed S``: training seed S's run (dvc.yaml: one stage per seed of ``seeds``)."""
    args = parse_arguments(argument_parser(__doc__, seed=True), argv)
    return seeded(Settings, params, "nn_policy", args.seed)
