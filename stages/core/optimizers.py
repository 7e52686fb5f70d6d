"""Keras optimizers by the names params.yaml uses (the Optimizer settings block)."""

from __future__ import annotations

import tf_keras

OPTIMIZERS = {
    "adam": tf_keras.optimizers.Adam,
    "nadam": tf_keras.optimizers.Nadam,
    "rmsprop": tf_keras.optimizers.RMSprop,
    "sgd": tf_keras.optimizers.SGD,
}


def make_optimizer(name: str, learning_rate: float) -> tf_keras.optimizers.Optimizer:
    """The optimizer ``name`` with this learning rate and Keras' defaults for everything else."""
    return OPTIMIZERS[name](learning_rate=learning_rate)
