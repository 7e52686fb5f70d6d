"""Soft actor-critic (TF-Agents' SacAgent) on a continuous-action environment, one run per
configuration and training seed: its settings.

``sac`` in params.yaml maps configuration names to SAC settings. The starting values are RL
Baselines3 Zoo's published ones (hyperparams/sac.yml), each with its source in params.yaml's
``sac`` section (and the network chosen for this machine's budget: docs/experiments/actor_critic.md)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import RootModel, model_validator

from stages.policy_gradient.settings import PolicyRun
from stages.core.settings import (
    Count,
    Discount,
    EnvId,
    Params,
    PositiveFloat,
    Probability,
    SeededTraining,
    argument_parser,
    member_of,
    parse_arguments,
    seeded,
)


class SacTraining(SeededTraining):
    """Random actions fill the replay buffer first; then every step of the environments is
    followed by gradient steps on batches of stored transitions."""

    total_steps: Count
    """Environment steps of the whole run, all environments together."""
    environments: Count
    """Environments stepped together (one policy call per step for all of them)."""
    initial_random_steps: Count
    """Steps of uniformly random actions before learning starts (RL Zoo's learning_starts)."""
    replay_capacity: Count
    """Transitions the replay buffer keeps (the oldest are overwritten)."""
    batch_size: Count
    """Transitions per gradient step."""
    gradient_steps: Count
    """Gradient steps after each step of the environments (one step of each of them)."""
    discount: Discount
    """The agent's gamma."""
    target_update_tau: Probability
    """Soft update rate of the target critics."""
    log_every: Count
    """Environment steps between rows of the training log (all environments together)."""

    @property
    def environment_count(self) -> int:
        return self.environments

    @model_validator(mode="after")
    def _fits(self) -> SacTraining:
        if self.batch_size > self.initial_random_steps:
            raise ValueError(f"batch_size {self.batch_size} exceeds initial_random_steps "
                             f"{self.initial_random_steps}: the first batch needs that many transitions")
        return self


class Settings(PolicyRun):
    env_id: EnvId
    """A Gymnasium environment with a continuous (Box) action space (LunarLanderContinuous-v3)."""
    training: SacTraining
    """How long, on what, from which seeds."""
    learning_rate_decay: Literal["constant", "linear"] = "constant"
    """``linear``: the learning rates fall linearly to 0 over the run (RL Zoo's ``lin_``)."""
    initial_alpha: PositiveFloat = 1.0
    """The entropy temperature's starting value (it is learned: RL Zoo's ent_coef 'auto')."""


class Section(RootModel[dict[str, Settings]]):
    """Every configuration (dvc.yaml: one stage per configuration and training seed)."""


class Run(Settings):
    """One configuration's run, with the configuration's name."""

    config: str
    """The configuration's name in params.yaml."""


def settings(argv: Sequence[str], params: Params) -> Run:
    """``--config NAME --seed S``: configuration NAME's run for training seed S."""
    args = parse_arguments(argument_parser(__doc__, member="config", seed=True), argv)
    config = member_of(params, "sac", args.config, "configuration")
    run = seeded(Settings, params, f"sac.{config}", args.seed)
    return Run(**dict(run), config=config)
