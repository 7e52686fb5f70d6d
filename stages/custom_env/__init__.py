"""A custom TF-Agents environment (a grid) and a DQN agent that crosses it: its settings."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field, model_validator

from stages.core.settings import (
    Count,
    Discount,
    Optimizer,
    Params,
    StageSettings,
    argument_parser,
    parse_arguments,
)
from stages.tf_agents_kit.settings import EpsilonGreedy, ReplayTraining


class Agent(EpsilonGreedy):
    fc_layers: list[Count] = Field(min_length=1)
    """Units of the Q-network's dense layers."""
    optimizer: Optimizer
    """Its optimizer."""
    discount: Discount
    """The agent's gamma: shorter paths are worth more."""
    epsilon_decay_steps: Count
    """Training steps over which epsilon decays to epsilon_end."""
    target_update_period: Count
    """Training steps between target-network copies."""


class Settings(StageSettings):
    grid_size: int = Field(ge=2, le=20)
    """Start in the top-left cell, goal in the bottom-right one."""
    step_discount: float = Field(ge=0.0, le=1.0)
    """The discount of a non-terminal step (the environment's configurable one)."""
    max_steps: Count
    """An episode that wanders this long is cut (a truncation)."""
    validate_episodes: Count
    """Episodes of TF-Agents' validate_py_environment."""
    agent: Agent
    """The TF-Agents DQN agent."""
    training: ReplayTraining
    """Its training loop."""

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.max_steps < 2 * (self.grid_size - 1):
            raise ValueError("max_steps must allow a shortest path (2 * (grid_size - 1) steps)")
        if self.training.log_interval > self.training.iterations:
            raise ValueError("training.log_interval must not exceed training.iterations")
        return self

    def training_seeds(self) -> set[int]:
        return {self.training.seed}


def settings(argv: Sequence[str], params: Params) -> Settings:
    parse_arguments(argument_parser(__doc__), argv)
    return params.read(Settings, "custom_env")
