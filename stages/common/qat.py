"""Quantization-aware fine-tuning: int8 policies that choose the actions the float ones choose.

Post-training quantization rounds a trained network's weights and activations to 8 bits and
hopes the policy survives. Greedy policies spend their episodes near their decision boundary
(balancing CartPole means switching between left and right), where the rounding flips close
choices: on the full profile's bundle only 6 of 56 int8 models kept 99% of the float actions, and
the prioritized dueling DQN's int8 model chose the float model's action in half of the states.

Here a copy of the network (same layers, same activations) is trained with the int8 model's
rounding in its forward pass, using TensorFlow's own fake-quantization ops
(``tf.quantization.fake_quant_with_min_max_vars`` and its per-channel form: the rounding,
clamping and zero-point nudging of TFLite's int8 kernels, with straight-through gradients), to
reproduce the float policy's choices on observations the float policy visits (distillation: the
float policy is the teacher). The trained float weights are then converted by the ordinary
full-integer converter, calibrated on the observations the training measured its ranges on, so the
int8 model rounds where the training rounded: the simulated and the converted model choose the
same action on 99.99% of held-out observations. No new dependency
(tensorflow-model-optimization is not needed for dense networks).

What the int8 model computes, and why (measured on the full profile's CartPole policies; the
numbers are in docs/experiments/pi_bundle.md):

- **Input**: each feature scaled to [-1, 1] over the calibration observations (center and scale
  in the manifest; the runner applies them), then rounded to int8: the finest grid an 8-bit input
  allows without clipping visited states. What it still costs is reported as the input-rounding
  agreement, a bound the int8 model cannot pass (it sees only the rounded input).
- **Weights**: symmetric int8, one scale per output unit (per channel), the converter's default
  for dense layers. Quantized after training, per-tensor scales did no better (0.9955 against
  0.996 action agreement for nn_policy, 0.50 against 0.50 for the prioritized dueling DQN; 0.935
  against 0.909 for the DQN), and per-channel scales leave each unit its own resolution to train.
- **Activations**: one asymmetric int8 range per tensor (per layer), min and max over the
  calibration observations, as the converter measures them; re-measured ``range_updates`` times
  while training as the weights move.
- **Output**: action preferences, ``z(s, a)`` minus its mean over actions, with ``z`` the
  Q-values, the logits of the action probabilities, or ``(logit, 0)`` for P(left): the argmax is
  the original's greedy action. Q-values near 76 whose differences are 0.01, and probabilities
  that saturate, spend an int8 output's 256 steps on what never changes the choice, and a softmax
  or sigmoid after the last layer would round a second time. With two actions only the sign of
  the difference counts: the preferences are divided by a decision scale (the
  ``output_quantile`` quantile of their size on the distillation observations, 0.5 by default)
  and clipped to [-1, 1] by the last dense layer's fused activation (RELU_N1_TO_1), so the
  output's steps resolve the close choices. Clipped at the 5% quantile instead, the last layer's
  requantization multiplier (input scale x weight scale / output scale) exceeded 256, which
  XNNPACK, LiteRT's default CPU delegate, does not take (the interpreter aborted); the weights
  are therefore clipped during training so that every unit stays below :data:`MULTIPLIER_BOUND`,
  and the stage checks the converted model.
- **Loss**: one-sided: the int8 preference must be at least as decided as the teacher's, on the
  teacher's side (a squared hinge at the teacher's preference); being more decided costs nothing.
- **Starting points**: from the float weights, and from fresh (Glorot) weights. The teacher's
  weights are the natural start, but a dueling DQN computes its small advantage differences by
  cancelling large terms (the prioritized one: Q near 76, differences near 0.01), and 8-bit
  weights cannot cancel: for that policy, rounding only the last layer's weights already drops
  the agreement to 0.49. Trained from the float weights it reached 0.95, from fresh weights 0.98.
  Each start keeps its best weights, by the simulated int8 model's agreement on the distillation
  observations (so the float weights' own int8 copy is never made worse); the stage ships the
  best of the starts and the post-training model on those observations.
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
    nodes = layer._inbound_nodes  # tf_keras keeps the functional graph here, Sequential models too
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


# --- fine-tuning ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FineTuningOptions:
    steps: int
    batch_size: int
    learning_rate: float
    range_updates: int
    seed: int


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

    def quantized_weights(kernel: tf.Variable) -> tf.Tensor:
        largest = tf.stop_gradient(tf.maximum(tf.reduce_max(tf.abs(kernel), axis=0), 1e-8))
        return tf.quantization.fake_quant_with_min_max_vars_per_channel(kernel, -largest, largest,
                                                                         num_bits=8, narrow_range=True)

    def int8_forward(observations: tf.Tensor) -> tf.Tensor:
        """The int8 model's arithmetic in float: what the runner will see (before the output's
        rounding, which the loss applies with a straight-through estimate)."""
        values = quantized(observations, 0)
        for index, layer in enumerate(network.layers):
            dense = tf.matmul(values, quantized_weights(kernels[index])) + biases[index]
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
    """The last hidden layer's outputs of a :class:`stages.common.q_network_graph.QNetwork` with
    the int8 model's rounding simulated in every layer before it: weights symmetric per output
    channel, activations (and a normalized float input) asymmetric per tensor over the
    ``calibration`` observations, as the converter measures them. What the pairwise layer of the
    int8 model (stages/common/tflite.py, ``convert_pairwise``) will see."""
    import tensorflow as tf

    def rounded_weights(kernel: np.ndarray) -> np.ndarray:
        step = np.maximum(np.abs(kernel).max(axis=tuple(range(kernel.ndim - 1)), keepdims=True), 1e-12) / 127
        return (np.round(kernel / step) * step).astype(np.float32)

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
            kernel = rounded_weights(layer.kernel)
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


def fine_tune_pairwise_layer(features: np.ndarray, calibration_features: np.ndarray, layer: Any,
                             labels: np.ndarray, options: FineTuningOptions) -> tuple[Any, float]:
    """The pairwise layer of a Q-network's int8 model (a ``stages.common.tflite.PairwiseLayer``)
    fine-tuned with its weight and output rounding in the loop; the rest of the network is kept.

    Why only this layer: simulating the int8 rounding of one part of the Atari network at a time
    (on the full profile's policies, held-out observations), rounding the pairwise layer's weights
    alone kept 96.2% of the actions (Breakout; Space Invaders 95.3%), the other layers' weights or
    activations each 98.3% to 99.9%. The layer computes small differences of large sums, which 127
    weight steps per unit render coarsely; trained with the rounding in its forward pass, it finds
    weights whose rounded sums keep the decisions (Breakout 95.6% -> 98.0% simulated, 3,000
    steps). Fine-tuning the convolutions as well would cost minutes per step batch on this machine.

    ``features``: :func:`int8_hidden_features` of the distillation observations; ``labels`` the
    float policy's actions there; the target is the layer's own float output (clipped to [-1, 1],
    squared error: the clip leaves the close choices the whole output range). The weights are kept
    below :data:`MULTIPLIER_BOUND`'s requantization multiplier; the best weights by simulated
    agreement (measured ``range_updates`` times) are returned, with that agreement.
    """
    import tensorflow as tf
    import tf_keras

    n_pairs = layer.weights.shape[1]
    n_actions = int(round((1 + np.sqrt(1 + 8 * n_pairs)) / 2))
    wins = np.zeros((n_pairs, n_actions), np.float32)  # as stages.common.tflite.wins_matrix
    for column, (a, b) in enumerate((a, b) for a in range(n_actions) for b in range(a + 1, n_actions)):
        wins[column, a], wins[column, b] = 1.0, -1.0
    wins = tf.constant(wins)
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
        size = tf.stop_gradient(tf.maximum(tf.reduce_max(tf.abs(kernel), axis=0), 1e-8))
        weights = tf.quantization.fake_quant_with_min_max_vars_per_channel(kernel, -size, size, num_bits=8,
                                                                           narrow_range=True)
        batch = tf.quantization.fake_quant_with_min_max_vars(batch, low, high, num_bits=8)
        return tf.quantization.fake_quant_with_min_max_vars(
            tf.clip_by_value(tf.matmul(batch, weights) + bias, -1.0, 1.0), -1.0, 1.0, num_bits=8)

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

    def measured() -> tuple[float, Any]:
        return float(simulated_agreement()), replace(layer, weights=kernel.numpy(), bias=bias.numpy())

    return train_keeping_the_best(train_steps, measured, len(features), options)
