"""What the bundle records of each policy: its manifest entry and its benchmark, as typed records.

A per-policy stage (``python -m stages.pi_bundle.policy``) writes both to one result file,
reports/pi_bundle/policies/<policy>.json; the gathering stage reads them back, checked, into the
bundle's manifest.json and reports/pi_bundle/benchmark.json. An optional field that does not apply
(``interval`` of an int8 model's return, ``unsafe_reason`` of a safe model, ``why`` of an applied
fine-tuning) is left out of the JSON rather than written as null (``exclude_unset``); one that is
set to None (an int8 input that is not quantized) is written as null.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

PRECISIONS = ("float32", "int8")
CONVERTED = Path("data/pi_policies")  # <policy>/: its models and sample observations, as in the bundle
RESULTS = Path("reports/pi_bundle/policies")  # <policy>.json: its PolicyResult


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


# --- the manifest -----------------------------------------------------------------------------


class Tensor(Record):
    """A model's input or output tensor; scale and zero point where it is quantized."""

    dtype: str
    shape: list[int]
    scale: float | None
    zero_point: int | None


class Interval(Record):
    confidence: float
    low: float
    high: float


class MeasuredReturn(Record):
    mean: float
    episodes: int
    seeds: list[int]  # the first and the last
    interval: Interval | None = None  # float32 only


class Measured(Record):
    """What was measured of a shipped model on the held-out observations and evaluation seeds."""

    held_out_observations: int
    action_agreement: float
    max_abs_diff: float
    return_: MeasuredReturn = Field(alias="return")
    action_tolerance: float | None = None  # continuous actions: the largest |difference| that agrees
    input_rounding_agreement: float | None = None  # int8 only
    post_training_action_agreement: float | None = None  # int8 only


class Model(Record):
    """One TFLite model of a policy, as the runner loads it (pi/policy_runtime.py, TFLitePolicy)."""

    file: str
    size_bytes: int
    converted_by: str
    input_normalization: dict[str, list[float]] | None
    outputs: str
    output_kind: str
    action_rule: str
    input: Tensor
    output: Tensor
    fine_tuned: bool | None = None  # int8 only
    made_by: str | None = None  # int8 only: the candidate shipped
    measured: Measured | None = None
    safe: bool | None = None  # int8 only
    unsafe_reason: str | None = None


class Source(Record):
    policy: str
    stage: str
    algorithm: str
    seed: int | None


class Sample(Record):
    file: str
    expected_actions: dict[str, list[int] | list[list[float]]]  # continuous: one vector per observation


class PolicyManifest(Record):
    """A policy's entry in manifest.json."""

    env_id: str
    env_kwargs: dict[str, Any]
    max_steps: int
    observation_shape: list[int]
    observation_dtype: str
    n_actions: int
    output: str
    action_rule: str
    preprocessing: dict[str, Any]
    source: Source
    models: dict[str, Model]
    default_precision: str | None = None
    default_reason: str | None = None
    sample: Sample | None = None


# --- the benchmark ----------------------------------------------------------------------------


class Parity(Record):
    """A TFLite model against the original on the held-out observations."""

    observations: int
    max_abs_diff: float
    max_scaled_diff: float
    action_agreement: float
    action_agreement_without_ties: float
    ties: int
    action_tolerance: float | None = None  # continuous actions: the largest |difference| that agrees


class FineTuning(Record):
    """How the int8 model was made: which candidates were tried and which one ships (or why none
    was fine-tuned)."""

    applied: bool
    why: str | None = None  # not applied
    shipped: str | None = None
    observations: int | None = None
    steps: int | None = None
    decision_scale: float | None = None  # a Keras policy's network
    what: str | None = None  # a TF-Agents Q-network
    action_agreement_on_fine_tuning_observations: dict[str, float] | None = None
    refused: dict[str, str] | None = None
    wall_time_s: float | None = None

    @property
    def fine_tuned(self) -> bool:
        return (self.shipped or "").startswith("fine_tuned")


class Int8Parity(Parity):
    output_step: float
    action_agreement_margin_above_step: float
    observations_margin_above_step: int
    input_rounding_agreement: float | None
    meets_target: bool
    fine_tuning: FineTuning
    post_training_action_agreement: float


class Returns(Record):
    mean: float
    std: float
    interval: list[float] | None = None  # float32 only


class Evaluation(Record):
    seeds: list[int]  # the first and the last
    max_steps: int
    original: Returns
    float32: Returns
    int8: Returns


class Latency(Record):
    median_wall_time_s: float
    p99_wall_time_s: float


class PolicyBenchmark(Record):
    """A policy's entry in reports/pi_bundle/benchmark.json."""

    env_id: str
    output: str
    calibration_observations: int
    conversion_wall_time_s: float
    size_bytes: dict[str, int]
    float32: Parity
    int8: Int8Parity
    evaluation: Evaluation
    default_precision: str
    latency: dict[str, Latency]
    bundle_wall_time_s: float | None = None

    def metrics(self) -> dict[str, Any]:
        """The policy's entry in reports/pi_bundle/metrics.json."""
        return {"int8_action_agreement": self.int8.action_agreement,
                "int8_meets_target": self.int8.meets_target,
                "int8_input_rounding_agreement": self.int8.input_rounding_agreement,
                "int8_post_training_action_agreement": self.int8.post_training_action_agreement,
                "int8_fine_tuned": self.int8.fine_tuning.fine_tuned,
                "int8_is_default": self.default_precision == "int8",
                "float32_max_abs_diff": self.float32.max_abs_diff,
                "float32_action_agreement": self.float32.action_agreement,
                "return_original": self.evaluation.original.mean,
                "return_float32": self.evaluation.float32.mean,
                "return_int8": self.evaluation.int8.mean,
                "size_bytes_float32": self.size_bytes["float32"],
                "size_bytes_int8": self.size_bytes["int8"]}


class PolicyResult(Record):
    """One policy's result file: what the gathering stage packs into the bundle and its reports."""

    manifest: PolicyManifest
    benchmark: PolicyBenchmark

    @classmethod
    def read(cls, path: Path) -> PolicyResult:
        return cls.model_validate_json(path.read_text())
