"""Advantage actor-critic (A2C) on a discrete-action environment, once per configuration and seed.

    python -m stages.a2c --config cartpole --seed 0

Built on the project's batched policy-gradient machinery (stages/policy_gradient/training.py)
rather than on TF-Agents: A2C is REINFORCE with two changes, and written this way the two
changes are all that is new. The policy is the same softmax network (so it exports, evaluates
and converts for the Pi exactly as REINFORCE's does) and actions are drawn by the same rule;
what changes is that (1) a second network learns the state value V(s), and (2) each step's
weight is no longer its normalised return over a whole episode but its n-step bootstrapped
advantage, ``r_t + g r_{t+1} + ... + g^n V(s_{t+n}) - V(s_t)``, computed every
``steps_per_rollout`` steps of ``environments`` environments stepped together
(stages/policy_gradient/rollouts.py; the networks are evaluated there by a NumPy copy of their weights,
refreshed after each update, as a TensorFlow call per step would cost more than the arithmetic). TF-Agents has no A2C agent; assembling one from its parts would
hide those two changes behind its trajectory plumbing.

The loss is RL Zoo's (Stable-Baselines3's A2C): ``-mean(A log pi(a|s)) - c_H mean(H(pi)) +
c_V mean((R - V(s))^2)`` with the advantages not normalised, gradients clipped to a global norm,
and, where the optimizer is ``rmsprop``, Stable-Baselines3's RMSprop (decay 0.99, epsilon 1e-5
added to the root of the mean square; Keras adds its epsilon under the root, hence 1e-10 there).
Both networks start as Stable-Baselines3's do: orthogonal weights with gain sqrt(2) in the hidden
layers, 0.01 in the policy's output layer (a near-uniform first policy) and 1 in the value's,
zero biases.

The policy is ``a2c_<config>_s<seed>`` in the index (a softmax, ``action_probabilities``); the
training history is DVCLive's, in ``data/a2c/<config>/s<seed>/dvclive``, one step per logged
rollout named ``environment_steps`` (``mean_return`` of the last 20 training episodes, the
losses and the entropy).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import tf_keras
from tqdm import tqdm

from stages.a2c import Run, settings
from stages.policy_gradient.actor_critic import STEP, export_and_report
from stages.core.live_log import TrainingLive
from stages.core.optimizers import make_optimizer
from stages.policies.index import actions_from_outputs
from stages.policy_gradient.training import entropy, negative_log_likelihood, policy_network
from stages.policy_gradient.rollouts import NumpyMlp, SteppedEnvs, advantages, collect, softmax
from stages.core.seeding import seed_everything
from stages.core.settings import Params, run_stage

NAME = "a2c"
OUTPUT = "action_probabilities"


def value_network(observation_size: int, hidden_units: list[int], activation: str) -> tf_keras.Model:
    """V(s): the policy network's hidden layers, one linear output."""
    layers = [tf_keras.Input(shape=(observation_size,))]
    layers += [tf_keras.layers.Dense(units, activation=activation) for units in hidden_units]
    return tf_keras.Sequential([*layers, tf_keras.layers.Dense(1)])


# Stable-Baselines3's A2C optimizer is PyTorch's RMSprop(alpha=0.99, eps=1e-5), which divides by
# sqrt(mean square) + eps; Keras divides by sqrt(mean square + epsilon). epsilon = eps**2 matches
# it wherever the root is not far below eps. (epsilon = 1e-5 under the root acts as about 3e-3
# outside it: it damped every small gradient's step, and a LunarLander run learned far less.)
SB3_RMSPROP_EPSILON = 1e-5 ** 2


def optimizer_for(cfg: Run) -> tf_keras.optimizers.Optimizer:
    if cfg.optimizer.name == "rmsprop":
        return tf_keras.optimizers.RMSprop(cfg.optimizer.learning_rate, rho=0.99, epsilon=SB3_RMSPROP_EPSILON)
    return make_optimizer(cfg.optimizer.name, cfg.optimizer.learning_rate)


def orthogonal_start(model: tf_keras.Model, output_gain: float, seed: int) -> tf_keras.Model:
    """Stable-Baselines3's starting weights: orthogonal kernels, gain sqrt(2) in hidden layers and
    ``output_gain`` in the last, zero biases; each layer's draw seeded from ``seed``."""
    dense = [layer for layer in model.layers if isinstance(layer, tf_keras.layers.Dense)]
    for index, layer in enumerate(dense):
        gain = output_gain if index == len(dense) - 1 else float(np.sqrt(2.0))
        start = tf_keras.initializers.Orthogonal(gain=gain, seed=seed + index)
        layer.kernel.assign(start(layer.kernel.shape))
        layer.bias.assign(tf.zeros_like(layer.bias))
    return model


def make_update(actor: tf_keras.Model, critic: tf_keras.Model, optimizer: tf_keras.optimizers.Optimizer,
                cfg: Run) -> Callable[..., dict[str, tf.Tensor]]:
    """One compiled A2C update on a rollout's steps; returns the loss terms before it."""
    training = cfg.training
    variables = actor.trainable_variables + critic.trainable_variables
    size = actor.input_shape[1]

    @tf.function(input_signature=[tf.TensorSpec((None, size), tf.float32), tf.TensorSpec((None,), tf.int64),
                                  tf.TensorSpec((None,), tf.float32), tf.TensorSpec((None,), tf.float32)])
    def update(observations: tf.Tensor, actions: tf.Tensor, advantage: tf.Tensor,
               returns: tf.Tensor) -> dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            probabilities = actor(observations, training=True)
            values = tf.squeeze(critic(observations, training=True), -1)
            policy_loss = tf.reduce_mean(advantage * negative_log_likelihood(OUTPUT, probabilities, actions))
            value_loss = tf.reduce_mean(tf.square(returns - values))
            mean_entropy = tf.reduce_mean(entropy(OUTPUT, probabilities))
            loss = (policy_loss - training.entropy_coefficient * mean_entropy
                    + training.value_coefficient * value_loss)
        gradients, _ = tf.clip_by_global_norm(tape.gradient(loss, variables), training.max_gradient_norm)
        optimizer.apply_gradients(zip(gradients, variables))
        return {"loss": loss, "policy_loss": policy_loss, "value_loss": value_loss, "entropy": mean_entropy}

    return update


@dataclass
class Kept:
    """The weights ``keep: best`` exports: those in use at the best logged mean return so far."""

    mean_return: float = -np.inf
    environment_steps: int = 0
    weights: list[np.ndarray] | None = None

    def offer(self, mean_return: float, environment_steps: int, weights: list[np.ndarray]) -> None:
        if mean_return >= self.mean_return:  # NaN (no episode ended yet) is never kept
            self.mean_return, self.environment_steps, self.weights = mean_return, environment_steps, weights


def train_a2c(cfg: Run, rng: np.random.Generator, log_folder: str,
              desc: str = "A2C") -> tuple[tf_keras.Model, TrainingLive, Kept | None]:
    """Rollouts of every environment, each followed by one update, until the step budget is spent.
    With ``keep: best`` the returned actor holds the kept weights, and the :class:`Kept` says which."""
    training = cfg.training
    envs = SteppedEnvs(cfg.env_id, training.env_seeds, cfg.max_steps)
    if not envs.discrete:
        raise ValueError(f"a2c: {cfg.env_id} has continuous actions; this A2C plays discrete ones")
    size = envs.observations.shape[1]
    seed = training.seed * 100  # one block of initializer seeds per training seed
    actor = orthogonal_start(policy_network(size, cfg.network.hidden_units, cfg.network.activation, OUTPUT,
                                            int(envs.envs[0].action_space.n)), 0.01, seed)
    critic = orthogonal_start(value_network(size, cfg.network.hidden_units, cfg.network.activation), 1.0,
                              seed + 50)
    optimizer = optimizer_for(cfg)
    update = make_update(actor, critic, optimizer, cfg)

    networks: dict[str, NumpyMlp] = {}  # NumPy copies of the weights, refreshed after each update

    def act(observations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probabilities = softmax(networks["actor"](observations))
        return actions_from_outputs(OUTPUT, probabilities, rng), value(observations)

    def value(observations: np.ndarray) -> np.ndarray:
        return networks["critic"](observations)[:, 0]

    log = TrainingLive(log_folder, STEP)
    kept = Kept() if cfg.keep == "best" else None
    with tqdm(range(training.rollouts), desc=desc, unit="rollout", mininterval=1.0) as bar:
        for index in bar:
            if training.learning_rate_decay == "linear":
                optimizer.learning_rate.assign(cfg.optimizer.learning_rate * (1 - index / training.rollouts))
            playing = actor.get_weights()
            networks["actor"] = NumpyMlp(playing, cfg.network.activation)
            networks["critic"] = NumpyMlp(critic.get_weights(), cfg.network.activation)
            rollout = collect(envs, training.steps_per_rollout, act, value)
            advantage = advantages(rollout.rewards, rollout.values, rollout.next_values, rollout.terminated,
                                   rollout.ended, training.discount, training.gae_lambda)
            losses = update(tf.constant(rollout.observations.reshape(-1, size)),
                            tf.constant(rollout.actions.reshape(-1), tf.int64),
                            tf.constant(advantage.reshape(-1)),
                            tf.constant((advantage + rollout.values).reshape(-1)))
            if (index + 1) % training.log_every == 0 or index + 1 == training.rollouts:
                mean_return = envs.mean_return_of_last(20)
                if kept is not None:  # the episodes behind this mean were played by the copied weights
                    kept.offer(mean_return, envs.steps, playing)
                log.log(envs.steps, mean_return=mean_return, episodes=len(envs.episode_returns),
                        **{name: float(v) for name, v in losses.items()})
                bar.set_postfix(mean_return=f"{mean_return:.1f}", refresh=False)
    envs.close()
    log.close()
    if kept is not None and kept.weights is not None:
        actor.set_weights(kept.weights)
    return actor, log, kept


def main() -> None:
    cfg = settings(sys.argv[1:], Params.load())
    config, seed = cfg.config, cfg.training.seed
    data, reports = f"data/{NAME}/{config}/s{seed}", f"reports/{NAME}/{config}/s{seed}"
    rng = seed_everything(seed)
    actor, log, kept = train_a2c(cfg, rng, f"{data}/dvclive", desc=f"A2C on {cfg.env_id} ({config})")
    training = cfg.training
    chosen: dict[str, object] = {"keep": cfg.keep}
    if kept is not None and kept.weights is not None:
        chosen.update(kept_environment_steps=kept.environment_steps, kept_mean_return=kept.mean_return)
        print(f"kept the weights of environment step {kept.environment_steps} "
              f"(mean return of the last 20 training episodes {kept.mean_return:.1f})")
    elif kept is not None:
        chosen["kept"] = "the last weights: no training episode ended before a logged rollout"
        print(f"kept {chosen['kept']}")
    metrics = export_and_report(
        actor, cfg, stage=f"{NAME}@{config}-{seed}", algorithm=f"{NAME}_{config}", config=config,
        seed=seed, output=OUTPUT, log=log, data=data, reports=reports,
        title=f"A2C on {cfg.env_id} ({config}): {training.environments} environments, "
              f"{training.steps_per_rollout}-step returns",
        details={"algorithm": "A2C", "total_steps": training.total_steps,
                 "environments": training.environments, "steps_per_rollout": training.steps_per_rollout,
                 "discount": training.discount, "gae_lambda": training.gae_lambda, **chosen})
    greedy = metrics["evaluation"]["greedy"]
    print(f"A2C on {cfg.env_id} ({config}): training {metrics['training']['final_mean_return']}; "
          f"held-out greedy {greedy['mean']:.1f} +- {greedy['std']:.1f}")


if __name__ == "__main__":
    run_stage(main)
