"""The Gymnasium-to-TF-Agents adapter keeps termination and truncation apart."""

import numpy as np
from tf_agents.environments import tf_py_environment, utils
from tf_agents.trajectories import time_step as ts

from stages.tf_agents_kit.environment import make_py_environment


def test_cartpole_passes_tf_agents_validation():
    env = make_py_environment("CartPole-v1", seed=0)
    utils.validate_py_environment(env, episodes=5)
    assert env.action_spec().maximum == 1
    assert env.observation_spec().shape == (4,)


def test_termination_has_discount_zero():
    env = make_py_environment("CartPole-v1", seed=1, discount=0.99)
    step = env.reset()
    assert step.step_type == ts.StepType.FIRST
    while not step.is_last():
        step = env.step(np.array(1))  # always right: the pole falls long before 500 steps
    assert step.discount == 0.0
    assert step.reward == 1.0


def test_truncation_keeps_the_discount():
    env = make_py_environment("CartPole-v1", seed=2, discount=0.99, max_episode_steps=5)
    env.reset()
    steps = [env.step(np.array(i % 2)) for i in range(5)]
    assert [s.is_last() for s in steps] == [False] * 4 + [True]
    assert steps[-1].discount == np.float32(0.99)
    assert env.step(np.array(0)).is_first()  # the base class resets after a last step


def test_seeded_resets_repeat_and_batch_in_tensorflow():
    env = make_py_environment("CartPole-v1")
    env.seed(42)
    first = env.reset().observation
    env.seed(42)
    np.testing.assert_array_equal(env.reset().observation, first)
    tf_env = tf_py_environment.TFPyEnvironment(make_py_environment("CartPole-v1", seed=42))
    assert tf_env.reset().observation.shape == (1, 4)
