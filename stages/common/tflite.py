"""Trained policies as TFLite models: float32, and full-integer int8 calibrated on observations.

Keras policies are converted as they are, so the TFLite model outputs what the Keras model does
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
decisions are made. The scaling is folded into the first layer's weights by the converter.

Q-values need one more step. A CartPole DQN's two Q-values are close to each other and far from 0
(about 20, or 100 with discount 0.99) and an int8 output has 256 steps over their whole range, so
two different Q-values often become one and argmax picks action 0. The int8 model therefore
outputs Q(s, a) - Q(s, 0), which has the same argmax: the subtraction is folded into the weights of
the last linear layer (for a dueling network, the advantages: Q(s, a) - Q(s, 0) = A(s, a) - A(s, 0)).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from stages.common.policies import PolicyEntry, load_model


@dataclass(frozen=True)
class TFLiteModels:
    float32: bytes
    int8: bytes
    output: str  # the output kind of the TFLite models (``action`` for TF-Agents policies)
    tensorflow_version: str
    # The int8 model's input is (observation - center) / scale, feature by feature (or None).
    int8_input_normalization: dict[str, list] | None
    # The int8 model outputs Q(s, a) - Q(s, 0) instead of Q(s, a) (same greedy action).
    int8_outputs_q_differences: bool


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


def convert(entry: PolicyEntry, model: Any, calibration: np.ndarray) -> TFLiteModels:
    """Both TFLite models of a policy; ``calibration`` holds the int8 representative observations."""
    import tensorflow as tf

    function = serving_function(entry, model)
    float_model = tf.lite.TFLiteConverter.from_concrete_functions([function], model).convert()

    samples, normalization, relative = calibration.astype(entry.observation_dtype), None, False
    if np.issubdtype(samples.dtype, np.floating):
        normalization = feature_scaling(samples)
        samples = (samples - normalization[0]) / normalization[1]
        function = serving_function(entry, model, normalization)
        if entry.output == "q_values" and q_difference_layer(model) is not None:
            function, relative = q_difference_function(entry, model, normalization), True
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.representative_dataset = lambda: ([sample[None]] for sample in samples)
    if normalization is not None:
        converter.inference_input_type = tf.int8
    if entry.output != "tf_agents_policy":
        converter.inference_output_type = tf.int8
    int8_model = converter.convert()
    return TFLiteModels(
        float32=float_model, int8=int8_model, output=output_kind(entry),
        tensorflow_version=tf.__version__, int8_outputs_q_differences=relative,
        int8_input_normalization=None if normalization is None else {
            "center": [float(v) for v in normalization[0].ravel()],
            "scale": [float(v) for v in normalization[1].ravel()]})


def q_difference_layer(model: Any) -> Any | None:
    """The linear layer whose outputs differ across actions exactly as the Q-values do."""
    names = [layer.name for layer in model.layers]
    for name in ("advantages", "q_values"):
        if name in names:
            layer = model.get_layer(name)
            if layer.__class__.__name__ == "Dense" and layer.get_config()["activation"] == "linear":
                return layer
    return None


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
