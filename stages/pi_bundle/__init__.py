"""Every policy as TFLite for a Raspberry Pi: the bundle's settings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field, model_validator

from stages.core.settings import (
    Block,
    Bootstrap,
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


class FineTuning(Block):
    """Quantization-aware fine-tuning of each policy's int8 copy (stages/pi_bundle/fine_tuning.py):
    the network with the int8 model's rounding in its forward pass, trained to reproduce the float
    policy's outputs on observations the float policy visits. For a Keras policy the whole network, for a
    TF-Agents Q-network (Atari) its pairwise comparison layer, from its float weights
    (``initializations`` and ``output_quantile`` apply to the Keras policies)."""

    observations: ObservationSet
    """The distillation observations (the calibration observations are added to them)."""
    initializations: list[Literal["teacher", "fresh"]] = Field(min_length=1)
    """Starting points tried, each fine-tuned on its own: the float policy's weights ("teacher"),
    or fresh Glorot weights ("fresh"; a network that reaches its Q-value differences by
    cancelling large terms keeps doing so when fine-tuned, and 8-bit weights cannot cancel)."""
    steps: Count
    """Adam steps per initialization (one batch each; the learning rate decays to zero, cosine)."""
    batch_size: Count
    """Observations per step."""
    learning_rate: PositiveFloat
    """Adam's learning rate."""
    range_updates: Count
    """Times the activation ranges are re-measured on the calibration observations while training,
    as the weights move; each time, the simulated int8 model's agreement on the distillation
    observations is measured and the best weights so far are kept."""
    output_quantile: Probability
    """Two-action policies: the int8 output is the preference of action 1 divided by this quantile
    of its size over the distillation observations, clipped to [-1, 1]: the output's 256 steps
    resolve the close choices, the rest need only the right sign."""

    @model_validator(mode="after")
    def _positive_quantile(self) -> FineTuning:
        if not 0.0 < self.output_quantile < 1.0:
            raise ValueError("output_quantile must lie strictly between 0 and 1")
        return self


class ReturnInterval(Bootstrap):
    """The float32 policy's percentile-bootstrap interval of its mean held-out return
    (stages.policies.statistics.bootstrap_mean_interval): int8 runs by default only if its mean
    return lies inside."""

    confidence: Probability
    """Confidence level of the interval."""


class EnvironmentEvaluation(Episodes):
    """The evaluation seeds of the stages that trained the environment's policies."""

    max_steps: Count
    """Episode cap (also the runner's default)."""
    action_tolerance: PositiveFloat | None = None
    """Continuous actions (``continuous_action`` policies) only, and needed for them: the int8
    model's action agrees with the original's when no component is farther from it than this."""


class Settings(StageSettings):
    calibration: ObservationSet
    """int8 representative data: the input scaling and the activation ranges."""
    fine_tuning: FineTuning
    """Quantization-aware fine-tuning of the int8 models of Keras policies."""
    parity: ObservationSet
    """Held-out observations on which outputs and actions are compared."""
    evaluation: dict[str, EnvironmentEvaluation] = Field(min_length=1)
    """Per environment id: the episodes each precision is played for."""
    pairwise_output_quantile: Probability
    """TF-Agents Q-networks (Atari): the int8 model's preference for action a sums, over the other
    actions b, Q(a) - Q(b) divided by this quantile of |Q(a) - Q(b)| over the calibration
    observations and clipped to [-1, 1] (stages/pi_bundle/tflite.py, convert_pairwise)."""
    float32_tolerance: PositiveFloat
    """Largest allowed |TFLite float32 - original| / max(1, |original|)."""
    int8_agreement_target: Probability
    """Share of held-out actions an int8 model must keep to be a policy's default precision
    (with a mean return inside the float32 policy's return_interval)."""
    return_interval: ReturnInterval
    """The float32 policy's interval of its mean return that the int8 model's must lie in."""
    sample_observations: Count
    """Shipped per policy with their expected actions (run_policy.py act)."""
    benchmark_calls: Count
    """Single-observation actions timed per model."""
    seed: Seed
    """TensorFlow and the fine-tuning's batches (conversion is deterministic)."""

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        for env_id in self.evaluation:
            registered_env_id(env_id)
        named = [("calibration", self.calibration.seeds), ("parity", self.parity.seeds),
                 ("fine-tuning", self.fine_tuning.observations.seeds),
                 *((f"evaluation of {env}", e.seeds) for env, e in self.evaluation.items())]
        for i, (a, seeds_a) in enumerate(named):
            for b, seeds_b in named[i + 1:]:
                both_evaluation = a.startswith("evaluation") and b.startswith("evaluation")
                if not both_evaluation and ranges_overlap(seeds_a, seeds_b):
                    raise ValueError(f"the {a} and {b} seed ranges must not overlap")
        if not 0.0 < self.pairwise_output_quantile < 1.0:
            raise ValueError("pairwise_output_quantile must lie strictly between 0 and 1")
        if self.sample_observations > self.parity.observations:
            raise ValueError("sample_observations must not exceed parity.observations")
        return self


def settings(argv: Sequence[str], params: Params) -> Settings:
    parse_arguments(argument_parser(__doc__), argv)
    return params.read(Settings, "pi_bundle")
