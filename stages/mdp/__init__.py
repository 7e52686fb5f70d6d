"""A three-state MDP solved by Q-value iteration and Q-learning: its settings."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field, model_validator

from stages.core.settings import (
    Block,
    Count,
    Discount,
    NonNegativeInt,
    Params,
    PositiveFloat,
    Probability,
    Seed,
    StageSettings,
    argument_parser,
    parse_arguments,
)


class QValueIteration(Block):
    discounts: list[Discount] = Field(min_length=1)
    """One run of Q-value iteration per discount."""
    iterations: Count
    """Sweeps over every state and action."""


class QLearning(Block):
    transitions: Count
    """Steps of a uniformly random exploration policy."""
    learning_rate: PositiveFloat
    """alpha0 in alpha_t = alpha0 / (1 + t * learning_rate_decay)."""
    learning_rate_decay: float = Field(ge=0.0)
    """decay in alpha_t = alpha0 / (1 + t * decay)."""
    discount: Discount
    """Must be one of q_value_iteration.discounts (the two are compared)."""
    start_state: NonNegativeInt
    """The exploration starts here."""
    seed: Seed


class Settings(StageSettings):
    transition_probabilities: list[list[list[Probability] | None]]
    """[state][action] -> probability of each next state; null where the action is impossible."""
    rewards: list[list[list[float] | None]]
    """[state][action] -> reward for landing in each next state; null where impossible."""
    q_value_iteration: QValueIteration
    """The model-based solution."""
    q_learning: QLearning
    """The model-free one."""

    @model_validator(mode="after")
    def _shapes(self) -> Settings:
        n_states = len(self.transition_probabilities)
        agree = len(self.rewards) == n_states
        for probs_by_action, rewards_by_action in zip(self.transition_probabilities, self.rewards):
            agree &= len(probs_by_action) == len(rewards_by_action)
            for probs, rewards in zip(probs_by_action, rewards_by_action):
                agree &= (probs is None) == (rewards is None)
                if probs is not None and rewards is not None:
                    agree &= len(probs) == n_states == len(rewards) and abs(sum(probs) - 1.0) <= 1e-9
        if not agree:
            raise ValueError("transition_probabilities and rewards must have the same shape (null in "
                             "the same places) and each probability row must sum to 1")
        if not all(any(p is not None for p in actions) for actions in self.transition_probabilities):
            raise ValueError("every state needs at least one possible action")
        if self.q_learning.discount not in self.q_value_iteration.discounts:
            raise ValueError("q_learning.discount must be one of q_value_iteration.discounts "
                             "(Q-learning is compared with the iteration at the same discount)")
        if self.q_learning.start_state >= n_states:
            raise ValueError("q_learning.start_state must be a state of the MDP")
        return self


def settings(argv: Sequence[str], params: Params) -> Settings:
    parse_arguments(argument_parser(__doc__), argv)
    return params.read(Settings, "mdp")
