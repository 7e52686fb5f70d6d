"""Trained policies as TFLite models: float32, and full-integer int8 calibrated on observations.

Keras policies are converted as they are, so the float32 model outputs what the Keras model does
(P(left), action probabilities or Q-values) and the same action rule applies. A TF-Agents policy
saved by PolicySaver is converted through its ``action`` function with the observation as the only
input (the time step's other fields do not change a greedy Q-policy's choice): its output is the
action itself.

In the int8 model the input and output are int8 (their scales and zero points go in the
manifest) and so are the weights and the fully-connected layers. Observations that are already
integers (Atari's uint8 frames) stay as they are. Float observations are first scaled feature by
feature to [-1, 1] over the calibration data (center and scale in the manifest; the runner applies
them): one int8 scale for the whole input would otherwise give CartPole's pole angle (within
+-0.21 rad) the resolution of its angular velocity (+-3), about 20 steps, where the policies'
decisions are made.

Two int8 models can be made. :func:`convert_int8` quantizes the original after training: the
scaling is folded into the first layer by the converter, and a Q-network outputs
Q(s, a) - Q(s, 0), which has the same argmax (two Q-values near 20 or 100 that differ by less than
one of 256 steps over their whole range would otherwise become one, and argmax pick action 0).
:func:`convert_decision_network` converts a network fine-tuned with the int8 rounding in its
forward pass (:mod:`stages.pi_bundle.fine_tuning`), whose outputs are action preferences; the pi_bundle stage
ships it for every Keras policy it can read as dense layers. :func:`convert_pairwise` converts a
TF-Agents Q-network read back from its saved policy (:mod:`stages.pi_bundle.q_network_graph`) with
action preferences built from pairwise comparisons of its Q-values as output (why: see there).

Every converter here converts the function's frozen graph directly
(``experimental_lower_to_saved_model = False``), much faster than through a SavedModel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from stages.policies.index import PolicyEntry, load_model
from stages.pi_bundle.decision_network import OUTPUT_KIND, DecisionNetwork, q_difference_layer
from stages.pi_bundle.q_network_graph import QNetwork


@dataclass(frozen=True)
class Int8Model:
    """A full-integer int8 model and what the runner needs to feed it and read it."""

    content: bytes
    # The model's input is (observation - center) / scale, feature by feature (or None).
    input_normalization: dict[str, list] | None
    # How its outputs become actions (an ACTION_RULES key of pi/policy_runtime.py).
    output_kind: str
    # What its outputs are, for a reader of the manifest.
    outputs: str
    # Post-training quantization: it outputs Q(s, a) - Q(s, 0) instead of Q(s, a).
    q_differences: bool = False
    # Fine-tuned: the float network it was fine-tuned to reproduce, as its outputs are expressed.
    teacher: DecisionNetwork | None = None
    # Otherwise, where its outputs are not the original's: the float outputs it approximates.
    float_outputs: Callable[[np.ndarray], np.ndarray] | None = None


def output_kind(entry: PolicyEntry) -> str:
    return "action" if entry.output == "tf_agents_policy" else entry.output


def serving_function(entry: PolicyEntry, model: Any,
                     normalization: tuple[np.ndarray, np.ndarray] | None = None) -> Any:
    """A concrete function from a batch of observations (normalized ones, when given the
    ``(center, scale)`` of a normalization) to the policy's outputs."""
    import tensorflow as tf

    spec = tf.TensorSpec([None, *entry.observation_shape], tf.as_dtype(entry.observation_dtype),
                         name="observation")
    if entry.output == "tf_agents_policy":
        from tf_agents.trajectories import time_step as ts

        @tf.function(input_signature=[spec])
        def serve(observation: tf.Tensor) -> dict[str, tf.Tensor]:
            if normalization is not None:
                observation = observation * normalization[1] + normalization[0]
            n = tf.shape(observation)[0]
            step = ts.TimeStep(step_type=tf.fill([n], tf.constant(ts.StepType.MID, tf.int32)),
                               reward=tf.zeros([n], tf.float32), discount=tf.ones([n], tf.float32),
                               observation=observation)
            return {"action": model.action(step, ()).action}
    else:
        center, scale = normalization if normalization is not None else (0.0, 1.0)

        @tf.function(input_signature=[spec])
        def serve(observation: tf.Tensor) -> dict[str, tf.Tensor]:
            if normalization is not None:
                observation = observation * scale + center
            return {"output": model(observation, training=False)}

    return serve.get_concrete_function()


def load_original(entry: PolicyEntry) -> Any:
    """The policy's Keras model or TF-Agents saved policy, loaded once for every use here."""
    if entry.output == "tf_agents_policy":
        import tf_agents.policies  # noqa: F401  (registers the types a saved policy refers to)
    return load_model(entry)


def original_outputs(entry: PolicyEntry, model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """The original policy's raw outputs (what the TFLite models must reproduce), in batches."""
    import tensorflow as tf

    function = serving_function(entry, model)
    dtype = np.dtype(entry.observation_dtype)

    def outputs(observations: np.ndarray, batch: int = 1024) -> np.ndarray:
        parts = [next(iter(function(tf.constant(observations[i:i + batch].astype(dtype))).values())).numpy()
                 for i in range(0, len(observations), batch)]
        return np.concatenate(parts)

    return outputs


def _converter(function: Any) -> Any:
    """A converter for one concrete function, straight from its frozen graph.

    ``experimental_lower_to_saved_model = False``: by default the converter first saves the
    function (and the model it belongs to) as a SavedModel and converts that, much slower for
    these small networks, with the same result.
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_concrete_functions([function])
    converter.experimental_lower_to_saved_model = False
    return converter


def convert_float32(entry: PolicyEntry, model: Any) -> bytes:
    """The float32 TFLite model: the original's outputs from the original's input."""
    return _converter(serving_function(entry, model)).convert()


def _int8(function: Any, samples: np.ndarray, float_input: bool, int_output: bool) -> bytes:
    import tensorflow as tf

    converter = _converter(function)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.representative_dataset = lambda: ([sample[None]] for sample in samples)
    if float_input:
        converter.inference_input_type = tf.int8
    if int_output:
        converter.inference_output_type = tf.int8
    return converter.convert()


def normalization_of(calibration: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The int8 input's feature scaling, measured on the calibration observations (None for
    integer observations, which the int8 model takes as they are)."""
    if not np.issubdtype(calibration.dtype, np.floating):
        return None
    return feature_scaling(calibration)


def described(normalization: tuple[np.ndarray, np.ndarray] | None) -> dict[str, list] | None:
    return None if normalization is None else {"center": [float(v) for v in normalization[0].ravel()],
                                               "scale": [float(v) for v in normalization[1].ravel()]}


def convert_int8(entry: PolicyEntry, model: Any, calibration: np.ndarray) -> Int8Model:
    """Post-training full-integer quantization of the original, calibrated on ``calibration``."""
    samples = calibration.astype(entry.observation_dtype)
    normalization, relative = normalization_of(samples), False
    function = serving_function(entry, model)
    if normalization is not None:
        samples = (samples - normalization[0]) / normalization[1]
        function = serving_function(entry, model, normalization)
        if entry.output == "q_values" and q_difference_layer(model) is not None:
            function, relative = q_difference_function(entry, model, normalization), True
    content = _int8(function, samples, normalization is not None, entry.output != "tf_agents_policy")
    return Int8Model(content=content, input_normalization=described(normalization),
                     output_kind=output_kind(entry), q_differences=relative,
                     outputs="Q(s, a) - Q(s, 0): the same argmax as the Q-values" if relative
                     else "as the original model")


def convert_decision_network(network: DecisionNetwork, calibration: np.ndarray,
                             normalization: tuple[np.ndarray, np.ndarray], teacher: DecisionNetwork) -> Int8Model:
    """A (fine-tuned) :class:`DecisionNetwork` as a full-integer int8 model, calibrated on the
    normalized ``calibration`` observations: dense layers, their activations and, with two
    actions, the clip to [-1, 1] (which the converter fuses into the last dense layer, so its
    output's steps span [-1, 1] only)."""
    import tensorflow as tf

    spec = tf.TensorSpec([None, network.layers[0].weights.shape[0]], tf.float32, name="observation")
    activations = {"linear": tf.identity, "relu": tf.nn.relu, "elu": tf.nn.elu, "tanh": tf.nn.tanh}
    layers = [(tf.constant(layer.weights), tf.constant(layer.bias), activations[layer.activation])
              for layer in network.layers]

    @tf.function(input_signature=[spec])
    def serve(observation: tf.Tensor) -> dict[str, tf.Tensor]:
        values = observation
        for weights, bias, activation in layers:
            values = activation(tf.matmul(values, weights) + bias)
        if network.clipped:
            values = tf.maximum(tf.minimum(values, 1.0), -1.0)
        return {"output": values}

    content = _int8(serve.get_concrete_function(), calibration.astype(np.float32), True, True)
    return Int8Model(content=content, input_normalization=described(normalization), output_kind=OUTPUT_KIND,
                     outputs=network.description(), teacher=teacher)


def action_pairs(n_actions: int) -> list[tuple[int, int]]:
    """The pairs (a, b), a < b, in the order of a pairwise-preference output."""
    return [(a, b) for a in range(n_actions) for b in range(a + 1, n_actions)]


@dataclass(frozen=True)
class PairwiseLayer:
    """The last layer of a Q-network's pairwise int8 model: one unit per pair (a, b), a < b, whose
    output is ``(Q(s, a) - Q(s, b)) / size`` (before the clip to [-1, 1])."""

    weights: np.ndarray  # (hidden units, pairs)
    bias: np.ndarray  # (pairs,)
    size: float  # the typical |Q(s, a) - Q(s, b)| the layer's outputs are divided by

    @property
    def n_actions(self) -> int:
        """n, from the n (n - 1) / 2 pairs."""
        return int(round((1 + np.sqrt(1 + 8 * self.weights.shape[1])) / 2))


def pairwise_layer(network: QNetwork, observations: np.ndarray, quantile: float) -> PairwiseLayer:
    """The Q-network's last layer as pairwise differences, divided by the ``quantile`` quantile of
    their size over ``observations`` (raw observations, as the network takes them)."""
    import tensorflow as tf

    pairs = action_pairs(network.n_actions)
    last = network.layers[-1]
    weights = np.stack([last.kernel[:, a] - last.kernel[:, b] for a, b in pairs], axis=1).astype(np.float32)
    bias = np.array([last.bias[a] - last.bias[b] for a, b in pairs], np.float32)
    hidden = hidden_layers(network)
    differences = np.concatenate([tf.matmul(hidden.q_values(tf.constant(observations[i:i + 256])), weights).numpy()
                                  + bias for i in range(0, len(observations), 256)])
    positive = np.abs(differences)[np.abs(differences) > 0]
    size = float(np.quantile(positive, quantile)) if len(positive) else 1.0
    return PairwiseLayer(weights / size, bias / size, size)


def hidden_layers(network: QNetwork) -> QNetwork:
    """The network without its last layer: observations -> the last hidden layer's outputs."""
    return QNetwork(divisor=network.divisor, layers=network.layers[:-1])


def wins_matrix(n_actions: int) -> np.ndarray:
    """(pairs, actions): +1 where the action is a of the pair (a, b), -1 where it is b."""
    pairs = action_pairs(n_actions)
    wins = np.zeros((len(pairs), n_actions), np.float32)
    for column, (a, b) in enumerate(pairs):
        wins[column, a], wins[column, b] = 1.0, -1.0
    return wins


def convert_pairwise(entry: PolicyEntry, network: QNetwork, calibration: np.ndarray, layer: PairwiseLayer,
                     teacher: PairwiseLayer | None = None) -> Int8Model:
    """A Q-network as a full-integer int8 model whose outputs are action preferences built from
    pairwise comparisons: for each action a, ``sum over b != a of clip((Q(s, a) - Q(s, b)) / d, -1, 1)``,
    ``d`` a typical size of ``|Q(s, a) - Q(s, b)|`` (:func:`pairwise_layer`; ``layer`` may be a
    fine-tuned copy of it, :func:`stages.pi_bundle.fine_tuning.fine_tune_pairwise_layer`, and ``teacher`` the
    layer whose float outputs it approximates). The greedy action of the Q-values has the largest
    preference (each of its terms is at least the matching term of any other action, and their own
    pair counts for it), so the runner's rule for action preferences (argmax) applies unchanged.

    Why: an int8 output spends its 256 steps on the whole range of what it outputs, and Atari
    Q-values span far more than the difference between the best two actions in most states, which
    then falls below one step. Each pair's difference is one linear function of the last hidden
    layer (weights ``W[:, a] - W[:, b]``, folded into one dense layer); clipped to the size of a
    typical difference, its steps resolve the close choices and only the sign of the far ones
    counts. A second dense layer with weights +-1 (exact in int8, :func:`wins_matrix`) sums them
    per action. What each step gained: docs/experiments/pi_bundle.md.
    """
    import tensorflow as tf

    observations = calibration.astype(entry.observation_dtype)
    normalization = normalization_of(observations)
    center, scale = normalization if normalization is not None else (0.0, 1.0)
    hidden = hidden_layers(network)
    wins = tf.constant(wins_matrix(network.n_actions))

    def preferences(batch: tf.Tensor, head: PairwiseLayer) -> tf.Tensor:
        pairwise = tf.matmul(hidden.q_values(batch), tf.constant(head.weights)) + tf.constant(head.bias)
        return tf.matmul(tf.clip_by_value(pairwise, -1.0, 1.0), wins)

    raw = tf.TensorSpec([None, *entry.observation_shape], tf.as_dtype(entry.observation_dtype))
    spec = tf.TensorSpec([None, *entry.observation_shape], tf.float32 if normalization is not None else raw.dtype,
                         name="observation")

    @tf.function(input_signature=[spec])
    def serve(observation: tf.Tensor) -> dict[str, tf.Tensor]:
        if normalization is not None:
            observation = observation * scale + center
        return {"output": preferences(observation, layer)}

    @tf.function(input_signature=[raw])
    def expected(observation: tf.Tensor) -> tf.Tensor:
        return preferences(observation, teacher or layer)

    samples = observations if normalization is None else (observations - center) / scale
    content = _int8(serve.get_concrete_function(), samples, normalization is not None, True)
    return Int8Model(content=content, input_normalization=described(normalization), output_kind=OUTPUT_KIND,
                     outputs=f"sum over b != a of clip((Q(s, a) - Q(s, b)) / {layer.size:.6g}, -1, 1): the same "
                             "argmax as the Q-values",
                     float_outputs=lambda batch: np.concatenate(
                         [expected(tf.constant(batch[i:i + 256].astype(entry.observation_dtype))).numpy()
                          for i in range(0, len(batch), 256)]))


def q_difference_function(entry: PolicyEntry, model: Any, normalization: tuple[np.ndarray, np.ndarray]) -> Any:
    """Normalized observations -> Q(s, a) - Q(s, 0), as one linear layer after the hidden ones."""
    import tensorflow as tf
    import tf_keras

    layer = q_difference_layer(model)
    hidden = tf_keras.Model(model.inputs, layer.input)
    weights, bias = layer.get_weights()
    weights, bias = tf.constant(weights - weights[:, :1]), tf.constant(bias - bias[:1])
    center, scale = normalization
    spec = tf.TensorSpec([None, *entry.observation_shape], tf.float32, name="observation")

    @tf.function(input_signature=[spec])
    def serve(observation: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"output": tf.matmul(hidden(observation * scale + center, training=False), weights) + bias}

    return serve.get_concrete_function()


def feature_scaling(observations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Center and half-range of each feature (1 for a feature that never varies): float32."""
    low, high = observations.min(axis=0), observations.max(axis=0)
    half_range = (high - low) / 2
    return ((high + low) / 2).astype(np.float32), np.where(half_range > 1e-6, half_range, 1.0).astype(np.float32)


def tensor_description(details: dict[str, Any]) -> dict[str, Any]:
    """dtype and shape of an interpreter tensor, with scale and zero point when it is quantized."""
    scale, zero_point = details["quantization"]
    quantized = scale != 0.0
    return {"dtype": np.dtype(details["dtype"]).name,
            "shape": [int(n) for n in details["shape_signature"]],
            "scale": float(scale) if quantized else None,
            "zero_point": int(zero_point) if quantized else None}


def describe_model(content: bytes) -> dict[str, dict[str, Any]]:
    """The input and output tensors of a TFLite model, as the manifest records them."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    return {"input": tensor_description(interpreter.get_input_details()[0]),
            "output": tensor_description(interpreter.get_output_details()[0])}


def largest_multiplier(content: bytes) -> float:
    """The largest requantization multiplier (input scale x weight scale / output scale) of the
    model's int8 fully-connected layers: XNNPACK, LiteRT's default CPU delegate, takes only
    models below 256 (ai-edge-litert 2.3.0 aborts the process above it)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_content=content,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    scales = {t["index"]: t["quantization_parameters"]["scales"] for t in interpreter.get_tensor_details()}
    largest = 0.0
    for op in interpreter._get_ops_details():
        if op["op_name"] == "FULLY_CONNECTED":
            data, weights = op["inputs"][:2]
            output = op["outputs"][0]
            if len(scales[data]) and len(scales[weights]) and len(scales[output]):
                largest = max(largest, float(np.max(scales[data][0] * scales[weights] / scales[output][0])))
    return largest

