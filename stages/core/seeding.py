"""One call seeds every random source a stage may use."""

from __future__ import annotations

import random
import sys

import numpy as np


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy's global state and TensorFlow (if loaded); return a fresh Generator.

    TensorFlow is only seeded when the stage has imported it, so tabular stages stay TF-free.
    With TensorFlow, op determinism is switched on too: same seed, same weights, same curve.
    """
    random.seed(seed)
    np.random.seed(seed)
    if "tensorflow" in sys.modules:
        import tensorflow as tf

        tf.keras.utils.set_random_seed(seed)
        tf.config.experimental.enable_op_determinism()
    return np.random.default_rng(seed)
