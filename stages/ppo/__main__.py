"""PPO with TF-Agents' PPOClipAgent on a discrete-action environment, once per configuration and seed.

    python -m stages.ppo --config cartpole --seed 0

An actor network (a softmax over actions) and a separate value network, both TF-Agents networks
trained by ``PPOClipAgent``'s clipped objective. What is not TF-Agents' is the collection:
``environments`` Gymnasium environments are stepped together by a NumPy loop, and both networks
are evaluated per step by a NumPy copy of their weights taken after each update
(stages/policy_gradient/rollouts.py), instead of a ``TFPyEnvironment``, a driver and a TensorFlow call
per step, whose fixed costs outweigh a small network's arithmetic many times over.
The rollout's advantages are computed here too (generalised advantage estimation, with a time
limit bootstrapped from the value of the state it cut), and handed to the agent in the
experience's policy info (``compute_value_and_advantage_in_train=False``). Each rollout is then
shuffled and cut into minibatches, ``epochs`` times, one ``agent.train`` call per minibatch inside
one compiled loop per epoch (the agent's own epochs would each take the whole rollout as one
batch; RL Zoo's settings assume minibatches).

Observations and rewards are not normalised (as RL Zoo for these environments). The policy is
``ppo_<config>_s<seed>`` in the index: the actor's layers copied into a Keras softmax model
(``action_probabilities``), so its greedy action is the agent's greedy action. The training
history is DVCLive's, in ``data/ppo/<config>/s<seed>/dvclive``, one step per logged rollout named
``environment_steps``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tf_keras
from tf_agents.agents.ppo.ppo_clip_agent import PPOClipAgent
from tf_agents.networks.actor_distribution_network import ActorDistributionNetwork
from tf_agents.networks.value_network import ValueNetwork
from tf_agents.specs import tensor_spec
from tf_agents.trajectories import time_step as ts
from tf_agents.trajectories import trajectory
from tqdm import tqdm

from stages.policy_gradient.actor_critic import STEP, export_and_report
from stages.core.live_log import TrainingLive
from stages.core.optimizers import make_optimizer
from stages.policies.index import actions_from_outputs
from stages.policy_gradient.rollouts import NumpyMlp, SteppedEnvs, advantages, collect, softmax
from stages.core.seeding import seed_everything
from stages.core.settings import Params, run_stage
from stages.tf_agents_kit.environment import spec_from_space
from stages.ppo import Run, settings

NAME = "ppo"


def build_agent(envs: SteppedEnvs, cfg: Run) -> tuple[PPOClipAgent, ValueNetwork, tf_keras.optimizers.Optimizer]:
    """The agent, its value network and its optimizer (whose learning rate the run decays)."""
    observation_spec = tensor_spec.from_spec(spec_from_space(envs.envs[0].observation_space, "observation"))
    action_spec = tensor_spec.from_spec(spec_from_space(envs.envs[0].action_space, "action"))
    activation = tf_keras.activations.get(cfg.network.activation)
    layers = tuple(cfg.network.hidden_units)
    training = cfg.training
    optimizer = (tf_keras.optimizers.Adam(cfg.optimizer.learning_rate, epsilon=1e-5)  # SB3's PPO: eps 1e-5
                 if cfg.optimizer.name == "adam" else make_optimizer(cfg.optimizer.name, cfg.optimizer.learning_rate))
    value_net = ValueNetwork(observation_spec, fc_layer_params=layers, activation_fn=activation)
    agent = PPOClipAgent(
        ts.time_step_spec(observation_spec), action_spec, optimizer=optimizer,
        actor_net=ActorDistributionNetwork(observation_spec, action_spec, fc_layer_params=layers,
                                           activation_fn=activation),
        value_net=value_net,
        importance_ratio_clipping=training.clip_ratio, entropy_regularization=training.entropy_coefficient,
        value_pred_loss_coef=training.value_coefficient, gradient_clipping=training.max_gradient_norm,
        discount_factor=training.discount, lambda_value=training.gae_lambda, num_epochs=1,
        normalize_observations=False, normalize_rewards=False, update_normalizers_in_train=False,
        compute_value_and_advantage_in_train=False,
        train_step_counter=tf.Variable(0, dtype=tf.int64, name="train_step"))
    agent.initialize()
    return agent, value_net, optimizer


def minibatch_experience(steps: dict[str, tf.Tensor], chosen: tf.Tensor) -> trajectory.Trajectory:
    """The chosen steps as a batch of one-step trajectories (every step mid-episode: none is masked)."""
    column = lambda name: tf.expand_dims(tf.gather(steps[name], chosen), 1)  # noqa: E731
    mid = tf.fill([chosen.shape[0], 1], ts.StepType.MID)
    info = {"dist_params": {"logits": column("logits")}, "value_prediction": column("values"),
            "return": column("returns"), "advantage": column("advantage")}
    return trajectory.Trajectory(step_type=mid, observation=column("observations"), action=column("actions"),
                                 policy_info=info, next_step_type=mid, reward=tf.zeros(mid.shape),
                                 discount=tf.ones(mid.shape))


def make_epoch(agent: PPOClipAgent) -> Callable[[dict[str, tf.Tensor], tf.Tensor], tf.Tensor]:
    """One compiled pass over a rollout: ``order`` holds the step indices of each minibatch
    (``[minibatches, minibatch_size]``), one ``agent.train`` call each, all inside one graph (a
    call from Python per minibatch costs more than a small minibatch's update). Returns the losses."""

    @tf.function
    def epoch(steps: dict[str, tf.Tensor], order: tf.Tensor) -> tf.Tensor:
        losses = tf.TensorArray(tf.float32, size=order.shape[0])
        for i in tf.range(order.shape[0]):
            losses = losses.write(i, agent.train(minibatch_experience(steps, order[i])).loss)
        return losses.stack()

    return epoch


def greedy_keras_model(agent: PPOClipAgent, observation_size: int, cfg: Run, n_actions: int) -> tf_keras.Model:
    """The actor as a Keras softmax model: its dense layers' weights, the logits through a softmax."""
    layers = [tf_keras.Input(shape=(observation_size,))]
    layers += [tf_keras.layers.Dense(units, activation=cfg.network.activation) for units in cfg.network.hidden_units]
    model = tf_keras.Sequential([*layers, tf_keras.layers.Dense(n_actions, activation="softmax")])
    model.set_weights([v.numpy() for v in agent.actor_net.variables])
    return model


def train_ppo(cfg: Run, rng: np.random.Generator, log_folder: str,
              desc: str = "PPO") -> tuple[PPOClipAgent, tf_keras.Model, TrainingLive]:
    """Rollouts of every environment, each followed by ``epochs`` passes of minibatch updates."""
    training = cfg.training
    envs = SteppedEnvs(cfg.env_id, training.env_seeds, cfg.max_steps)
    if not envs.discrete:
        raise ValueError(f"ppo: {cfg.env_id} has continuous actions; this stage plays discrete ones")
    size, n_actions = envs.observations.shape[1], int(envs.envs[0].action_space.n)
    agent, value_net, optimizer = build_agent(envs, cfg)
    epoch = make_epoch(agent)
    minibatches = training.rollout_size // training.minibatch_size
    last_logits: list[np.ndarray] = []  # the logits each step's actions were drawn from
    networks: dict[str, NumpyMlp] = {}

    def act(observations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits = networks["actor"](observations)
        last_logits.append(logits)
        return actions_from_outputs("action_probabilities", softmax(logits), rng), value(observations)

    def value(observations: np.ndarray) -> np.ndarray:
        return networks["value"](observations)[:, 0]

    log = TrainingLive(log_folder, STEP)
    with tqdm(range(training.rollouts), desc=desc, unit="rollout", mininterval=1.0) as bar:
        for index in bar:
            fraction = 1 - index / training.rollouts if training.learning_rate_decay == "linear" else 1.0
            optimizer.learning_rate.assign(cfg.optimizer.learning_rate * fraction)
            last_logits.clear()
            networks["actor"] = NumpyMlp(agent.actor_net.get_weights(), cfg.network.activation)
            networks["value"] = NumpyMlp(value_net.get_weights(), cfg.network.activation)
            rollout = collect(envs, training.steps_per_rollout, act, value)
            advantage = advantages(rollout.rewards, rollout.values, rollout.next_values, rollout.terminated,
                                   rollout.ended, training.discount, training.gae_lambda).reshape(-1)
            steps = {"observations": tf.constant(rollout.observations.reshape(-1, size)),
                     "actions": tf.constant(rollout.actions.reshape(-1), tf.int64),
                     "logits": tf.constant(np.concatenate(last_logits)),
                     "values": tf.constant(rollout.values.reshape(-1)), "advantage": tf.constant(advantage),
                     "returns": tf.constant(advantage + rollout.values.reshape(-1))}
            losses = []
            for _ in range(training.epochs):
                order = rng.permutation(training.rollout_size)[:minibatches * training.minibatch_size]
                losses.append(epoch(steps, tf.constant(order.reshape(minibatches, training.minibatch_size))))
            if (index + 1) % training.log_every == 0 or index + 1 == training.rollouts:
                mean_return = envs.mean_return_of_last(20)
                log.log(envs.steps, mean_return=mean_return, episodes=len(envs.episode_returns),
                        loss=float(np.mean(np.concatenate(losses))))
                bar.set_postfix(mean_return=f"{mean_return:.1f}", refresh=False)
    envs.close()
    log.close()
    return agent, greedy_keras_model(agent, size, cfg, n_actions), log


def main() -> None:
    cfg = settings(sys.argv[1:], Params.load())
    config, seed = cfg.config, cfg.training.seed
    data, reports = f"data/{NAME}/{config}/s{seed}", f"reports/{NAME}/{config}/s{seed}"
    rng = seed_everything(seed)
    _, model, log = train_ppo(cfg, rng, f"{data}/dvclive", desc=f"PPO on {cfg.env_id} ({config})")
    training = cfg.training
    metrics = export_and_report(
        model, cfg, stage=f"{NAME}@{config}-{seed}", algorithm=f"{NAME}_{config}", config=config,
        seed=seed, output="action_probabilities", log=log, data=data, reports=reports,
        title=f"PPO on {cfg.env_id} ({config}): {training.environments} environments",
        details={"algorithm": "PPO (TF-Agents PPOClipAgent)", "total_steps": training.total_steps,
                 "environments": training.environments, "steps_per_rollout": training.steps_per_rollout,
                 "epochs": training.epochs, "minibatch_size": training.minibatch_size})
    greedy = metrics["evaluation"]["greedy"]
    print(f"PPO on {cfg.env_id} ({config}): training {metrics['training']['final_mean_return']}; "
          f"held-out greedy {greedy['mean']:.1f} +- {greedy['std']:.1f}")


if __name__ == "__main__":
    run_stage(main)
