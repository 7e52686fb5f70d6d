"""Settings of the policy-gradient experiments: a policy network trained on seeded environments,
evaluated on held-out seeds and recorded as a GIF (the imitation, and REINFORCE on CartPole and LunarLander).
Each experiment extends these models with its environment family and training block. Kept apart
from the training machinery (policy_gradients.py) so that reading settings never imports
TensorFlow."""

from __future__ import annotations

from pydantic import Field, model_validator

from stages.core.settings import (
    Count,
    Discount,
    EnvId,
    Episodes,
    Gif,
    Network,
    Optimizer,
    SeededTraining,
    StageSettings,
    held_out,
)


class PolicyRun(StageSettings):
    """A policy network's run: its environment, network and optimizer, its training seeds, and the
    held-out episodes and GIF of the exported policy."""

    env_id: EnvId
    network: Network
    """The policy network."""
    optimizer: Optimizer
    """Its optimizer."""
    max_steps: Count
    """Episode cap in training, evaluation and the GIF."""
    training: SeededTraining
    """How long, on what, from which seeds."""
    evaluation: Episodes
    """Held-out episodes of the exported policy, greedy and sampled."""
    gif: Gif
    """The GIF of one greedy episode."""

    @model_validator(mode="after")
    def _held_out(self) -> PolicyRun:
        held_out(self.training.env_seeds, self.evaluation.seeds, "training environment seeds")
        return self

    def training_seeds(self) -> set[int]:
        return {self.training.seed, *self.training.env_seeds}


class ReinforceTraining(SeededTraining):
    iterations: Count
    """Updates, each after one batch of episodes."""
    episodes_per_iteration: Count
    """One environment per episode, all played side by side."""
    discount: Discount
    """Discount of the returns that weight each step."""
    entropy_coefficient: float = Field(ge=0.0)
    """Weight of the entropy bonus in the loss (the book has none: 0)."""

    @property
    def environment_count(self) -> int:
        return self.episodes_per_iteration


class Reinforce(PolicyRun):
    """A REINFORCE run (on CartPole, or on LunarLander for exercise 8)."""

    training: ReinforceTraining
    """How long, on what, from which seeds."""
