"""What A2C, PPO and SAC share: the advantage estimate against hand-computed cases, the batched
stepping's bootstrap values at time limits, and their params.yaml sections (which must load)."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml

from stages.policy_gradient.rollouts import SteppedEnvs, advantages, collect
from pipeline.workspace import engine_env
from tests.conftest import REPO_ROOT


# One environment, three steps: rewards 1, 2, 3; V(s_t) 0.5, 1.0, 1.5; V(s_{t+1}) 1.0, 1.5, 2.0.
REWARDS = np.array([[1.0], [2.0], [3.0]])
VALUES = np.array([[0.5], [1.0], [1.5]])
NEXT_VALUES = np.array([[1.0], [1.5], [2.0]])
NONE = np.zeros((3, 1), bool)


def _advantages(next_values=NEXT_VALUES, terminated=NONE, ended=NONE, gae_lambda=1.0):
    return advantages(REWARDS, VALUES, next_values, terminated, ended, 0.9, gae_lambda)[:, 0]


def test_n_step_advantages_are_the_discounted_rewards_plus_the_bootstrapped_value_less_the_value():
    # A_0 = 1 + .9 * 2 + .81 * 3 + .729 * V(s_3) - V(s_0) = 1 + 1.8 + 2.43 + 1.458 - 0.5
    np.testing.assert_allclose(_advantages(), [6.188, 5.32, 3.3], rtol=1e-6)


def test_a_terminal_state_is_not_bootstrapped_and_stops_the_sum():
    ended = np.array([[False], [True], [False]])
    # A_1 = 2 - V(s_1) = 1.0 (no value after a terminal state); A_0 = (1 + .9 * 1.0 - .5) + .9 * A_1
    np.testing.assert_allclose(_advantages(terminated=ended, ended=ended), [2.3, 1.0, 3.3], rtol=1e-6)


def test_a_time_limit_is_bootstrapped_from_the_state_it_cut():
    ended = np.array([[False], [True], [False]])
    next_values = np.array([[1.0], [4.0], [2.0]])  # V(final observation of the cut episode) = 4
    # A_1 = 2 + .9 * 4 - 1 = 4.6; A_0 = 1.4 + .9 * 4.6
    np.testing.assert_allclose(_advantages(next_values, ended=ended), [5.54, 4.6, 3.3], rtol=1e-6)


def test_gae_lambda_discounts_the_td_errors_ahead():
    # TD errors 1.4, 2.35, 3.3; A_t = delta_t + .9 * .5 * A_{t+1}
    np.testing.assert_allclose(_advantages(gae_lambda=0.5), [3.12575, 3.835, 3.3], rtol=1e-6)


def test_collect_bootstraps_a_truncated_episode_from_its_final_observation():
    """Stepped together, a time limit resets the environment at once; the value after the cut
    step is the final observation's, not the next episode's first."""
    value = lambda obs: (obs[:, 0] + 10 * obs[:, 1]).astype(np.float32)  # noqa: E731
    envs = SteppedEnvs("CartPole-v1", [5], max_steps=3)
    rollout = collect(envs, 5, lambda obs: (np.zeros(len(obs), np.int64), value(obs)), value)
    replay = gym.make("CartPole-v1", max_episode_steps=3)
    observations = [replay.reset(seed=5)[0]]
    for _ in range(3):
        observations.append(replay.step(0)[0])
    observations.append(replay.reset()[0])
    observations.append(replay.step(0)[0])
    observations.append(replay.step(0)[0])
    observations = np.array(observations, np.float32)
    assert rollout.ended[:, 0].tolist() == [False, False, True, False, False]
    assert not rollout.terminated.any()
    np.testing.assert_allclose(rollout.observations[:, 0], observations[[0, 1, 2, 4, 5]])
    np.testing.assert_allclose(rollout.next_values[:, 0], value(observations[[1, 2, 3, 5, 6]]), rtol=1e-6)
    assert envs.episode_lengths == [3] and envs.steps == 5


def actor_critic_sections() -> dict:
    """params.yaml's a2c, ppo and sac sections (the full profile's values)."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    return {stage: params[stage] for stage in ("a2c", "ppo", "sac")}


@pytest.mark.parametrize("stage", ["a2c", "ppo", "sac"])
def test_the_params_sections_load_as_the_stages_settings(stage):
    import importlib

    module = importlib.import_module(f"stages.{stage}")
    section = module.Section.model_validate(actor_critic_sections()[stage])
    assert section.root


def tiny_params(stage: str, config: str, edit) -> dict:
    """The repository's params.yaml with one configuration of ``stage``, as ``tiny``, edited."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    section = copy.deepcopy(actor_critic_sections()[stage][config])
    edit(section)
    params[stage] = {"tiny": section}
    return params


def run_tiny(folder: Path, stage: str, config: str, edit) -> None:
    """``python -m stages.<stage> --config tiny --seed 0`` in ``folder``, on :func:`tiny_params`."""
    (folder / "params.yaml").write_text(yaml.safe_dump(tiny_params(stage, config, edit), sort_keys=False))
    result = subprocess.run([sys.executable, "-m", f"stages.{stage}", "--config", "tiny", "--seed", "0"],
                            cwd=folder, env={**engine_env(), "PYTHONPATH": str(REPO_ROOT)},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.parametrize("activation", ["tanh", "relu", "elu", "selu"])
def test_the_numpy_forward_pass_matches_the_networks(activation):
    """Collection evaluates the networks with NumpyMlp: the same outputs as TensorFlow's, for a
    Keras model and for TF-Agents' actor and value networks."""
    import tensorflow as tf
    from tf_agents.networks.actor_distribution_network import ActorDistributionNetwork
    from tf_agents.networks.value_network import ValueNetwork
    from tf_agents.specs import tensor_spec

    from stages.policy_gradient.training import policy_network
    from stages.policy_gradient.rollouts import NumpyMlp, softmax

    tf.keras.utils.set_random_seed(0)
    observations = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    keras_actor = policy_network(8, [16, 16], activation, "action_probabilities", 4)
    np.testing.assert_allclose(softmax(NumpyMlp(keras_actor.get_weights(), activation)(observations)),
                               keras_actor(observations).numpy(), atol=1e-5)
    observation_spec = tf.TensorSpec((8,), tf.float32)
    action_spec = tensor_spec.BoundedTensorSpec((), tf.int64, 0, 3)
    actor = ActorDistributionNetwork(observation_spec, action_spec, fc_layer_params=(16, 16),
                                     activation_fn=tf.keras.activations.get(activation))
    value = ValueNetwork(observation_spec, fc_layer_params=(16, 16), activation_fn=tf.keras.activations.get(activation))
    logits = actor(observations, step_type=(), network_state=())[0].logits.numpy()
    values = value(observations, step_type=(), network_state=())[0].numpy()
    np.testing.assert_allclose(NumpyMlp(actor.get_weights(), activation)(observations), logits, atol=1e-5)
    np.testing.assert_allclose(NumpyMlp(value.get_weights(), activation)(observations)[:, 0], values, atol=1e-5)
