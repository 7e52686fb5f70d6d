"""Quantization-aware fine-tuning: int8 policies that choose the actions the float ones choose.

Post-training quantization rounds a trained network's weights and activations to 8 bits; greedy
policies spend their episodes near their decision boundary (balancing CartPole means switching
between left and right), where that rounding flips close choices. Here a copy of the network is
trained with the int8 model's rounding in its forward pass, using TensorFlow's own
fake-quantization ops (the rounding, clamping and zero-point nudging of TFLite's int8 kernels,
with straight-through gradients), to reproduce the float policy's choices on observations the
float policy visits (distillation: the float policy is the teacher). The trained float weights
are then converted by the ordinary full-integer converter, calibrated on the observations the
training measured its ranges on, so the int8 model rounds where the training rounded.

- **Weights**: symmetric int8, one scale per output unit (:func:`rounded_weights`), the
  converter's default for dense layers; each unit keeps its own resolution to train.
- **Activations**: one asymmetric int8 range per tensor, re-measured ``range_updates`` times
  while training as the weights move.
- **Loss**: for two actions one-sided: the int8 preference must be at least as decided as the
  teacher's, on the teacher's side (a squared hinge); being more decided costs nothing. Otherwise
  the squared error to the teacher's preferences.
- **Starting points**: the float weights, or fresh (Glorot) weights: a network that computes
  small differences by cancelling large terms (a dueling DQN) keeps doing so from its own
  weights, and 8-bit weights cannot cancel. Each start keeps its best weights by the simulated
  int8 model's agreement on the distillation observations.

:func:`fine_tune` trains a Keras policy's :class:`~stages.pi_bundle.decision_network.DecisionNetwork`;
:func:`fine_tune_pairwise_layer` the pairwise layer of a TF-Agents Q-network's int8 model
(:func:`stages.pi_bundle.tflite.convert_pairwise`), the rest of that network being rounded as the
converter will (:func:`int8_hidden_features`). Measurements: docs/experiments/pi_bundle.md.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from stages.pi_bundle.decision_network import (
    MULTIPLIER_BOUND,
    DecisionNetwork,
    Dense,
    tensor_ranges,
    tensor_slots,
)
from stages.pi_bundle.tflite import PairwiseLayer, wins_matrix


@dataclass(frozen=True)
class FineTuningOptions:
    steps: int
    batch_size: int
    learning_rate: float
    range_updates: int
    seed: int


def rounded_weights(kernel: Any) -> Any:
    """A kernel with its weights rounded as the int8 model rounds them while training: symmetric
    int8 (127 steps each side), one scale per output unit (the last axis), with a straight-through
    gradient (TensorFlow's per-channel fake quantization)."""
    import tensorflow as tf

    largest = tf.stop_gradient(tf.maximum(tf.reduce_max(tf.abs(kernel), axis=0), 1e-8))
    return tf.quantization.fake_quant_with_min_max_vars_per_channel(kernel, -largest, largest,
                                                                     num_bits=8, narrow_range=True)


def converter_rounded_weights(kernel: np.ndarray) -> np.ndarray:
    """A fixed kernel (dense or convolution) rounded as the converter rounds it: round(w / step)
    * step, ``step`` the largest |w| of its output channel (the last axis) over 127. It differs from
    :func:`rounded_weights` only on a weight that falls on a rounding tie."""
    step = np.maximum(np.abs(kernel).max(axis=tuple(range(kernel.ndim - 1)), keepdims=True), 1e-12) / 127
    return (np.round(kernel / step) * step).astype(np.float32)


def fine_tune(network: DecisionNetwork, training: np.ndarray, calibration: np.ndarray,
              options: FineTuningOptions, fresh: bool = False) -> tuple[DecisionNetwork, float]:
    """``network`` fine-tuned so that its int8 rounding reproduces its own float preferences.

    ``training``: normalized observations the float policy visits (the distillation set);
    ``calibration``: the normalized observations the converter will measure ranges on.
    After every step each layer's weights are clipped so that its requantization multiplier stays
    below :data:`MULTIPLIER_BOUND` (a network learning to resolve tiny preferences grows its last
    layer's weights without end otherwise). Deterministic for a given seed (op determinism is on
    in the stages).
    """
    import tensorflow as tf
    import tf_keras

    targets = network.preferences(training).astype(np.float32)
    if fresh:  # Glorot-uniform weights and zero biases, as Keras initializes a dense layer
        init = np.random.default_rng(options.seed)
        layers = []
        for layer in network.layers:
            fan_in, fan_out = layer.weights.shape
            limit = np.sqrt(6 / (fan_in + fan_out))
            layers.append(Dense(init.uniform(-limit, limit, layer.weights.shape).astype(np.float32),
                                np.zeros_like(layer.bias), layer.activation))
        network = replace(network, layers=tuple(layers))
    spread = float(np.std(targets)) if not network.clipped else 1.0
    spread = spread if spread > 1e-6 else 1.0
    kernels = [tf.Variable(layer.weights, name=f"kernel_{i}") for i, layer in enumerate(network.layers)]
    biases = [tf.Variable(layer.bias, name=f"bias_{i}") for i, layer in enumerate(network.layers)]
    ranges = [tf.Variable(r, dtype=tf.float32, trainable=False) for r in tensor_ranges(network, calibration)]
    slots = tensor_slots(network)
    activations = {"relu": tf.nn.relu, "elu": tf.nn.elu, "tanh": tf.nn.tanh}

    def quantized(values: tf.Tensor, index: int) -> tf.Tensor:
        return tf.quantization.fake_quant_with_min_max_vars(values, ranges[index][0], ranges[index][1],
                                                            num_bits=8, narrow_range=False)

    def int8_forward(observations: tf.Tensor) -> tf.Tensor:
        """The int8 model's arithmetic in float: what the runner will see (before the output's
        rounding, which the loss applies with a straight-through estimate)."""
        values = quantized(observations, 0)
        for index, layer in enumerate(network.layers):
            dense = tf.matmul(values, rounded_weights(kernels[index])) + biases[index]
            output = slots[index][1]
            if layer.activation == "linear":
                return dense
            if layer.activation == "relu":
                values = quantized(tf.nn.relu(dense), output)
            else:
                values = quantized(activations[layer.activation](quantized(dense, output)), output + 1)
        raise AssertionError("the last layer is linear")

    def step_of(index: int) -> tf.Tensor:
        return (ranges[index][1] - ranges[index][0]) / 255.0

    def bound_weights() -> None:
        """|w| <= bound * 127 * output step / input step: the multiplier of every unit below the bound."""
        for kernel, (inputs, output) in zip(kernels, slots):
            largest = MULTIPLIER_BOUND * 127.0 * step_of(output) / tf.maximum(step_of(inputs), 1e-12)
            kernel.assign(tf.clip_by_value(kernel, -largest, largest))

    output_slot = len(ranges) - 1

    def rounded_output(dense: tf.Tensor) -> tf.Tensor:
        """The output as the int8 model rounds it, with the gradient of ``dense`` everywhere (so a
        preference clipped on the wrong side is still pushed back)."""
        shown = tf.clip_by_value(dense, -1.0, 1.0) if network.clipped else dense
        return dense + tf.stop_gradient(quantized(shown, output_slot) - dense)

    def loss_of(outputs: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
        if network.clipped:  # one-sided: at least as decided as the teacher, on the teacher's side
            errors = tf.nn.relu(tf.abs(target) - tf.sign(target) * outputs)
        else:
            errors = (outputs - target) / spread
        return tf.reduce_mean(tf.square(errors))

    # The learning rate decays to zero (cosine): the last steps settle the close choices.
    schedule = tf_keras.optimizers.schedules.CosineDecay(options.learning_rate, max(1, options.steps))
    optimizer = tf_keras.optimizers.Adam(learning_rate=schedule)
    variables = [*kernels, *biases]
    optimizer.build(variables)

    def train_step(observations: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = loss_of(rounded_output(int8_forward(observations)), target)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        bound_weights()
        return loss

    def current() -> DecisionNetwork:
        layers = tuple(Dense(k.numpy(), b.numpy(), layer.activation)
                       for k, b, layer in zip(kernels, biases, network.layers))
        return replace(network, layers=layers)

    inputs = tf.constant(training.astype(np.float32))
    labels = tf.constant(np.argmax(targets, axis=1))
    teacher_outputs = tf.constant(targets)

    @tf.function(reduce_retracing=True)
    def train_steps(batches: tf.Tensor) -> None:
        """One step per row of ``batches`` (indices into the training observations), in one
        graph: a step is a fraction of a millisecond of arithmetic on these small networks, and
        calling a function once per step cost several times that."""
        for rows in batches:
            train_step(tf.gather(inputs, rows), tf.gather(teacher_outputs, rows))

    @tf.function
    def simulated_agreement() -> tf.Tensor:
        """Share of the training observations where the simulated int8 model (outputs rounded
        as the converter will round them) chooses the teacher's action."""
        outputs = quantized(tf.clip_by_value(int8_forward(inputs), -1.0, 1.0) if network.clipped
                            else int8_forward(inputs), output_slot)
        return tf.reduce_mean(tf.cast(tf.argmax(outputs, axis=1) == labels, tf.float32))

    def measured() -> tuple[float, DecisionNetwork]:
        """The current network with its ranges re-measured as the converter will, and its agreement."""
        network_now = current()
        for variable, measured_range in zip(ranges, tensor_ranges(network_now, calibration)):
            variable.assign(measured_range)
        return float(simulated_agreement()), network_now

    return train_keeping_the_best(train_steps, measured, len(training), options)


def train_keeping_the_best(train_steps: Any, measured: Any, rows: int, options: FineTuningOptions) -> tuple[Any, float]:
    """``options.steps`` steps of ``train_steps`` (called with a tensor of batches of row indices,
    ``range_updates`` times, one graph call each) and ``measured()`` (its agreement and the weights)
    after each call: the best weights and their agreement (the starting ones if none is better)."""
    import tensorflow as tf

    rng = np.random.default_rng(options.seed)
    batch = min(options.batch_size, rows)
    update_every = max(1, options.steps // options.range_updates)
    best = measured()
    done = 0
    while done < options.steps:  # up to the next measurement, in one call
        steps = min(update_every, options.steps - done)
        train_steps(tf.constant(np.stack([rng.choice(rows, size=batch, replace=False) for _ in range(steps)])))
        done += steps
        now = measured()
        if now[0] > best[0]:
            best = now
    return best[1], best[0]


# --- Q-networks read back from TF-Agents policies: the pairwise layer ------------------------


def int8_hidden_features(network: Any, observations: np.ndarray, calibration: np.ndarray,
                         normalization: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """The last hidden layer's outputs of a :class:`stages.pi_bundle.q_network_graph.QNetwork` with
    the int8 model's rounding simulated in every layer before it: weights symmetric per output
    channel, activations (and a normalized float input) asymmetric per tensor over the
    ``calibration`` observations, as the converter measures them. What the pairwise layer of the
    int8 model (:func:`stages.pi_bundle.tflite.convert_pairwise`) will see."""
    import tensorflow as tf

    def rounded(values: tf.Tensor, low: float, high: float) -> tf.Tensor:
        return tf.quantization.fake_quant_with_min_max_vars(values, min(low, 0.0), max(high, 0.0), num_bits=8)

    def forward(batch: np.ndarray, ranges: list[tuple[float, float]] | None) -> tuple[tf.Tensor, list]:
        measured = []
        values = tf.constant(batch)
        if normalization is not None:  # the runner feeds (x - center) / scale, rounded to int8
            center, scale = normalization
            normalized = (values - center) / scale
            measured.append((float(tf.reduce_min(normalized)), float(tf.reduce_max(normalized))))
            if ranges is not None:
                normalized = rounded(normalized, *ranges[0])
            values = normalized * scale + center
        values = tf.cast(values, tf.float32) / network.divisor
        for layer in network.layers[:-1]:
            kernel = converter_rounded_weights(layer.kernel)
            if layer.kind == "conv2d":
                values = tf.nn.conv2d(values, kernel, [1, *layer.strides, 1], layer.padding) + layer.bias
            else:
                if len(values.shape) > 2:
                    values = tf.reshape(values, [-1, int(np.prod(values.shape[1:]))])
                values = tf.matmul(values, kernel) + layer.bias
            if layer.relu:
                values = tf.nn.relu(values)
            measured.append((float(tf.reduce_min(values)), float(tf.reduce_max(values))))
            if ranges is not None:
                values = rounded(values, *ranges[len(measured) - 1])
        return values, measured

    _, ranges = forward(calibration, None)
    return np.concatenate([forward(observations[i:i + 256], ranges)[0].numpy()
                           for i in range(0, len(observations), 256)])


def fine_tune_pairwise_layer(features: np.ndarray, calibration_features: np.ndarray, layer: PairwiseLayer,
                             labels: np.ndarray, options: FineTuningOptions) -> tuple[PairwiseLayer, float]:
    """The pairwise layer of a Q-network's int8 model fine-tuned with its weight and output
    rounding in the loop; the rest of the network is kept.

    Why only this layer: it computes small differences of large sums, which 127 weight steps per
    unit render coarsely, and its weights' rounding costs more actions than any other layer's
    (docs/experiments/pi_bundle.md); trained with the rounding in its forward pass, it finds weights
    whose rounded sums keep the decisions. Fine-tuning the convolutions as well would cost minutes
    per batch of steps on a CPU.

    ``features``: :func:`int8_hidden_features` of the distillation observations; ``labels`` the
    float policy's actions there; the target is the layer's own float output (clipped to [-1, 1],
    squared error: the clip leaves the close choices the whole output range). The weights are kept
    below :data:`MULTIPLIER_BOUND`'s requantization multiplier; the best weights by simulated
    agreement (measured ``range_updates`` times) are returned, with that agreement.
    """
    import tensorflow as tf
    import tf_keras

    wins = tf.constant(wins_matrix(layer.n_actions))
    expected_actions = tf.constant(labels.astype(np.int64))
    inputs = tf.constant(features.astype(np.float32))
    targets = tf.constant(np.clip(features @ layer.weights + layer.bias, -1.0, 1.0).astype(np.float32))
    low = float(min(0.0, calibration_features.min()))
    high = float(max(0.0, calibration_features.max()))
    input_step = max((high - low) / 255.0, 1e-12)
    largest = MULTIPLIER_BOUND * 127.0 * (2.0 / 255.0) / input_step
    kernel = tf.Variable(np.clip(layer.weights, -largest, largest))
    bias = tf.Variable(layer.bias)

    def outputs(batch: tf.Tensor) -> tf.Tensor:
        batch = tf.quantization.fake_quant_with_min_max_vars(batch, low, high, num_bits=8)
        return tf.quantization.fake_quant_with_min_max_vars(
            tf.clip_by_value(tf.matmul(batch, rounded_weights(kernel)) + bias, -1.0, 1.0), -1.0, 1.0, num_bits=8)

    schedule = tf_keras.optimizers.schedules.CosineDecay(options.learning_rate, max(1, options.steps))
    optimizer = tf_keras.optimizers.Adam(learning_rate=schedule)
    optimizer.build([kernel, bias])

    @tf.function(reduce_retracing=True)
    def train_steps(batches: tf.Tensor) -> None:
        for rows in batches:
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(outputs(tf.gather(inputs, rows)) - tf.gather(targets, rows)))
            optimizer.apply_gradients(zip(tape.gradient(loss, [kernel, bias]), [kernel, bias]))
            kernel.assign(tf.clip_by_value(kernel, -largest, largest))

    @tf.function
    def simulated_agreement() -> tf.Tensor:
        chosen = tf.argmax(tf.matmul(outputs(inputs), wins), axis=1)
        return tf.reduce_mean(tf.cast(chosen == expected_actions, tf.float32))

    def measured() -> tuple[float, PairwiseLayer]:
        return float(simulated_agreement()), replace(layer, weights=kernel.numpy(), bias=bias.numpy())

    return train_keeping_the_best(train_steps, measured, len(features), options)
