"""Deep Q-networks on CartPole, one run per variant and training seed: their settings.

``dqn`` in params.yaml holds what every variant shares (environment, seed, evaluation, GIF) and,
under ``variants``, what makes each variant: its network, optimizer, loss, target network, double
Q-learning and replay.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field, model_validator

from stages.core.settings import (
    Block,
    Count,
    Discount,
    EnvId,
    Episodes,
    Gif,
    Network,
    NonNegativeInt,
    Optimizer,
    Params,
    PositiveFloat,
    Probability,
    Seed,
    StageSettings,
    argument_parser,
    member_of,
    parse_arguments,
    seeded,
)


class QNetwork(Network):
    dueling: bool
    """Dueling heads: Q = V + A - max(A)."""


class PrioritizedReplay(Block):
    """Schaul et al. (2016), proportional variant."""

    alpha: float = Field(ge=0.0, le=1.0)
    """P(i) ~ (|TD error| + priority_offset) ** alpha."""
    beta_start: Probability
    """Importance-sampling exponent, annealed linearly to beta_end over the episodes."""
    beta_end: Probability
    """The exponent at the last episode (1: full correction)."""
    priority_offset: PositiveFloat
    """Keeps a zero TD error's transition sampleable."""

    @model_validator(mode="after")
    def _annealed_up(self) -> PrioritizedReplay:
        if self.beta_start > self.beta_end:
            raise ValueError("beta_start must not exceed beta_end (beta anneals up to full correction)")
        return self


class Variant(Block):
    network: QNetwork
    """The Q-network."""
    optimizer: Optimizer
    """Its optimizer."""
    episodes: Count
    """Training episodes."""
    max_steps: Count
    """Training episodes are cut here (the book's cap: 200)."""
    learn_every: Literal["step", "episode"]
    """One gradient step after each episode (the book's code) or after each environment step."""
    warmup_episodes: NonNegativeInt
    """Learning starts at this episode (the memory fills first)."""
    epsilon_decay_episodes: Count
    """epsilon = max(1 - episode / epsilon_decay_episodes, epsilon_min)."""
    epsilon_min: Probability
    """The exploration rate's floor."""
    replay_capacity: Count
    """Transitions the replay memory holds."""
    batch_size: Count
    """Transitions per gradient step."""
    discount: Discount
    """Discount of the bootstrapped targets."""
    loss: Literal["mse", "huber"]
    """Of the TD error: squared, or Huber (delta 1)."""
    double: bool
    """Double Q-learning: the online network picks the next action, the target network values it."""
    target_update_episodes: Count | None
    """Episodes between copies of the online weights into the target network; null: no target
    network (targets come from the online network itself)."""
    prioritized_replay: PrioritizedReplay | None
    """null: uniform sampling."""

    @model_validator(mode="after")
    def _consistent(self) -> Variant:
        if self.double and self.target_update_episodes is None:
            raise ValueError("double Q-learning needs a target network: set target_update_episodes")
        if self.warmup_episodes >= self.episodes:
            raise ValueError("warmup_episodes must be below episodes (no learning would happen)")
        return self


class Evaluation(Episodes):
    max_steps: list[Count] = Field(min_length=1)
    """Each step cap to evaluate at (the book's 200 and CartPole-v1's own 500)."""


class CappedGif(Gif):
    max_steps: Count
    """Step cap of the GIF's episode."""


class Shared(Block):
    env_id: EnvId
    seed: Seed
    """Weights, exploration, replay sampling and the first training reset (later episodes
    continue the environment's random stream)."""
    evaluation: Evaluation
    """Held-out greedy episodes of both exported policies."""
    gif: CappedGif
    """One episode of the best-kept policy."""
    moving_average_episodes: Count
    """The training log's mean_return (and the figure's smoothed curve): the mean return of the
    latest this-many episodes."""

    @model_validator(mode="after")
    def _held_out(self) -> Shared:
        if self.seed in self.evaluation.seeds:
            raise ValueError("evaluation seeds (evaluation.seed_start onwards) must not include the "
                             "training seed")
        return self


class Section(Shared):
    """The whole ``dqn`` section: what the variants share, and the variants by name."""

    variants: dict[str, Variant] = Field(min_length=1)
    """Each variant's recipe, by name (dvc.yaml: one stage per variant and seed)."""


class Settings(Shared, StageSettings):
    """One variant's run: the shared settings, and the variant with its name."""

    name: str
    """The variant's name in params.yaml."""
    variant: Variant
    """The variant's recipe."""

    def training_seeds(self) -> set[int]:
        return {self.seed}


def settings(argv: Sequence[str], params: Params) -> Settings:
    """``--variant NAME --seed S``: variant NAME's run for training seed S."""
    args = parse_arguments(argument_parser(__doc__, member="variant", seed=True), argv)
    name = member_of(params, "dqn.variants", args.variant, "variant")
    shared = seeded(Shared, params, "dqn", args.seed, block=None, without=("variants",))
    variant = params.read(Variant, f"dqn.variants.{name}")
    return Settings(**dict(shared), name=name, variant=variant)
