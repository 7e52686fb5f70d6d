"""Q-networks and the compiled calls a deep Q-learning loop makes: act greedily, learn a batch.

The book calls ``model.predict`` at every environment step and builds targets in NumPy; each
predict call sets up a whole input pipeline, which costs far more than the network itself. Here
acting and learning are two ``tf.function`` calls compiled with XLA, taking and returning small
arrays, so a CartPole step costs well under a millisecond.

One learner covers the chapter's variants through two switches:

- the bootstrap network: the online network itself (the book's DQN) or a target network that is
  a periodically refreshed copy of it;
- double Q-learning: the online network picks the next action and the bootstrap network values
  it, instead of the bootstrap network taking its own maximum.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tf_keras

from stages.core.optimizers import make_optimizer
from stages.replay import Batch

LOSSES = ("mse", "huber")


def build_q_network(observation_size: int, n_actions: int, hidden_units: Sequence[int], *,
                    activation: str, dueling: bool) -> tf_keras.Model:
    """Dense hidden layers (the book's: ELU), then one linear Q-value per action.

    Dueling: a state value V (one unit) and advantages A (one per action) share the hidden
    layers; Q = V + A - max(A), so the greedy action's advantage is zero and V is its value.
    Built from standard layers and TensorFlow ops only, so the saved model loads without code.
    """
    observations = tf_keras.layers.Input(shape=(observation_size,), name="observation")
    hidden = observations
    for index, units in enumerate(hidden_units, start=1):
        hidden = tf_keras.layers.Dense(units, activation=activation, name=f"hidden_{index}")(hidden)
    if not dueling:
        q_values = tf_keras.layers.Dense(n_actions, name="q_values")(hidden)
        return tf_keras.Model(observations, q_values, name="q_network")
    state_value = tf_keras.layers.Dense(1, name="state_value")(hidden)
    advantages = tf_keras.layers.Dense(n_actions, name="advantages")(hidden)
    q_values = state_value + (advantages - tf.reduce_max(advantages, axis=1, keepdims=True))
    return tf_keras.Model(observations, q_values, name="dueling_q_network")


def elementwise_loss(kind: str, errors: tf.Tensor) -> tf.Tensor:
    """Squared error, or Huber with delta 1 (quadratic within 1, linear beyond), per sample."""
    if kind == "mse":
        return tf.square(errors)
    if kind == "huber":
        absolute = tf.abs(errors)
        return tf.where(absolute <= 1.0, 0.5 * tf.square(errors), absolute - 0.5)
    raise ValueError(f"unknown loss {kind!r}: expected one of {', '.join(LOSSES)}")


class DeepQLearner:
    """The online network, its optional target copy, the optimizer, and the two compiled calls."""

    def __init__(self, online: tf_keras.Model, *, optimizer: str, learning_rate: float, loss: str,
                 discount: float, target_network: bool, double: bool) -> None:
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}: expected one of {', '.join(LOSSES)}")
        if double and not target_network:
            raise ValueError("double Q-learning needs a target network to value the online network's choice")
        self.online = online
        self.target = tf_keras.models.clone_model(online) if target_network else None
        self.optimizer = make_optimizer(optimizer, learning_rate)
        self.loss = loss
        self.discount = discount
        self.double = double
        self.sync_target()
        observation_spec = tf.TensorSpec([None, *online.input_shape[1:]], tf.float32)
        self._greedy_actions = tf.function(self._greedy_actions_graph, jit_compile=True,
                                           input_signature=[observation_spec])
        vector = tf.TensorSpec([None], tf.float32)
        self._learn = tf.function(self._learn_graph, jit_compile=True, input_signature=[
            observation_spec, tf.TensorSpec([None], tf.int64), vector, observation_spec, vector, vector])

    def sync_target(self) -> None:
        """Copy the online weights into the target network (no-op without one)."""
        if self.target is not None:
            self.target.set_weights(self.online.get_weights())

    def greedy_action(self, observation: np.ndarray) -> int:
        return int(self._greedy_actions(np.asarray(observation, dtype=np.float32)[None])[0])

    def learn(self, batch: Batch) -> tuple[float, np.ndarray]:
        """One gradient step on ``batch``; returns the loss and each sample's TD error."""
        loss, td_errors = self._learn(batch.observations.astype(np.float32, copy=False),
                                      batch.actions, batch.rewards,
                                      batch.next_observations.astype(np.float32, copy=False),
                                      batch.terminated, batch.weights)
        return float(loss), td_errors.numpy()

    def _greedy_actions_graph(self, observations: tf.Tensor) -> tf.Tensor:
        return tf.argmax(self.online(observations), axis=1)

    def targets(self, rewards: tf.Tensor, next_observations: tf.Tensor,
                terminated: tf.Tensor) -> tf.Tensor:
        """r + discount * Q(s', a'), with no bootstrapping past a terminal state."""
        bootstrap = self.target if self.target is not None else self.online
        next_q = bootstrap(next_observations)
        if self.double:
            next_actions = tf.argmax(self.online(next_observations), axis=1)
            next_values = tf.gather(next_q, next_actions, batch_dims=1)
        else:
            next_values = tf.reduce_max(next_q, axis=1)
        return rewards + self.discount * (1.0 - terminated) * next_values

    def _learn_graph(self, observations, actions, rewards, next_observations, terminated, weights):
        targets = tf.stop_gradient(self.targets(rewards, next_observations, terminated))
        with tf.GradientTape() as tape:
            q_taken = tf.gather(self.online(observations), actions, batch_dims=1)
            td_errors = targets - q_taken
            loss = tf.reduce_mean(weights * elementwise_loss(self.loss, td_errors))
        variables = self.online.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss, td_errors
