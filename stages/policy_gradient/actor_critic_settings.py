"""Settings blocks of the on-policy actor-critic experiments (A2C and PPO): environments stepped
together for a fixed number of steps, advantages from a learned value function, an update.
Kept apart from the trainers so that reading settings never imports TensorFlow."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from stages.policy_gradient.settings import PolicyRun
from stages.core.settings import Count, Discount, PositiveFloat, Probability, SeededTraining


class OnPolicyTraining(SeededTraining):
    """Rollouts of ``steps_per_rollout`` steps of every environment, each followed by an update,
    until ``total_steps`` environment steps (all environments together) have been played."""

    total_steps: Count
    """Environment steps of the whole run, all environments together."""
    environments: Count
    """Environments stepped together (one policy call per step for all of them)."""
    steps_per_rollout: Count
    """Steps of each environment between updates (A2C's n of the n-step returns)."""
    discount: Discount
    """Discount of the returns and of the bootstrapped values."""
    gae_lambda: Probability
    """Generalised advantage estimation's lambda (1: plain n-step bootstrapped advantages)."""
    entropy_coefficient: float = Field(ge=0.0)
    """Weight of the entropy bonus in the loss."""
    value_coefficient: PositiveFloat
    """Weight of the value function's squared error in the loss."""
    max_gradient_norm: PositiveFloat
    """Gradients are clipped to this global norm."""
    learning_rate_decay: Literal["constant", "linear"]
    """``linear``: the learning rate falls linearly to 0 over the run (RL Zoo's ``lin_``)."""
    log_every: Count
    """Rollouts between rows of the training log."""

    @property
    def environment_count(self) -> int:
        return self.environments

    @property
    def rollout_size(self) -> int:
        return self.environments * self.steps_per_rollout

    @property
    def rollouts(self) -> int:
        """Rollouts of the run: ``total_steps`` rounded up to whole rollouts."""
        return -(-self.total_steps // self.rollout_size)


class ActorCriticRun(PolicyRun):
    """An on-policy actor-critic run: ``network`` is the shape of both the actor and the critic
    (two separate networks, as RL Zoo's default ``MlpPolicy``)."""

    training: OnPolicyTraining
    """How long, on what, from which seeds."""


class PpoTraining(OnPolicyTraining):
    """PPO's rollouts, each followed by ``epochs`` passes of clipped-objective minibatch updates."""

    epochs: Count
    """Passes over each rollout."""
    minibatch_size: Count
    """Steps per gradient step (a rollout is shuffled and cut into minibatches)."""
    clip_ratio: PositiveFloat
    """PPO's clip range of the probability ratio."""

    @model_validator(mode="after")
    def _fits(self) -> PpoTraining:
        if self.minibatch_size > self.rollout_size:
            raise ValueError(f"minibatch_size {self.minibatch_size} exceeds a rollout's "
                             f"{self.rollout_size} steps (environments x steps_per_rollout)")
        return self


class PpoRun(PolicyRun):
    """A PPO run: ``network`` is the shape of both the actor and the value network."""

    training: PpoTraining
    """How long, on what, from which seeds."""
