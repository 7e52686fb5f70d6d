"""A TF-Agents greedy Q-policy's network, read back from its SavedModel as plain layers.

A policy saved with TF-Agents' ``PolicySaver`` keeps its Q-network's variables but not the
network as an object: what is left is the ``action`` function's graph, in which the network
computes its Q-values and an ``ArgMax`` picks the action. The Pi bundle needs the Q-values
themselves (its int8 model outputs their pairwise differences, stages/pi_bundle/tflite.py), so this
module walks that graph from the ``ArgMax`` back to the observation and rebuilds the layers it
recognises: the preprocessing of ``EncodingNetwork`` (a cast and a division by a constant),
``Conv2D`` with its strides and padding, the flatten, and dense layers, each with ReLU or no
activation; the variables give the weights.

A dueling head, ``V(s) + A(s, a) - mean over a' of A(s, a')`` (stages/atari_dqn/agent.py), is
read as its advantage layer alone: its outputs differ from the Q-values by one number per
observation, so the greedy action and every difference between two actions' Q-values, which is
all the Pi bundle uses, are the same. Anything else (another activation, batch normalisation) is
refused with :class:`UnreadableNetwork`: the caller then quantizes the whole saved graph after
training as before. Written here because neither TF-Agents nor TensorFlow rebuild a network from a saved
policy; and a rebuilt network is checked against the saved policy's own actions before use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


class UnreadableNetwork(Exception):
    """The saved policy's graph is not a Q-network this module knows how to rebuild."""


@dataclass(frozen=True)
class Layer:
    kind: str  # "conv2d" or "dense"
    kernel: np.ndarray
    bias: np.ndarray
    relu: bool
    strides: tuple[int, int] = (1, 1)
    padding: str = "VALID"


@dataclass(frozen=True)
class QNetwork:
    """Observations -> Q-values up to one constant per observation: ``observation / divisor``
    (cast to float32), the layers in order, flattened before the first dense layer. The constant
    is 0 but for a dueling head (``dueling``), whose advantage layer is the last layer here."""

    divisor: float
    layers: tuple[Layer, ...]
    dueling: bool = False

    @property
    def n_actions(self) -> int:
        return int(self.layers[-1].kernel.shape[1])

    def q_values(self, observations: Any) -> Any:
        """The Q-values as TensorFlow computes them (usable inside a ``tf.function``)."""
        import tensorflow as tf

        values = tf.cast(observations, tf.float32) / self.divisor
        for layer in self.layers:
            if layer.kind == "conv2d":
                values = tf.nn.conv2d(values, layer.kernel, [1, *layer.strides, 1], layer.padding) + layer.bias
            else:
                if len(values.shape) > 2:
                    values = tf.reshape(values, [-1, int(np.prod(values.shape[1:]))])
                values = tf.matmul(values, layer.kernel) + layer.bias
            if layer.relu:
                values = tf.nn.relu(values)
        return values


def _action_function(graph_def: Any) -> Any:
    with_argmax = [f for f in graph_def.library.function if any(n.op == "ArgMax" for n in f.node_def)]
    if len(with_argmax) != 1:
        raise UnreadableNetwork(f"expected one function with an ArgMax in the saved policy, found {len(with_argmax)}")
    return with_argmax[0]


def _producer(name: str) -> str:
    """The node that produces a function-graph input such as ``'dense/BiasAdd:output:0'``."""
    return name.split(":")[0].lstrip("^")


def read_q_network(saved_policy: Any) -> QNetwork:
    """The Q-network of a loaded TF-Agents saved greedy policy (``tf.saved_model.load``)."""
    import tensorflow as tf

    if "action" not in getattr(saved_policy, "signatures", {}):
        raise UnreadableNetwork("the saved policy has no 'action' signature")
    function = _action_function(saved_policy.signatures["action"].graph.as_graph_def())
    nodes = {node.name: node for node in function.node_def}
    variables = {v.name.rsplit(":", 1)[0]: v.numpy() for v in saved_policy.model_variables}

    def before(node: Any, slot: int = 0) -> Any | None:
        """The node feeding ``node``'s input ``slot`` (None: the function's own input)."""
        return nodes.get(_producer(node.input[slot]))

    def variable(prefix: str, name: str) -> np.ndarray:
        if f"{prefix}/{name}" not in variables:
            raise UnreadableNetwork(f"no variable {prefix}/{name} in the saved policy")
        return variables[f"{prefix}/{name}"]

    layers: list[Layer] = []
    node = before(next(n for n in function.node_def if n.op == "ArgMax"))
    dueling = node is not None and node.op == "Sub"
    if dueling:
        node = _advantage_of_dueling_head(node, before)
    divisor = 1.0
    while node is not None:
        relu = node.op == "Relu"
        if relu:
            node = before(node)
        if node is None or node.op != "BiasAdd":
            raise UnreadableNetwork(f"expected a BiasAdd, found {node and node.op} in the Q-network")
        product = before(node)
        prefix = node.name.rsplit("/", 1)[0]
        if product is not None and product.op == "Conv2D":
            strides = tuple(int(s) for s in product.attr["strides"].list.i)
            if strides[0] != 1 or strides[3] != 1:
                raise UnreadableNetwork(f"{product.name}: strides {strides} over batch or channels")
            layers.append(Layer("conv2d", variable(prefix, "kernel"), variable(prefix, "bias"), relu,
                                strides[1:3], product.attr["padding"].s.decode()))
        elif product is not None and product.op == "MatMul":
            if product.attr["transpose_a"].b or product.attr["transpose_b"].b:
                raise UnreadableNetwork(f"{product.name}: a transposed MatMul")
            layers.append(Layer("dense", variable(prefix, "kernel"), variable(prefix, "bias"), relu))
        else:
            raise UnreadableNetwork(f"expected a Conv2D or MatMul before {node.name}")
        node = before(product)
        if node is not None and node.op == "Reshape":  # the flatten before the first dense layer
            node = before(node)
        if node is not None and node.op == "RealDiv":  # EncodingNetwork's preprocessing
            constant = before(node, 1)
            if constant is None or constant.op != "Const":
                raise UnreadableNetwork(f"{node.name} divides by something other than a constant")
            divisor = float(tf.make_ndarray(constant.attr["value"].tensor))
            node = before(node)
        if node is not None and node.op == "Cast":  # the observation as float32
            node = before(node)
            if node is not None:
                raise UnreadableNetwork(f"unexpected {node.op} node {node.name} before the network's input")
    if not layers or layers[0].kind != "dense":
        raise UnreadableNetwork("the Q-values do not come from a dense layer")
    return QNetwork(divisor=divisor, layers=tuple(reversed(layers)), dueling=dueling)


def _advantage_of_dueling_head(subtraction: Any, before: Any) -> Any:
    """The advantage layer's BiasAdd of ``(value + advantage) - mean(advantage)``; the value
    layer (one output) is dropped, as it adds the same to every action's Q-value."""
    total, mean = before(subtraction, 0), before(subtraction, 1)
    if mean is None or mean.op != "Mean" or total is None or total.op not in ("AddV2", "Add"):
        raise UnreadableNetwork(f"{subtraction.name}: a subtraction that is not a dueling head's "
                                "(value + advantage) - mean(advantage)")
    advantage = before(mean)
    terms = {_producer(name) for name in total.input[:2]}
    if advantage is None or advantage.op != "BiasAdd" or advantage.name not in terms:
        raise UnreadableNetwork(f"{subtraction.name}: the mean is not over one of the summed layers")
    value = before(total, 0) if before(total, 1) is advantage else before(total, 1)
    if value is None or value.op != "BiasAdd":
        raise UnreadableNetwork(f"{subtraction.name}: the value V(s) is not a dense layer's output")
    return advantage
