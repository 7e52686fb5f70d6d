"""The Atari DQN agent's optimizer follows the book's (Keras) RMSprop rule."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from stages.atari_dqn import settings
from stages.atari_dqn.agent import rmsprop
from stages.core.settings import Params


def book_rmsprop_steps(gradients: np.ndarray, lr: float, rho: float, eps: float) -> np.ndarray:
    """Centered RMSprop without momentum, epsilon added to the root (Keras' rule, the book's)."""
    weights, ms, mg = np.zeros(gradients.shape[1]), np.zeros(gradients.shape[1]), np.zeros(gradients.shape[1])
    for grad in gradients:
        ms = rho * ms + (1 - rho) * grad**2
        mg = rho * mg + (1 - rho) * grad
        weights = weights - lr * grad / (np.sqrt(ms - mg**2) + eps)
    return weights


def test_rmsprop_adds_epsilon_to_the_root_as_the_book_does():
    # DQN's gradients are small (1e-4 .. 1e-6 per weight): with epsilon under the root (TF1's
    # RMSPropOptimizer) the steps shrink 10-300x and the agent barely learns in 50,000 iterations.
    agent_cfg = settings(["--game", "breakout"], Params.load()).agent
    scales = np.array([1e-2, 1e-4, 1e-6])
    gradients = np.array([[1.0, 1.0, 1.0], [-2.0, 0.5, 3.0], [0.5, -1.0, 1.0]]) * scales
    weights = tf.Variable(np.zeros(3, np.float32))
    optimizer = rmsprop(agent_cfg)
    for grad in gradients:
        optimizer.apply_gradients([(tf.constant(grad, tf.float32), weights)])
    expected = book_rmsprop_steps(gradients, agent_cfg.learning_rate, agent_cfg.rmsprop_rho,
                                  agent_cfg.rmsprop_epsilon)
    np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-4)
