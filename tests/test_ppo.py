"""PPO (stages/ppo): a few iterations end to end into the index, the exported greedy policy
against the agent's, and learning CartPole on a short run."""

from __future__ import annotations


import numpy as np
import tensorflow as tf
from tf_agents.policies.greedy_policy import GreedyPolicy
from tf_agents.trajectories import time_step as ts

from stages.policies.index import load_index, load_policy
from stages.core.seeding import seed_everything
from stages.ppo import Run
from stages.ppo.__main__ import train_ppo
from tests.test_actor_critic import actor_critic_sections, run_tiny


def cartpole(**training) -> Run:
    section = actor_critic_sections()["ppo"]["cartpole"]
    return Run.model_validate({**section, "config": "cartpole",
                               "training": {**section["training"], **training}})


def test_a_short_run_exports_a_policy_that_loads_from_the_index(tmp_path):
    def tiny(section):
        section["training"].update(total_steps=512, log_every=1, epochs=2)
        section["evaluation"]["episodes"] = 2

    run_tiny(tmp_path, "ppo", "cartpole", tiny)
    entry = load_index(tmp_path / "data/policies")["ppo_tiny_s0"]
    assert (entry.output, entry.algorithm, entry.seed, entry.n_actions) == ("action_probabilities", "ppo_tiny", 0, 2)
    assert load_policy(entry)(np.zeros((3, 4), np.float32)).shape == (3,)
    assert (tmp_path / "reports/ppo/tiny/s0/metrics.json").is_file()
    assert (tmp_path / "data/ppo/tiny/s0/dvclive/plots/metrics/mean_return.tsv").is_file()


def test_the_exported_model_plays_the_agents_greedy_action(tmp_path):
    seed_everything(0)
    agent, model, _ = train_ppo(cartpole(total_steps=256, epochs=1, log_every=1), np.random.default_rng(0),
                                str(tmp_path / "dvclive"))
    observations = np.random.default_rng(1).normal(size=(64, 4)).astype(np.float32)
    greedy = GreedyPolicy(agent.policy).action(ts.restart(tf.constant(observations), batch_size=64)).action
    np.testing.assert_array_equal(np.argmax(model(observations).numpy(), axis=1), greedy.numpy())


def test_ppo_learns_cartpole_on_a_short_run(tmp_path):
    """RL Zoo's CartPole settings over 15,360 steps: random play lasts about 22 steps."""
    seed_everything(42)
    _, _, log = train_ppo(cartpole(total_steps=15_360, log_every=5), np.random.default_rng(42),
                          str(tmp_path / "dvclive"))
    assert log.frame()["mean_return"].max() > 150
