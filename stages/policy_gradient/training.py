"""Policy-gradient machinery shared by the CartPole and LunarLander stages.

The book plays one environment step per ``GradientTape`` and, after the iteration's episodes,
averages the per-step gradients, each weighted by its step's normalised discounted return. A
gradient is linear, so that average is the gradient of the weighted mean of the per-step losses.
Here an iteration's episodes are played side by side instead (one forward pass per step for all
running environments, no tape), and the update is one batched gradient over every step played:
the same update, with one tape per iteration instead of one per step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import tensorflow as tf
import tf_keras
from tqdm import tqdm

from stages.core.optimizers import make_optimizer
from stages.policies.index import actions_from_outputs
from stages.core.live_log import TrainingLive

if TYPE_CHECKING:
    from stages.policy_gradient.settings import Reinforce

BatchActor = Callable[[np.ndarray], np.ndarray]


# --- returns ----------------------------------------------------------------------------------


def discount_rewards(rewards: Sequence[float], discount: float) -> np.ndarray:
    """Each step's discounted return: its reward plus the discounted return of the next step."""
    returns = np.array(rewards, dtype=np.float64)
    for step in range(len(returns) - 2, -1, -1):
        returns[step] += discount * returns[step + 1]
    return returns


def discount_and_normalize_rewards(all_rewards: Sequence[Sequence[float]],
                                   discount: float) -> list[np.ndarray]:
    """Discounted returns of several episodes, standardised together over all of their steps.

    Standardising makes the better half of the steps' actions more likely and the worse half less
    likely, whatever the scale of the rewards. A batch whose returns are all equal carries no
    preference, and gets weights of zero instead of a division by zero.
    """
    all_returns = [discount_rewards(rewards, discount) for rewards in all_rewards]
    flat = np.concatenate(all_returns)
    mean, std = flat.mean(), flat.std()
    return [(returns - mean) / (std if std > 0 else 1.0) for returns in all_returns]


# --- the network ------------------------------------------------------------------------------


def policy_network(observation_size: int, hidden_units: Sequence[int], activation: str,
                   output: str, n_actions: int) -> tf_keras.Model:
    """A dense policy: P(left) from one sigmoid unit (``p_left``) or a softmax over actions."""
    layers = [tf_keras.Input(shape=(observation_size,))]
    layers += [tf_keras.layers.Dense(units, activation=activation) for units in hidden_units]
    if output == "p_left":
        layers.append(tf_keras.layers.Dense(1, activation="sigmoid"))
    elif output == "action_probabilities":
        layers.append(tf_keras.layers.Dense(n_actions, activation="softmax"))
    else:
        raise ValueError(f"a policy network outputs p_left or action_probabilities, not {output!r}")
    return tf_keras.Sequential(layers)


def sampling_actor(model: tf_keras.Model, output: str, rng: np.random.Generator) -> BatchActor:
    """Actions sampled from the model's current outputs, by the rule the exported policy uses."""

    @tf.function(reduce_retracing=True)
    def outputs(observations: tf.Tensor) -> tf.Tensor:
        return model(observations, training=False)

    def act(observations: np.ndarray) -> np.ndarray:
        return actions_from_outputs(output, outputs(tf.constant(observations, tf.float32)).numpy(), rng)

    return act


# --- playing episodes -------------------------------------------------------------------------


@dataclass(frozen=True)
class Episode:
    observations: np.ndarray  # [steps, *observation_shape], the observation each action saw
    actions: np.ndarray  # [steps]
    rewards: np.ndarray  # [steps]

    @property
    def total_reward(self) -> float:
        return float(self.rewards.sum())


def play_episodes(envs: Sequence[gym.Env], act: BatchActor,
                  seeds: Sequence[int] | None = None) -> list[Episode]:
    """One episode per environment, all stepped together with one ``act`` call per step.

    With ``seeds`` environment ``i`` is reset with ``seeds[i]``; without, it continues its own
    random stream, so consecutive calls play fresh but reproducible episodes.
    """
    if seeds is not None and len(seeds) != len(envs):
        raise ValueError(f"{len(seeds)} seeds for {len(envs)} environments")
    observations = [env.reset(seed=None if seeds is None else int(seeds[i]))[0]
                    for i, env in enumerate(envs)]
    trajectories: list[dict[str, list]] = [{"obs": [], "actions": [], "rewards": []} for _ in envs]
    running = list(range(len(envs)))
    while running:
        batch = np.stack([observations[i] for i in running])
        actions = act(batch)
        still_running = []
        for i, observation, action in zip(running, batch, actions):
            next_observation, reward, terminated, truncated, _ = envs[i].step(int(action))
            trajectories[i]["obs"].append(observation)
            trajectories[i]["actions"].append(int(action))
            trajectories[i]["rewards"].append(float(reward))
            observations[i] = next_observation
            if not (terminated or truncated):
                still_running.append(i)
        running = still_running
    return [Episode(observations=np.asarray(t["obs"], dtype=np.float32),
                    actions=np.asarray(t["actions"], dtype=np.int64),
                    rewards=np.asarray(t["rewards"], dtype=np.float64)) for t in trajectories]


# --- the update -------------------------------------------------------------------------------


def negative_log_likelihood(output: str, model_outputs: tf.Tensor, actions: tf.Tensor) -> tf.Tensor:
    """Per step, the cross-entropy with the action taken as the target: -log pi(action | state).

    For ``p_left`` the target is 1 - action (P(left) should be 1 when the action was left), the
    book's binary cross-entropy; for a softmax it is the sparse categorical cross-entropy.
    """
    if output == "p_left":
        targets = 1.0 - tf.cast(tf.reshape(actions, (-1, 1)), model_outputs.dtype)
        return tf_keras.losses.binary_crossentropy(targets, model_outputs)
    return tf_keras.losses.sparse_categorical_crossentropy(actions, model_outputs)


def entropy(output: str, model_outputs: tf.Tensor) -> tf.Tensor:
    """Per step, the entropy of the action distribution (its bonus keeps exploration alive)."""
    eps = tf_keras.backend.epsilon()
    if output == "p_left":
        p = tf.clip_by_value(tf.reshape(model_outputs, (-1,)), eps, 1.0 - eps)
        return -(p * tf.math.log(p) + (1.0 - p) * tf.math.log(1.0 - p))
    p = tf.clip_by_value(model_outputs, eps, 1.0)
    return -tf.reduce_sum(p * tf.math.log(p), axis=-1)


def policy_gradient_loss(model: tf_keras.Model, output: str, observations: tf.Tensor,
                         actions: tf.Tensor, weights: tf.Tensor,
                         entropy_coefficient: float = 0.0) -> tf.Tensor:
    """Mean over steps of weight x -log pi(action | state), less an optional entropy bonus.

    Its gradient is the mean of the per-step gradients the book weights one by one.
    """
    model_outputs = model(observations, training=True)
    loss = tf.reduce_mean(weights * negative_log_likelihood(output, model_outputs, actions))
    if entropy_coefficient:
        loss -= entropy_coefficient * tf.reduce_mean(entropy(output, model_outputs))
    return loss


def make_train_step(model: tf_keras.Model, optimizer: tf_keras.optimizers.Optimizer, output: str,
                    entropy_coefficient: float = 0.0) -> Callable[..., tf.Tensor]:
    """One compiled update over a whole batch of steps; returns the loss before the update."""
    observation_shape = tuple(model.input_shape[1:])

    @tf.function(input_signature=[tf.TensorSpec((None, *observation_shape), tf.float32),
                                  tf.TensorSpec((None,), tf.int64),
                                  tf.TensorSpec((None,), tf.float32)])
    def train_step(observations: tf.Tensor, actions: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = policy_gradient_loss(model, output, observations, actions, weights,
                                        entropy_coefficient)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    return train_step


def batch_of(episodes: Sequence[Episode], weights: Sequence[np.ndarray]) -> dict[str, Any]:
    """Every step of the episodes as one batch of tensors for :func:`make_train_step`."""
    return {
        "observations": tf.constant(np.concatenate([e.observations for e in episodes]), tf.float32),
        "actions": tf.constant(np.concatenate([e.actions for e in episodes]), tf.int64),
        "weights": tf.constant(np.concatenate(weights), tf.float32),
    }


# --- REINFORCE --------------------------------------------------------------------------------


def train_reinforce(cfg: Reinforce, output: str, rng: np.random.Generator,
                    desc: str, log_folder: str) -> tuple[tf_keras.Model, TrainingLive]:
    """REINFORCE: play a batch of episodes, weight each step by its normalised return, update.

    ``cfg`` is a REINFORCE run's settings (stages/policy_gradient/settings.py), ``output`` the
    policy's output kind, and ``rng`` samples the actions. Environment ``i`` first resets with
    ``cfg.training.env_seeds[i]``, then continues its own random stream. The history goes to the
    DVCLive folder ``log_folder``, one step per iteration: the batch's mean return and the loss.
    """
    training = cfg.training
    envs = [gym.make(cfg.env_id, max_episode_steps=cfg.max_steps)
            for _ in range(training.episodes_per_iteration)]
    observation_size = envs[0].observation_space.shape[0]
    model = policy_network(observation_size, cfg.network.hidden_units, cfg.network.activation,
                           output, int(envs[0].action_space.n))
    train_step = make_train_step(model, make_optimizer(cfg.optimizer.name, cfg.optimizer.learning_rate),
                                 output, training.entropy_coefficient)
    act = sampling_actor(model, output, rng)
    log = TrainingLive(log_folder, "iteration")
    with tqdm(range(training.iterations), desc=desc, unit="iteration", mininterval=1.0) as bar:
        for iteration in bar:
            episodes = play_episodes(envs, act, list(training.env_seeds) if iteration == 0 else None)
            weights = discount_and_normalize_rewards([e.rewards for e in episodes], training.discount)
            loss = train_step(**batch_of(episodes, weights))
            mean_return = float(np.mean([e.total_reward for e in episodes]))
            log.log(iteration, mean_return=mean_return, loss=float(loss))
            bar.set_postfix(mean_return=f"{mean_return:.1f}", refresh=False)
    for env in envs:
        env.close()
    log.close()
    return model, log
