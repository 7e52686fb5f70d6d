"""SPEC 2, a network that imitates the hard-coded CartPole policy: its settings."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import model_validator

from stages.common.settings import (Count, Episodes, Gif, Network, Optimizer, Params,
                                    SeededTraining, StageSettings, argument_parser, env_family,
                                    held_out, parse_arguments, seeded)


class Training(SeededTraining):
    iterations: Count
    environments: Count
    """Environments stepped together (a Gymnasium vector environment, reset in the step an
    episode ends)."""

    @property
    def environment_count(self) -> int:
        return self.environments


class Settings(StageSettings):
    env_id: env_family("CartPole", "the imitated policy reads the pole angle")
    network: Network
    optimizer: Optimizer
    max_steps: Count
    """Episode cap in training, evaluation and the GIF."""
    training: Training
    evaluation: Episodes
    """Held-out episodes of the exported policy, greedy and sampled."""
    gif: Gif

    @model_validator(mode="after")
    def _held_out(self) -> Settings:
        held_out(self.training.env_seeds, self.evaluation.seeds, "training environment seeds")
        return self

    def training_seeds(self) -> set[int]:
        return {self.training.seed, *self.training.env_seeds}


def settings(argv: Sequence[str], params: Params) -> Settings:
    """``--seed S``: training seed S's run (dvc.yaml: one stage per seed of ``seeds``)."""
    args = parse_arguments(argument_parser(__doc__, seed=True), argv)
    return seeded(Settings, params, "nn_policy", args.seed)
