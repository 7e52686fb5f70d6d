"""SAC with TF-Agents' SacAgent on a continuous-action environment, once per configuration and seed.

    python -m stages.sac --config lunarlander --seed 0

A tanh-squashed Gaussian actor and two critics (TF-Agents' ``ActorDistributionNetwork`` with a
``TanhNormalProjectionNetwork``, and ``CriticNetwork``), the entropy temperature learned. The
environments are stepped together by a NumPy loop (stages/policy_gradient/rollouts.py) and transitions go
to a NumPy replay buffer; each step is followed by ``gradient_steps`` compiled ``agent.train``
calls on uniformly sampled batches, each a batch of two-step trajectories (a transition). A time
limit is not a terminal state: its transition keeps discount 1 and the observation it reached.

The exported policy is the actor's deterministic action, tanh of the Gaussian's mean scaled to
the action bounds (what TF-Agents' greedy policy plays), as a Keras model whose output is the
action itself: the index's ``continuous_action`` output kind. The policy is
``sac_<config>_s<seed>``; the training history is DVCLive's, in ``data/sac/<config>/s<seed>/dvclive``,
one step per logged interval named ``environment_steps``.
"""

from __future__ import annotations

import sys

import numpy as np
import tensorflow as tf
import tf_keras
from tf_agents.agents.ddpg.critic_network import CriticNetwork
from tf_agents.agents.sac.sac_agent import SacAgent
from tf_agents.agents.sac.tanh_normal_projection_network import TanhNormalProjectionNetwork
from tf_agents.networks.actor_distribution_network import ActorDistributionNetwork
from tf_agents.specs import tensor_spec
from tf_agents.trajectories import time_step as ts
from tf_agents.trajectories import trajectory
from tf_agents.utils import common
from tqdm import tqdm

from stages.policy_gradient.actor_critic import STEP, export_and_report
from stages.core.live_log import TrainingLive
from stages.core.optimizers import make_optimizer
from stages.policy_gradient.rollouts import SteppedEnvs
from stages.core.seeding import seed_everything
from stages.core.settings import Params, run_stage
from stages.tf_agents_kit.environment import spec_from_space
from stages.sac import Run, settings

NAME = "sac"
OUTPUT = "continuous_action"


class ReplayBuffer:
    """Transitions in NumPy ring arrays; batches drawn uniformly with the run's generator."""

    def __init__(self, capacity: int, observation_size: int, action_size: int) -> None:
        self.observations = np.zeros((capacity, observation_size), np.float32)
        self.next_observations = np.zeros((capacity, observation_size), np.float32)
        self.actions = np.zeros((capacity, action_size), np.float32)
        self.rewards = np.zeros(capacity, np.float32)
        self.discounts = np.zeros(capacity, np.float32)
        self.capacity, self.size, self._next = capacity, 0, 0

    def add(self, observations: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
            next_observations: np.ndarray, terminated: np.ndarray) -> None:
        for i in range(len(actions)):
            at = self._next
            self.observations[at], self.actions[at], self.rewards[at] = observations[i], actions[i], rewards[i]
            self.next_observations[at], self.discounts[at] = next_observations[i], 0.0 if terminated[i] else 1.0
            self._next = (at + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)

    def sample(self, rng: np.random.Generator, batch_size: int) -> trajectory.Trajectory:
        """A batch of two-step trajectories: (s, a, r, discount) then s' (its action unused)."""
        chosen = rng.integers(0, self.size, batch_size)
        pair = lambda first, second: tf.constant(np.stack([first, second], axis=1))  # noqa: E731
        mid = tf.fill([batch_size, 2], ts.StepType.MID)
        return trajectory.Trajectory(
            step_type=mid, observation=pair(self.observations[chosen], self.next_observations[chosen]),
            action=pair(self.actions[chosen], self.actions[chosen]), policy_info=(), next_step_type=mid,
            reward=pair(self.rewards[chosen], self.rewards[chosen]),
            discount=pair(self.discounts[chosen], self.discounts[chosen]))


def build_agent(envs: SteppedEnvs, cfg: Run) -> tuple[SacAgent, ActorDistributionNetwork,
                                                      list[tf_keras.optimizers.Optimizer]]:
    """The agent, its actor and its three optimizers (actor, critics, temperature)."""
    observation_spec = tensor_spec.from_spec(spec_from_space(envs.envs[0].observation_space, "observation"))
    action_spec = tensor_spec.from_spec(spec_from_space(envs.envs[0].action_space, "action"))
    layers = tuple(cfg.network.hidden_units)
    activation = tf_keras.activations.get(cfg.network.activation)
    actor = ActorDistributionNetwork(observation_spec, action_spec, fc_layer_params=layers, activation_fn=activation,
                                     continuous_projection_net=TanhNormalProjectionNetwork)
    critic = CriticNetwork((observation_spec, action_spec), joint_fc_layer_params=layers, activation_fn=activation,
                           kernel_initializer="glorot_uniform", last_kernel_initializer="glorot_uniform")
    optimizers = [make_optimizer(cfg.optimizer.name, cfg.optimizer.learning_rate) for _ in range(3)]
    agent = SacAgent(ts.time_step_spec(observation_spec), action_spec, actor_network=actor, critic_network=critic,
                     actor_optimizer=optimizers[0], critic_optimizer=optimizers[1], alpha_optimizer=optimizers[2],
                     initial_log_alpha=float(np.log(cfg.initial_alpha)),
                     target_update_tau=cfg.training.target_update_tau, target_update_period=1,
                     td_errors_loss_fn=tf.math.squared_difference, gamma=cfg.training.discount,
                     train_step_counter=tf.Variable(0, dtype=tf.int64, name="train_step"))
    agent.initialize()
    return agent, actor, optimizers


def greedy_keras_model(actor: ActorDistributionNetwork, cfg: Run, observation_size: int, low: np.ndarray,
                       high: np.ndarray) -> tf_keras.Model:
    """The actor's deterministic action as a Keras model: its dense layers, the means half of
    its projection through tanh, scaled from [-1, 1] to the action bounds."""
    size = len(low)
    inputs = tf_keras.Input(shape=(observation_size,))
    hidden = inputs
    for units in cfg.network.hidden_units:
        hidden = tf_keras.layers.Dense(units, activation=cfg.network.activation)(hidden)
    squashed = tf_keras.layers.Dense(size, activation="tanh")(hidden)
    outputs = tf_keras.layers.Rescaling(scale=((high - low) / 2).tolist(), offset=((high + low) / 2).tolist())(squashed)
    model = tf_keras.Model(inputs, outputs)
    weights = [v.numpy() for v in actor.variables]
    kernel, bias = weights[-2], weights[-1]  # the projection's means come first, then its stds
    model.set_weights([*weights[:-2], kernel[:, :size], bias[:size]])
    return model


def train_sac(cfg: Run, rng: np.random.Generator, log_folder: str,
              desc: str = "SAC") -> tuple[SacAgent, tf_keras.Model, TrainingLive]:
    training = cfg.training
    envs = SteppedEnvs(cfg.env_id, training.env_seeds, cfg.max_steps)
    if envs.discrete:
        raise ValueError(f"sac: {cfg.env_id} has discrete actions; SAC here plays continuous ones")
    space = envs.envs[0].action_space
    low, high = space.low.astype(np.float32), space.high.astype(np.float32)
    size = envs.observations.shape[1]
    agent, actor, optimizers = build_agent(envs, cfg)
    train = common.function(agent.train)
    buffer = ReplayBuffer(training.replay_capacity, size, len(low))

    @tf.function(input_signature=[tf.TensorSpec((None, size), tf.float32)])
    def explore(observations: tf.Tensor) -> tf.Tensor:
        distribution, _ = actor(observations, step_type=(), network_state=(), training=False)
        return distribution.sample()

    log = TrainingLive(log_folder, STEP)
    rounds = -(-training.total_steps // len(envs))
    log_rounds = max(1, training.log_every // len(envs))
    losses: list[float] = []
    with tqdm(range(rounds), desc=desc, unit="step", unit_scale=len(envs), mininterval=1.0) as bar:
        for index in bar:
            observations = envs.observations
            if envs.steps < training.initial_random_steps:
                actions = rng.uniform(low, high, size=(len(envs), len(low))).astype(np.float32)
            else:
                actions = explore(observations).numpy()
            step = envs.step(actions)
            buffer.add(observations, actions, step.rewards, step.final_observations, step.terminated)
            if envs.steps >= training.initial_random_steps:
                if cfg.learning_rate_decay == "linear":
                    for optimizer in optimizers:
                        optimizer.learning_rate.assign(cfg.optimizer.learning_rate * (1 - index / rounds))
                for _ in range(training.gradient_steps):
                    losses.append(float(train(buffer.sample(rng, training.batch_size)).loss))
            if (index + 1) % log_rounds == 0 or index + 1 == rounds:
                mean_return = envs.mean_return_of_last(20)
                log.log(envs.steps, mean_return=mean_return, episodes=len(envs.episode_returns),
                        loss=float(np.mean(losses)) if losses else float("nan"))
                losses = []
                bar.set_postfix(mean_return=f"{mean_return:.1f}", refresh=False)
    envs.close()
    log.close()
    return agent, greedy_keras_model(actor, cfg, size, low, high), log


def main() -> None:
    cfg = settings(sys.argv[1:], Params.load())
    config, seed = cfg.config, cfg.training.seed
    data, reports = f"data/{NAME}/{config}/s{seed}", f"reports/{NAME}/{config}/s{seed}"
    rng = seed_everything(seed)
    _, model, log = train_sac(cfg, rng, f"{data}/dvclive", desc=f"SAC on {cfg.env_id} ({config})")
    training = cfg.training
    metrics = export_and_report(
        model, cfg, stage=f"{NAME}@{config}-{seed}", algorithm=f"{NAME}_{config}", config=config,
        seed=seed, output=OUTPUT, log=log, data=data, reports=reports, n_actions=int(model.output_shape[-1]),
        title=f"SAC on {cfg.env_id} ({config}): {training.gradient_steps} gradient step(s) per step",
        details={"algorithm": "SAC (TF-Agents SacAgent)", "total_steps": training.total_steps,
                 "environments": training.environments, "batch_size": training.batch_size,
                 "gradient_steps": training.gradient_steps, "hidden_units": list(cfg.network.hidden_units)})
    greedy = metrics["evaluation"]["greedy"]
    print(f"SAC on {cfg.env_id} ({config}): training {metrics['training']['final_mean_return']}; "
          f"held-out greedy {greedy['mean']:.1f} +- {greedy['std']:.1f}")


if __name__ == "__main__":
    run_stage(main)
