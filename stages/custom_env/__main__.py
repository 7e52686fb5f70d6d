"""A custom TF-Agents environment, a 4 x 4 grid, and a DQN agent that learns to cross it.

The agent starts in the top-left cell and must reach the bottom-right one; it sees the grid
with a 1 in its own cell. Reaching the goal ends the episode with +10, stepping off the grid
ends it with -1, every other step gives 0 (with the environment's configurable discount). The
environment passes TF-Agents' ``validate_py_environment``; a DQN agent trained on it should walk
a shortest path: 6 steps, return 10.

The training history is DVCLive's, in ``data/custom_env/dvclive``, one step per iteration (a
row every ``log_interval``): ``episodes``, ``environment_steps``, ``average_return``,
``average_episode_length`` (of the last 10 episodes), ``loss`` and ``epsilon``. TensorBoard's view
of the same run is in ``data/custom_env/tensorboard`` (stages/tf_agents_kit/summaries.py).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import tensorflow as tf
import tf_keras
from tf_agents.agents.dqn.dqn_agent import DqnAgent
from tf_agents.drivers.dynamic_step_driver import DynamicStepDriver
from tf_agents.environments import py_environment, utils
from tf_agents.environments.tf_py_environment import TFPyEnvironment
from tf_agents.metrics import tf_metrics
from tf_agents.networks.q_network import QNetwork
from tf_agents.policies.random_tf_policy import RandomTFPolicy
from tf_agents.replay_buffers.tf_uniform_replay_buffer import TFUniformReplayBuffer
from tf_agents.specs import array_spec
from tf_agents.trajectories import time_step as ts
from tf_agents.utils import common
from tqdm import tqdm

from stages.core.io import write_json
from stages.core.live_log import TrainingLive
from stages.core.optimizers import make_optimizer
from stages.core.plotting import new_figure, save_figure
from stages.core.seeding import seed_everything
from stages.core.settings import Params, run_stage
from stages.tf_agents_kit.summaries import FOLDER, TrainSummaries
from stages.tf_agents_kit.settings import ReplayTraining
from stages.core.timings import write_timings
from stages.custom_env import Agent, Settings, settings

DATA, REPORTS = "data/custom_env", "reports/custom_env"
ACTION_NAMES = ("up", "down", "left", "right")
MOVES = np.array([(-1, 0), (1, 0), (0, -1), (0, 1)])  # (row, column) change per action
GOAL_REWARD, OFF_GRID_REWARD = 10.0, -1.0


class GridEnvironment(py_environment.PyEnvironment):
    """The 4 x 4 grid. Episodes longer than ``max_steps`` are cut (a truncation, not a terminal)."""

    def __init__(self, size: int = 4, discount: float = 1.0, max_steps: int = 100) -> None:
        super().__init__(handle_auto_reset=True)  # stepped after the last step, it starts anew
        self._size, self._discount, self._max_steps = size, np.float32(discount), max_steps
        self._action_spec = array_spec.BoundedArraySpec((), np.int32, minimum=0, maximum=3, name="action")
        self._observation_spec = array_spec.BoundedArraySpec((size, size), np.int32, minimum=0, maximum=1,
                                                             name="observation")
        self._position = np.zeros(2, np.int64)
        self._steps = 0

    def action_spec(self) -> array_spec.BoundedArraySpec:
        return self._action_spec

    def observation_spec(self) -> array_spec.BoundedArraySpec:
        return self._observation_spec

    @property
    def position(self) -> tuple[int, int]:
        return int(self._position[0]), int(self._position[1])

    def _grid(self) -> np.ndarray:
        grid = np.zeros((self._size, self._size), np.int32)
        if np.all((self._position >= 0) & (self._position < self._size)):
            grid[tuple(self._position)] = 1
        return grid

    def _reset(self) -> ts.TimeStep:
        self._position[:] = 0
        self._steps = 0
        return ts.restart(self._grid())

    def _step(self, action: np.ndarray) -> ts.TimeStep:
        self._position += MOVES[int(action)]
        self._steps += 1
        if np.any((self._position < 0) | (self._position >= self._size)):
            return ts.termination(self._grid(), np.float32(OFF_GRID_REWARD))
        if np.all(self._position == self._size - 1):
            return ts.termination(self._grid(), np.float32(GOAL_REWARD))
        if self._steps >= self._max_steps:
            return ts.truncation(self._grid(), np.float32(0.0), self._discount)
        return ts.transition(self._grid(), np.float32(0.0), self._discount)


def build_agent(tf_env: TFPyEnvironment, cfg: Agent) -> tuple[DqnAgent, Callable[[], float]]:
    q_net = QNetwork(tf_env.observation_spec(), tf_env.action_spec(),
                     preprocessing_layers=tf_keras.layers.Lambda(lambda grid: tf.cast(grid, tf.float32)),
                     fc_layer_params=tuple(cfg.fc_layers))
    train_step = tf.Variable(0, dtype=tf.int64, name="train_step")
    epsilon = tf_keras.optimizers.schedules.PolynomialDecay(
        initial_learning_rate=cfg.epsilon_start, decay_steps=cfg.epsilon_decay_steps,
        end_learning_rate=cfg.epsilon_end)
    agent = DqnAgent(tf_env.time_step_spec(), tf_env.action_spec(), q_network=q_net,
                     optimizer=make_optimizer(cfg.optimizer.name, cfg.optimizer.learning_rate),
                     target_update_period=cfg.target_update_period,
                     td_errors_loss_fn=common.element_wise_huber_loss, gamma=cfg.discount,
                     train_step_counter=train_step, epsilon_greedy=lambda: epsilon(train_step))
    agent.initialize()
    return agent, lambda: float(epsilon(train_step))


def train(agent: DqnAgent, tf_env: TFPyEnvironment, epsilon: Callable[[], float], cfg: ReplayTraining) -> pd.DataFrame:
    """Random steps fill the buffer; then each iteration collects steps and trains on one batch."""
    replay_buffer = TFUniformReplayBuffer(agent.collect_data_spec, batch_size=tf_env.batch_size,
                                          max_length=cfg.replay_buffer_capacity)
    random_policy = RandomTFPolicy(tf_env.time_step_spec(), tf_env.action_spec())
    common.function(DynamicStepDriver(tf_env, random_policy, observers=[replay_buffer.add_batch],
                                      num_steps=cfg.initial_collect_steps).run)()
    metrics = [tf_metrics.NumberOfEpisodes(), tf_metrics.EnvironmentSteps(),
               tf_metrics.AverageReturnMetric(), tf_metrics.AverageEpisodeLengthMetric()]
    collect = common.function(DynamicStepDriver(tf_env, agent.collect_policy,
                                                observers=[replay_buffer.add_batch, *metrics],
                                                num_steps=cfg.collect_steps_per_iteration).run)

    @common.function
    def train_step() -> tf.Tensor:
        experience, _ = replay_buffer.get_next(sample_batch_size=cfg.batch_size, num_steps=2)
        return agent.train(experience).loss

    live = TrainingLive(f"{DATA}/dvclive", "iteration")
    summaries = TrainSummaries(f"{DATA}/{FOLDER}", agent.train_step_counter, metrics, cfg.log_interval,
                               fresh=True)
    rows, losses, started = [], [], time.perf_counter()
    interval_start = started
    time_step, policy_state = None, agent.collect_policy.get_initial_state(tf_env.batch_size)
    with tqdm(range(1, cfg.iterations + 1), desc="training", unit="it") as bar, summaries.recording():
        for iteration in bar:
            time_step, policy_state = collect(time_step, policy_state)
            losses.append(float(train_step()))
            if iteration % cfg.log_interval == 0:
                episodes, steps, average_return, average_length = (float(m.result()) for m in metrics)
                rows.append({"iteration": iteration, "episodes": int(episodes),
                             "environment_steps": int(steps), "average_return": average_return,
                             "average_episode_length": average_length, "loss": float(np.mean(losses)),
                             "epsilon": epsilon(), "wall_time_s": time.perf_counter() - started})
                live.log(iteration, **rows[-1])
                now = time.perf_counter()
                summaries.write(cfg.log_interval / (now - interval_start))
                interval_start = now
                bar.set_postfix(mean_return=f"{average_return:.2f}")
                losses = []
    live.close()
    summaries.close()
    return pd.DataFrame(rows)


def greedy_walk(agent: DqnAgent, cfg: Settings) -> dict:
    """Play the greedy policy once; the cells visited, the actions and the return."""
    env = GridEnvironment(cfg.grid_size, cfg.step_discount, cfg.max_steps)
    step = env.reset()
    cells, actions, total = [env.position], [], 0.0
    while not step.is_last():
        batch = tf.nest.map_structure(lambda x: tf.expand_dims(tf.convert_to_tensor(x), 0), step)
        action = int(agent.policy.action(batch).action.numpy()[0])
        step = env.step(np.int32(action))
        actions.append(ACTION_NAMES[action])
        cells.append(env.position)
        total += float(step.reward)
    return {"cells": [list(c) for c in cells], "actions": actions, "steps": len(actions), "return": total,
            "reached_goal": cells[-1] == (cfg.grid_size - 1, cfg.grid_size - 1)}


def plot_path(walk: dict, size: int, path: str) -> None:
    fig, ax = new_figure(figsize=(4, 4))
    ax.set_xlim(-0.5, size - 0.5)
    ax.set_ylim(size - 0.5, -0.5)
    ax.set_xticks(range(size))
    ax.set_yticks(range(size))
    ax.set_aspect("equal")
    ax.text(0, 0, "start", ha="center", va="center", fontsize=9)
    ax.text(size - 1, size - 1, "goal", ha="center", va="center", fontsize=9, color="tab:green")
    rows, columns = np.array(walk["cells"]).T
    ax.plot(columns, rows, marker="o", color="tab:blue")
    ax.set_title(f"greedy path: {walk['steps']} steps, return {walk['return']:g}")
    save_figure(fig, path)


def main() -> None:
    cfg = settings(sys.argv[1:], Params.load())
    seed_everything(cfg.training.seed)

    env = GridEnvironment(cfg.grid_size, cfg.step_discount, cfg.max_steps)
    utils.validate_py_environment(env, episodes=cfg.validate_episodes)

    tf_env = TFPyEnvironment(GridEnvironment(cfg.grid_size, cfg.step_discount, cfg.max_steps))
    agent, epsilon = build_agent(tf_env, cfg.agent)
    log = train(agent, tf_env, epsilon, cfg.training)

    walk = greedy_walk(agent, cfg)
    shortest = 2 * (cfg.grid_size - 1)
    plot_path(walk, cfg.grid_size, f"{REPORTS}/learned_path.png")
    write_json(f"{REPORTS}/metrics.json", {
        "validate_py_environment": {"episodes": cfg.validate_episodes, "passed": True},
        "learned_path": walk,
        "shortest_path_steps": shortest,
        "found_a_shortest_path": walk["reached_goal"] and walk["steps"] == shortest,
        "training": {"iterations": cfg.training.iterations,
                     "final_average_return": float(log["average_return"].iloc[-1])},
    })
    write_timings("custom_env", {"training": {"wall_time_s": float(log["wall_time_s"].iloc[-1])}})
    print(f"greedy path: {' '.join(walk['actions'])} ({walk['steps']} steps, return {walk['return']:g}; "
          f"a shortest path has {shortest} steps)")


if __name__ == "__main__":
    run_stage(main)
