"""A Keras policy's network as dense layers from normalized observations to action preferences.

What the fine-tuning (:mod:`stages.pi_bundle.fine_tuning`) trains and what the int8 model of a
Keras policy computes (:func:`stages.pi_bundle.tflite.convert_decision_network`):

- **Input**: each feature scaled to [-1, 1] over the calibration observations (center and scale
  in the manifest; the runner applies them), folded here into the first layer.
- **Output**: action preferences, ``z(s, a)`` minus its mean over actions, with ``z`` the
  Q-values, the logits of the action probabilities, or ``(logit, 0)`` for P(left): the argmax is
  the original's greedy action, and an int8 output spends its 256 steps on what decides it rather
  than on Q-values' common offset or on saturated probabilities (and no softmax or sigmoid rounds
  a second time). With two actions only the sign of the difference counts: the preferences are
  divided by a decision scale (a quantile of their size on the distillation observations) and
  clipped to [-1, 1] by the last dense layer's fused activation (RELU_N1_TO_1), so the output's
  steps resolve the close choices. The scale is kept large enough that the last layer's
  requantization multiplier stays below :data:`MULTIPLIER_BOUND` (XNNPACK, LiteRT's default CPU
  delegate, aborts on a multiplier of 256 or more).
- :func:`tensor_ranges`: the activation ranges the converter will measure, one asymmetric int8
  range per tensor.

A network that is not a chain of dense layers with activations the int8 simulation knows is
refused with :class:`NotFineTunable` (its int8 model is then quantized after training).
Measurements: docs/experiments/pi_bundle.md.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

# Hidden activations the fine-tuning simulates as TFLite's int8 kernels compute them.
HIDDEN_ACTIVATIONS = ("relu", "elu", "tanh")
# TFLite's int8 TANH has a fixed output quantization: scale 1/128, zero point 0.
TANH_RANGE = (-1.0, 127.0 / 128.0)
# A dense layer's requantization multiplier (input scale x weight scale / output scale) must stay
# below 256 for XNNPACK, LiteRT's default CPU delegate (a model above it aborted the interpreter
# in ai-edge-litert 2.3.0); fine-tuning keeps every unit below this bound, with room to spare.
MULTIPLIER_BOUND = 128.0
XNNPACK_MULTIPLIER_LIMIT = 256.0
OUTPUT_KIND = "action_preferences"
OUTPUTS_DESCRIPTION = {
    "q_values": "Q(s, a) - mean over actions of Q(s, .)",
    "action_probabilities": "logit(s, a) - mean over actions of logit(s, .) (the softmax's inputs)",
    "p_left": "(logit, -logit) / 2, logit the log-odds of P(left)",
}


class NotFineTunable(Exception):
    """The network is not one the fine-tuning can copy (the reason says why)."""


@dataclass(frozen=True)
class Dense:
    weights: np.ndarray  # (inputs, units), float32
    bias: np.ndarray     # (units,), float32
    activation: str      # "linear" for the output layer


@dataclass(frozen=True)
class DecisionNetwork:
    """A policy's network as dense layers from normalized observations to action preferences.

    ``decision_scale``: with two actions, the preferences are divided by it and ``clipped`` to
    [-1, 1]; otherwise 1 and not clipped.
    """

    layers: tuple[Dense, ...]
    output: str
    decision_scale: float
    clipped: bool

    def preferences(self, normalized: np.ndarray, clip: bool = True) -> np.ndarray:
        """The float network's outputs (NumPy, float64): what the int8 model approximates."""
        values = np.asarray(normalized, np.float64)
        for layer in self.layers:
            values = _numpy_activation(layer.activation, values @ layer.weights + layer.bias)
        return np.clip(values, -1.0, 1.0) if clip and self.clipped else values

    def description(self) -> str:
        text = OUTPUTS_DESCRIPTION[self.output]
        if self.clipped:
            return f"({text}) / {self.decision_scale:.6g}, clipped to [-1, 1]: the argmax is the greedy action"
        return f"{text}: the argmax is the greedy action"


def _numpy_activation(name: str, values: np.ndarray) -> np.ndarray:
    if name == "linear":
        return values
    if name == "relu":
        return np.maximum(values, 0.0)
    if name == "elu":
        return np.where(values > 0, values, np.expm1(np.minimum(values, 0.0)))
    if name == "tanh":
        return np.tanh(values)
    raise NotFineTunable(f"no int8 simulation for activation {name!r}")


# --- the network as dense layers ---------------------------------------------------------------


def q_difference_layer(model: Any) -> Any | None:
    """The linear layer whose outputs differ across actions exactly as the Q-values do."""
    names = [layer.name for layer in model.layers]
    for name in ("advantages", "q_values"):
        if name in names:
            layer = model.get_layer(name)
            if layer.__class__.__name__ == "Dense" and layer.get_config()["activation"] == "linear":
                return layer
    return None


def _head(model: Any, output: str) -> Any:
    if output == "q_values":
        layer = q_difference_layer(model)
        last = model.layers[-1]
        if layer is None and last.__class__.__name__ == "Dense" and last.get_config()["activation"] == "linear":
            layer = last  # a plain Q-network whose layers keep Keras' names
        if layer is None:
            raise NotFineTunable("no linear 'q_values' or 'advantages' dense layer")
        return layer
    expected = {"p_left": "sigmoid", "action_probabilities": "softmax"}.get(output)
    if expected is None:
        raise NotFineTunable(f"output kind {output!r} is not a Keras network's")
    layer = model.layers[-1]
    if layer.__class__.__name__ != "Dense" or layer.get_config()["activation"] != expected:
        raise NotFineTunable(f"the last layer is not a dense layer with a {expected} activation")
    return layer


def _inbound(layer: Any) -> Any:
    nodes = layer.inbound_nodes  # the functional graph, Sequential models' too
    if len(nodes) != 1:
        raise NotFineTunable(f"layer {layer.name} is used {len(nodes)} times")
    inbound = nodes[0].inbound_layers
    if isinstance(inbound, list | tuple):
        if len(inbound) != 1:
            raise NotFineTunable(f"layer {layer.name} has {len(inbound)} inputs")
        inbound = inbound[0]
    return inbound


def dense_chain(model: Any, head: Any) -> list[Any]:
    """The dense layers from the model's input to ``head``, input side first."""
    chain, layer = [head], head
    while True:
        inbound = _inbound(layer)
        if inbound.__class__.__name__ == "InputLayer":
            return chain[::-1]
        if inbound.__class__.__name__ != "Dense":
            raise NotFineTunable(f"layer {inbound.name} ({inbound.__class__.__name__}) is not dense")
        chain.append(inbound)
        layer = inbound


def decision_network(model: Any, output: str, n_actions: int, normalization: tuple[np.ndarray, np.ndarray],
                     observations: np.ndarray, output_quantile: float) -> DecisionNetwork:
    """The Keras policy ``model`` as a :class:`DecisionNetwork` on normalized observations.

    The normalization ``(center, scale)`` is folded into the first layer, the output layer becomes
    the preferences (centered over actions), and with two actions the decision scale is measured on
    ``observations`` (raw, as the policy sees them). Raises :class:`NotFineTunable` for a network
    that is not a chain of dense layers with activations the int8 simulation knows.
    """
    head = _head(model, output)
    layers = []
    for layer in dense_chain(model, head):
        weights, bias = (np.asarray(w, np.float64) for w in layer.get_weights())
        activation = "linear" if layer is head else layer.get_config()["activation"]
        if layer is not head and activation not in HIDDEN_ACTIVATIONS:
            raise NotFineTunable(f"hidden activation {activation!r} (simulated: {', '.join(HIDDEN_ACTIVATIONS)})")
        if layer.get_config().get("use_bias") is False:
            bias = np.zeros(weights.shape[1])
        layers.append([weights, bias, activation])
    center, scale = (np.asarray(v, np.float64).ravel() for v in normalization)
    first_weights, first_bias = layers[0][0], layers[0][1]
    if first_weights.shape[0] != len(center):
        raise NotFineTunable(f"the first dense layer takes {first_weights.shape[0]} inputs, the observation "
                             f"has {len(center)} features")
    layers[0][0], layers[0][1] = scale[:, None] * first_weights, first_bias + center @ first_weights
    weights, bias = layers[-1][0], layers[-1][1]
    if output == "p_left":  # P(left) = sigmoid(logit): the scores (logit, 0), whose argmax is the action
        weights = np.concatenate([weights, np.zeros_like(weights)], axis=1)
        bias = np.concatenate([bias, np.zeros_like(bias)])
    # Centered: z(s, a) - mean_b z(s, b). No output unit is constant (a unit of zero weights has
    # no int8 scale to speak of; XNNPACK aborts on one), the argmax is unchanged.
    weights, bias = weights - weights.mean(axis=1, keepdims=True), bias - bias.mean()
    layers[-1][0], layers[-1][1] = weights, bias
    network = DecisionNetwork(tuple(Dense(w.astype(np.float32), b.astype(np.float32), a) for w, b, a in layers),
                              output=output, decision_scale=1.0, clipped=False)
    if n_actions != 2 or weights.shape[1] != 2:
        return network
    normalized = (observations.reshape(len(observations), -1) - center) / scale
    sizes = np.abs(network.preferences(normalized)[:, 1])
    scale_value = max(float(np.quantile(sizes, output_quantile)), smallest_decision_scale(network, normalized))
    if not scale_value > 1e-6:  # a policy whose preferences are mostly exactly zero
        scale_value = float(sizes.max()) if sizes.max() > 1e-6 else 1.0
    return scaled(network, scale_value)


def smallest_decision_scale(network: DecisionNetwork, normalized: np.ndarray) -> float:
    """The decision scale below which the output layer's requantization multiplier would start
    above half of :data:`MULTIPLIER_BOUND` (output range [-1, 1], 255 steps)."""
    inputs, _ = tensor_slots(network)[-1]
    low, high = tensor_ranges(network, normalized)[inputs]
    input_step, output_step = (high - low) / 255.0, 2.0 / 255.0
    largest = float(np.abs(network.layers[-1].weights).max())
    return input_step * largest / 127.0 / output_step / (MULTIPLIER_BOUND / 2)


def scaled(network: DecisionNetwork, decision_scale: float) -> DecisionNetwork:
    """The two-action network with its preferences divided by ``decision_scale`` and clipped."""
    last = network.layers[-1]
    factor = network.decision_scale / decision_scale
    head = Dense((last.weights * factor).astype(np.float32), (last.bias * factor).astype(np.float32), "linear")
    return replace(network, layers=(*network.layers[:-1], head), decision_scale=decision_scale, clipped=True)


def tensor_ranges(network: DecisionNetwork, normalized: np.ndarray) -> list[tuple[float, float]]:
    """The (min, max) of every tensor the int8 model quantizes, as the converter measures them on
    ``normalized`` (float weights), each widened to include 0: the input, then per layer its dense
    output (after a fused ReLU or clip) and, for ELU and tanh, the activation's output."""

    def including_zero(values: np.ndarray) -> tuple[float, float]:
        return float(min(values.min(), 0.0)), float(max(values.max(), 0.0))

    values = np.asarray(normalized, np.float32)
    ranges = [including_zero(values)]
    for index, layer in enumerate(network.layers):
        dense = values @ layer.weights + layer.bias
        last = index == len(network.layers) - 1
        if layer.activation in ("relu", "linear"):
            values = np.maximum(dense, 0.0) if layer.activation == "relu" else dense
            if last and network.clipped:
                values = np.clip(values, -1.0, 1.0)
            ranges.append(including_zero(values))
        else:
            ranges.append(including_zero(dense))
            values = _numpy_activation(layer.activation, dense).astype(np.float32)
            ranges.append(TANH_RANGE if layer.activation == "tanh" else including_zero(values))
    return ranges


def tensor_slots(network: DecisionNetwork) -> list[tuple[int, int]]:
    """Per layer, the indices in :func:`tensor_ranges` of its input and of its dense output."""
    slots, current = [], 0
    for layer in network.layers:
        slots.append((current, current + 1))
        current += 1 if layer.activation in ("relu", "linear") else 2
    return slots

