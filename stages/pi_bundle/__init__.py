"""Every policy as TFLite for a Raspberry Pi: the bundle's settings."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field, model_validator

from stages.common.settings import (
    Block,
    Count,
    Episodes,
    Params,
    PositiveFloat,
    Probability,
    Seed,
    StageSettings,
    argument_parser,
    parse_arguments,
    ranges_overlap,
    registered_env_id,
)


class ObservationSet(Block):
    """Observations of the policy's own greedy episodes, one seed per episode from seed_start,
    evenly spaced over every step played."""

    observations: Count
    """Observations wanted."""
    seed_start: Seed
    max_episodes: Count
    """Episodes played at most (fewer observations if they run out)."""
    episodes_per_batch: Count
    """Episodes played side by side until there are enough observations."""

    @property
    def seeds(self) -> range:
        return range(self.seed_start, self.seed_start + self.max_episodes)


class EnvironmentEvaluation(Episodes):
    """The evaluation seeds of the stages that trained the environment's policies."""

    max_steps: Count
    """Episode cap (also the runner's default)."""


class Settings(StageSettings):
    calibration: ObservationSet
    """int8 representative data."""
    parity: ObservationSet
    """Held-out observations on which outputs and actions are compared."""
    evaluation: dict[str, EnvironmentEvaluation] = Field(min_length=1)
    """Per environment id: the episodes each precision is played for."""
    float32_tolerance: PositiveFloat
    """Largest allowed |TFLite float32 - original| / max(1, |original|)."""
    int8_agreement_target: Probability
    """Share of held-out actions the int8 model must keep, for int8_target_env_ids."""
    int8_target_env_ids: list[str]
    """Environments whose int8 models are held to the agreement target."""
    sample_observations: Count
    """Shipped per policy with their expected actions (run_policy.py act)."""
    benchmark_calls: Count
    """Single-observation actions timed per model."""
    seed: Seed
    """TensorFlow (conversion is deterministic; this pins anything left)."""

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        for env_id in [*self.evaluation, *self.int8_target_env_ids]:
            registered_env_id(env_id)
        named = [("calibration", self.calibration.seeds), ("parity", self.parity.seeds),
                 *((f"evaluation of {env}", e.seeds) for env, e in self.evaluation.items())]
        for i, (a, seeds_a) in enumerate(named):
            for b, seeds_b in named[i + 1:]:
                both_evaluation = a.startswith("evaluation") and b.startswith("evaluation")
                if not both_evaluation and ranges_overlap(seeds_a, seeds_b):
                    raise ValueError(f"the {a} and {b} seed ranges must not overlap")
        if self.sample_observations > self.parity.observations:
            raise ValueError("sample_observations must not exceed parity.observations")
        return self


def settings(argv: Sequence[str], params: Params) -> Settings:
    parse_arguments(argument_parser(__doc__), argv)
    return params.read(Settings, "pi_bundle")
