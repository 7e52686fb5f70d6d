"""Settings blocks of the TF-Agents DQN experiments (the Atari games and the custom
grid): epsilon-greedy exploration and the collect-then-train loop over a replay buffer.
Kept apart from the agents' code so that reading settings never imports TensorFlow."""

from __future__ import annotations

from pydantic import Field, model_validator

from stages.core.settings import Block, Count, Probability, Seed


class EpsilonGreedy(Block):
    """Exploration: epsilon decays linearly from epsilon_start to epsilon_end (each agent says
    over what)."""

    epsilon_start: Probability
    """Exploration rate at the first training step."""
    epsilon_end: Probability
    """Exploration rate after the decay."""

    @model_validator(mode="after")
    def _decays(self) -> EpsilonGreedy:
        if self.epsilon_end > self.epsilon_start:
            raise ValueError("epsilon_end must not exceed epsilon_start")
        return self


class ReplayTraining(Block):
    """Random steps fill the replay buffer; then each iteration collects steps with the
    epsilon-greedy policy and trains on one batch of pairs of consecutive steps."""

    iterations: Count
    """One training step each."""
    collect_steps_per_iteration: Count
    """Environment steps collected before each training step."""
    initial_collect_steps: int = Field(ge=2)
    """Random-policy steps that fill the buffer first (a training sample is 2 steps)."""
    replay_buffer_capacity: int = Field(ge=2)
    """Trajectory steps the replay buffer holds."""
    batch_size: Count
    """Samples (pairs of consecutive steps) per training step."""
    log_interval: Count
    """Iterations between rows of the training log."""
    seed: Seed
    """The training environment and TensorFlow."""
