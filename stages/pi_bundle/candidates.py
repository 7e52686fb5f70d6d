"""The int8 model a policy ships: candidates made in several ways, the best one on observations
the choice is not measured on.

The post-training int8 model (:func:`stages.pi_bundle.tflite.convert_int8`) is always a candidate.
Where the policy's network can be read as layers, fine-tuned ones join it
(:mod:`stages.pi_bundle.fine_tuning`): for a Keras policy its whole network from each starting
point of ``fine_tuning.initializations``; for a TF-Agents Q-network (Atari), read back from its
saved graph, the pairwise model (:func:`stages.pi_bundle.tflite.convert_pairwise`) with its
pairwise layer as it is and fine-tuned. The candidate that chooses the original's action on most
of the fine-tuning observations ships (the held-out observations then measure the choice), and a
candidate LiteRT's default delegate would abort on is refused. A continuous action (SAC's) is
quantized after training only.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pi.policy_contract import ACTION_RULES
from pi.policy_runtime import TFLitePolicy
from stages.policies.index import PolicyEntry
from stages.pi_bundle import Settings
from stages.pi_bundle.decision_network import XNNPACK_MULTIPLIER_LIMIT, NotFineTunable, decision_network
from stages.pi_bundle.fine_tuning import (
    FineTuningOptions,
    fine_tune,
    fine_tune_pairwise_layer,
    int8_hidden_features,
)
from stages.pi_bundle.observations import MakeEnv, record_observations
from stages.pi_bundle.parity import agreement, batched
from stages.pi_bundle.q_network_graph import UnreadableNetwork, read_q_network
from stages.pi_bundle.records import FineTuning, Model, PolicyManifest
from stages.pi_bundle.tflite import (
    Int8Model,
    convert_decision_network,
    convert_pairwise,
    describe_model,
    largest_multiplier,
    normalization_of,
    pairwise_layer,
)

POST_TRAINING = "post_training"
# Below this share of the original's actions, a network read back as layers is not what it seems.
READ_BACK_AGREEMENT = 0.999


def model_record(file: str, content: bytes, normalization: dict | None, outputs: str, output_kind: str) -> Model:
    """A model's manifest entry before it is measured."""
    import tensorflow as tf

    return Model(file=file, size_bytes=len(content), converted_by=f"tensorflow {tf.__version__}",
                 input_normalization=normalization, outputs=outputs, output_kind=output_kind,
                 action_rule=ACTION_RULES[output_kind], **describe_model(content))


def int8_record(file: str, model: Int8Model) -> Model:
    return model_record(file, model.content, model.input_normalization, model.outputs, model.output_kind)


def scratch_policy(folder: Path, spec: PolicyManifest, model: Int8Model) -> TFLitePolicy:
    """An int8 model not (yet) in the bundle, loaded through the runner's class."""
    file = f"{len(list(folder.iterdir()))}.tflite"
    (folder / file).write_bytes(model.content)
    return TFLitePolicy(folder, {**spec.to_json(), "models": {"int8": int8_record(file, model).to_json()}}, "int8")


def held_out_agreement(spec: PolicyManifest, model: Int8Model, observations: np.ndarray,
                       reference: np.ndarray, tolerance: float | None = None) -> float:
    """Share of ``observations`` on which ``model`` (run by the runner's class) chooses ``reference``
    (within ``tolerance``, for continuous actions)."""
    with tempfile.TemporaryDirectory() as scratch:
        return agreement(scratch_policy(Path(scratch), spec, model).actions, observations, reference, tolerance)


class KeepPostTraining(Exception):
    """No candidate but the post-training model (the message says why)."""


@dataclass(frozen=True)
class Made:
    """Candidates (the post-training one first), the fine-tuning observations and the original's
    actions there, and what the record says of how they were made."""

    models: dict[str, Int8Model]
    observations: np.ndarray
    reference: np.ndarray
    details: dict[str, Any]


@dataclass(frozen=True)
class Inputs:
    """What every way of making candidates starts from."""

    cfg: Settings
    entry: PolicyEntry
    model: Any  # the Keras model or TF-Agents saved policy
    original: Callable[[np.ndarray], np.ndarray]  # its greedy actions
    calibration: np.ndarray
    post_training: Int8Model
    max_steps: int
    make_env: MakeEnv

    def fine_tuning_observations(self) -> np.ndarray:
        tuning = self.cfg.fine_tuning.observations
        return record_observations(self.entry, self.original, tuning, self.max_steps, self.make_env)

    def options(self) -> FineTuningOptions:
        tuning = self.cfg.fine_tuning
        return FineTuningOptions(steps=tuning.steps, batch_size=tuning.batch_size,
                                 learning_rate=tuning.learning_rate, range_updates=tuning.range_updates,
                                 seed=self.cfg.seed)


def check_read_back(actions: np.ndarray, reference: np.ndarray, what: str, observations: str, then: str) -> None:
    """A network read back as layers must choose the original's actions."""
    share = float(np.mean(actions == reference))
    if share < READ_BACK_AGREEMENT:
        raise KeepPostTraining(f"{what} chooses the original's action on only {share:.4f} of the "
                               f"{observations} observations{then}")


def keras_candidates(inputs: Inputs) -> Made:
    """A Keras policy's network read as dense layers, fine-tuned from each starting point."""
    entry, calibration = inputs.entry, inputs.calibration
    if entry.output == "continuous_action":
        raise KeepPostTraining("a continuous action: fine-tuning distils the choice among discrete actions, "
                               "not an action vector; quantized after training")
    normalization = normalization_of(calibration.astype(entry.observation_dtype))
    if normalization is None:
        raise KeepPostTraining("integer observations: quantized after training")
    observations = np.concatenate([inputs.fine_tuning_observations(), calibration])
    tuning = inputs.cfg.fine_tuning
    try:
        teacher = decision_network(inputs.model, entry.output, entry.n_actions, normalization, observations,
                                   tuning.output_quantile)
    except NotFineTunable as error:
        raise KeepPostTraining(f"not fine-tuned: {error}") from None

    def normalized(batch: np.ndarray) -> np.ndarray:
        return (batch - normalization[0]) / normalization[1]

    reference = batched(inputs.original, observations)
    check_read_back(np.argmax(teacher.preferences(normalized(observations)), axis=1), reference,
                    "not fine-tuned: the network read as dense layers", "fine-tuning", "")
    made = {POST_TRAINING: inputs.post_training}
    for start in tuning.initializations:
        tuned, _ = fine_tune(teacher, normalized(observations), normalized(calibration), inputs.options(),
                             fresh=start == "fresh")
        made[f"fine_tuned_from_{start}"] = convert_decision_network(tuned, normalized(calibration), normalization,
                                                                    teacher)
    return Made(made, observations, reference,
                {"decision_scale": teacher.decision_scale if teacher.clipped else None})


def pairwise_candidates(inputs: Inputs) -> Made:
    """A TF-Agents saved Q-policy's Q-network read back from its graph, as the pairwise model with
    its pairwise layer as it is and fine-tuned (the rest of the network rounded as the converter
    will, :func:`stages.pi_bundle.fine_tuning.int8_hidden_features`)."""
    import tensorflow as tf

    entry, cfg = inputs.entry, inputs.cfg
    why = "a TF-Agents saved policy"
    try:
        network = read_q_network(inputs.model)
    except UnreadableNetwork as error:
        raise KeepPostTraining(f"{why} whose Q-network could not be read back ({error}): "
                               "quantized after training") from None
    calibration = inputs.calibration.astype(entry.observation_dtype)
    q_values = batched(lambda batch: network.q_values(tf.constant(batch)).numpy(), inputs.calibration)
    check_read_back(np.argmax(q_values, axis=1), batched(inputs.original, inputs.calibration),
                    f"{why} whose Q-network, read back from its graph,", "calibration",
                    ": quantized after training")
    training = inputs.fine_tuning_observations()
    observations = np.concatenate([training, inputs.calibration]).astype(entry.observation_dtype)
    teacher = pairwise_layer(network, calibration, cfg.pairwise_output_quantile)
    features = int8_hidden_features(network, observations, calibration, normalization_of(calibration))
    reference = batched(inputs.original, observations)
    tuned, _ = fine_tune_pairwise_layer(features, features[len(training):], teacher, reference, inputs.options())
    made = {POST_TRAINING: inputs.post_training,
            **{name: convert_pairwise(entry, network, inputs.calibration, layer, teacher)
               for name, layer in (("pairwise_output", teacher), ("fine_tuned_pairwise_output", tuned))}}
    return Made(made, observations, reference,
                {"what": f"{why}: its Q-network read back from the saved graph, with action preferences from "
                         "pairwise comparisons as output; only the pairwise layer fine-tuned"})


def choose_int8(inputs: Inputs, spec: PolicyManifest) -> tuple[Int8Model, FineTuning]:
    """The int8 model to ship, and how it was chosen: of the candidates (post-training first, then
    ever more worked ones), the one that chooses the original's actions on most of the fine-tuning
    observations; on a tie, the later one. A candidate LiteRT's default delegate would abort on
    (XNNPACK: a requantization multiplier of 256 or more) is refused."""
    started = time.perf_counter()
    make = pairwise_candidates if inputs.entry.output == "tf_agents_policy" else keras_candidates
    try:
        made = make(inputs)
    except KeepPostTraining as reason:
        return inputs.post_training, FineTuning(applied=False, why=str(reason))
    candidates, refused = {}, {}
    for name, model in made.models.items():
        multiplier = largest_multiplier(model.content) if name != POST_TRAINING else 0.0
        if multiplier >= XNNPACK_MULTIPLIER_LIMIT:
            refused[name] = f"requantization multiplier {multiplier:.0f}"
        else:
            candidates[name] = model
    agreements = {name: held_out_agreement(spec, model, made.observations, made.reference)
                  for name, model in candidates.items()}
    chosen = max(reversed(list(candidates)), key=lambda name: agreements[name])
    return candidates[chosen], FineTuning(
        applied=True, shipped=chosen, observations=len(made.observations), steps=inputs.cfg.fine_tuning.steps,
        **made.details, action_agreement_on_fine_tuning_observations=agreements, refused=refused,
        wall_time_s=time.perf_counter() - started)
