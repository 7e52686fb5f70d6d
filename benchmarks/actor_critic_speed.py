"""Collecting on-policy steps for PPO: TF-Agents' environment and driver against batched NumPy stepping.

    python -m benchmarks.actor_critic_speed [--env LunarLander-v3] [--environments 16] [--rounds 3]

The same PPO agent (64 x 64 tanh actor and value networks, untrained) collects steps three ways,
round by round in turn so that load from other processes hits each alike:

- ``tf_agents_1``: TF-Agents' usual set-up, one ``TFPyEnvironment`` over one Gymnasium
  environment (the project's adapter) and a ``DynamicStepDriver`` of the collect policy, compiled
  with ``common.function``;
- ``tf_agents_batched``: the same driver over a ``BatchedPyEnvironment`` of ``--environments``
  environments;
- ``tf_call_batched``: stages/policy_gradient/rollouts.py's NumPy loop over ``--environments``
  environments, with one compiled TensorFlow call of both networks per step;
- ``numpy_batched``: the same loop with the networks evaluated by a NumPy copy of their weights
  (``NumpyMlp``: what the a2c and ppo stages do).

Then the update, on minibatches of 64 and of 256 steps: one compiled ``agent.train`` call from
Python per minibatch, against a rollout of 16,384 steps' minibatches in one compiled epoch (``make_epoch``: what the ppo
stage does); and the rollout's advantage computation. Printed, never asserted.
"""

from __future__ import annotations

import argparse
import time

import stages  # noqa: F401  (Keras 2 mode before TensorFlow loads)
import numpy as np
import tensorflow as tf
from tf_agents.drivers.dynamic_step_driver import DynamicStepDriver
from tf_agents.environments.batched_py_environment import BatchedPyEnvironment
from tf_agents.environments.tf_py_environment import TFPyEnvironment
from tf_agents.utils import common

from stages.policies.index import actions_from_outputs
from stages.policy_gradient.rollouts import NumpyMlp, SteppedEnvs, advantages, collect, softmax
from stages.tf_agents_kit.environment import make_py_environment
from stages.ppo import Run
from stages.ppo.__main__ import build_agent, make_epoch, minibatch_experience


def ppo_settings(env_id: str, environments: int) -> Run:
    return Run.model_validate(dict(
        config="benchmark", env_id=env_id, network=dict(hidden_units=[64, 64], activation="tanh"),
        optimizer=dict(name="adam", learning_rate=3e-4), max_steps=1000,
        training=dict(total_steps=10_000, environments=environments, steps_per_rollout=64, discount=0.99,
                      gae_lambda=0.95, entropy_coefficient=0.0, value_coefficient=0.5, max_gradient_norm=0.5,
                      learning_rate_decay="constant", log_every=1, epochs=1, minibatch_size=64, clip_ratio=0.2,
                      seed=0, env_seed_start=0),
        evaluation=dict(episodes=1, seed_start=1000), gif=dict(seed=1000, fps=30)))


def tf_agents_collector(env_id: str, environments: int, agent, steps: int):
    envs = [make_py_environment(env_id, seed=i, max_episode_steps=1000) for i in range(environments)]
    tf_env = TFPyEnvironment(envs[0] if environments == 1 else BatchedPyEnvironment(envs, multithreading=False))
    driver = common.function(DynamicStepDriver(tf_env, agent.collect_policy, observers=[], num_steps=steps).run)
    state = {"time_step": None, "policy_state": agent.collect_policy.get_initial_state(tf_env.batch_size)}

    def run() -> int:
        state["time_step"], state["policy_state"] = driver(state["time_step"], state["policy_state"])
        return steps

    return run


def batched_collector(env_id: str, environments: int, agent, value_net, steps: int, numpy_networks: bool):
    envs = SteppedEnvs(env_id, range(environments), 1000)
    rng = np.random.default_rng(0)
    size = envs.observations.shape[1]

    @tf.function(input_signature=[tf.TensorSpec((None, size), tf.float32)])
    def forward(observations):
        distribution, _ = agent.actor_net(observations, step_type=(), network_state=(), training=False)
        values, _ = value_net(observations, step_type=(), network_state=(), training=False)
        return distribution.logits, values

    actor = NumpyMlp(agent.actor_net.get_weights(), "tanh")
    critic = NumpyMlp(value_net.get_weights(), "tanh")

    def outputs(observations):
        if numpy_networks:
            return actor(observations), critic(observations)[:, 0]
        logits, values = forward(observations)
        return logits.numpy(), values.numpy()

    def act(observations):
        logits, values = outputs(observations)
        return actions_from_outputs("action_probabilities", softmax(logits), rng), values

    def run() -> int:
        collect(envs, steps // environments, act, lambda o: outputs(o)[1])
        return steps // environments * environments

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="LunarLander-v3")
    parser.add_argument("--environments", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4096, help="steps per round and way")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cfg = ppo_settings(args.env, args.environments)
    probe = SteppedEnvs(args.env, [0], 1000)
    agent, value_net, _ = build_agent(probe, cfg)
    ways = {"tf_agents_1": tf_agents_collector(args.env, 1, agent, args.steps // 4),
            "tf_agents_batched": tf_agents_collector(args.env, args.environments, agent, args.steps),
            "tf_call_batched": batched_collector(args.env, args.environments, agent, value_net, args.steps, False),
            "numpy_batched": batched_collector(args.env, args.environments, agent, value_net, args.steps, True)}
    for run in ways.values():  # trace and warm up
        run()
    totals = {name: [0, 0.0] for name in ways}
    for _ in range(args.rounds):
        for name, run in ways.items():
            start = time.perf_counter()
            steps = run()
            totals[name][0] += steps
            totals[name][1] += time.perf_counter() - start
    rates = {name: steps / seconds for name, (steps, seconds) in totals.items()}
    for name, rate in rates.items():
        print(f"{name:>18}: {rate:8.0f} steps/s  ({rate / rates['tf_agents_1']:.1f}x tf_agents_1)")

    size, n_actions = probe.observations.shape[1], int(probe.envs[0].action_space.n)
    rng = np.random.default_rng(0)
    steps = 16_384
    rollout = {"observations": tf.constant(rng.normal(size=(steps, size)), tf.float32),
               "actions": tf.constant(rng.integers(0, n_actions, steps), tf.int64),
               "logits": tf.constant(rng.normal(size=(steps, n_actions)), tf.float32),
               "values": tf.zeros([steps]), "advantage": tf.constant(rng.normal(size=steps), tf.float32),
               "returns": tf.constant(rng.normal(size=steps), tf.float32)}
    train = common.function(agent.train)
    epoch = make_epoch(agent)
    for batch in (64, 256):
        calls = steps // batch
        order = rng.permutation(steps)[:calls * batch].reshape(calls, batch)
        experiences = [minibatch_experience(rollout, tf.constant(chosen)) for chosen in order]
        train(experiences[0])
        epoch(rollout, tf.constant(order))
        start = time.perf_counter()
        for experience in experiences:
            train(experience)
        per_call = (time.perf_counter() - start) / calls
        start = time.perf_counter()
        epoch(rollout, tf.constant(order))
        in_graph = (time.perf_counter() - start) / calls
        print(f"agent.train on {batch} steps: {per_call * 1e3:.2f} ms per Python call, "
              f"{in_graph * 1e3:.2f} ms per minibatch in one compiled epoch")
    shape = (1024, args.environments)
    arrays = [rng.normal(size=shape).astype(np.float32) for _ in range(3)]
    start = time.perf_counter()
    advantages(arrays[0], arrays[1], arrays[2], np.zeros(shape, bool), rng.uniform(size=shape) < 0.005, 0.999, 0.98)
    print(f"advantages of a {shape[0]} x {shape[1]} rollout: {(time.perf_counter() - start) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
