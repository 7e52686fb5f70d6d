"""The grid environment's rules, TF-Agents' validation, and the agent's learned path."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tf_agents.environments import utils

from stages.custom_env.__main__ import GOAL_REWARD, OFF_GRID_REWARD, GridEnvironment
from stages.tf_agents_kit.summaries import read_scalars
from tests.conftest import dvclive_history, run

UP, DOWN, LEFT, RIGHT = range(4)


def walk(env: GridEnvironment, actions: list[int]):
    step = env.reset()
    for action in actions:
        step = env.step(np.int32(action))
    return step


def test_the_grid_passes_tf_agents_validation():
    env = GridEnvironment(4, discount=0.9)
    utils.validate_py_environment(env, episodes=10)
    first = env.reset()
    assert first.observation.shape == (4, 4) and first.observation[0, 0] == 1
    assert first.observation.sum() == 1


def test_reaching_the_goal_ends_with_ten():
    env = GridEnvironment(4, discount=0.9)
    step = walk(env, [DOWN, DOWN, DOWN, RIGHT, RIGHT, RIGHT])
    assert step.is_last() and step.reward == GOAL_REWARD and step.discount == 0.0
    assert env.position == (3, 3) and step.observation[3, 3] == 1


def test_leaving_the_grid_ends_with_minus_one_and_other_steps_are_discounted():
    env = GridEnvironment(4, discount=0.9)
    step = walk(env, [RIGHT])
    assert not step.is_last() and step.reward == 0.0 and step.discount == np.float32(0.9)
    step = env.step(np.int32(UP))
    assert step.is_last() and step.reward == OFF_GRID_REWARD and step.observation.sum() == 0
    assert env.step(np.int32(DOWN)).is_first()  # stepped after the end, it starts anew


def test_wandering_too_long_is_a_truncation():
    env = GridEnvironment(4, discount=0.9, max_steps=4)
    step = walk(env, [DOWN, UP, DOWN, UP])
    assert step.is_last() and step.discount == np.float32(0.9)


@pytest.mark.e2e
def test_the_agent_learns_a_shortest_path(quick_workspace):
    ws = quick_workspace("grid")
    run(["python", "-m", "stages.custom_env"], ws)
    metrics = json.loads((ws / "reports/custom_env/metrics.json").read_text())
    path = metrics["learned_path"]
    assert path["steps"] == 6 and path["return"] == 10.0 and path["reached_goal"]
    assert path["cells"][0] == [0, 0] and path["cells"][-1] == [3, 3]
    assert metrics["found_a_shortest_path"]
    assert (ws / "reports/custom_env/learned_path.png").stat().st_size > 0
    history = dvclive_history(ws / "data/custom_env/dvclive", "iteration",
                              {"episodes", "environment_steps", "average_return", "average_episode_length",
                               "loss", "epsilon"})
    assert history["iteration"].iloc[-1] == metrics["training"]["iterations"]
    # TensorBoard's view of the same run, read with TensorBoard's reader.
    scalars = read_scalars(ws / "data/custom_env/tensorboard")
    for name in ("NumberOfEpisodes", "EnvironmentSteps", "AverageReturn", "AverageEpisodeLength"):
        assert f"Metrics/{name}" in scalars
    assert "Metrics_vs_EnvironmentSteps/AverageReturn" in scalars and "Losses/total_loss" in scalars
    assert scalars["Metrics/EnvironmentSteps"][-1][0] == metrics["training"]["iterations"]
