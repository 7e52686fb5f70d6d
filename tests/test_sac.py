"""SAC (stages/sac): a short run end to end into the index with a continuous_action policy, and
the exported deterministic action against the agent's greedy one."""

from __future__ import annotations

import json

import numpy as np
import tensorflow as tf
from tf_agents.policies.greedy_policy import GreedyPolicy
from tf_agents.trajectories import time_step as ts

from stages.policies.index import load_index, load_policy
from stages.core.seeding import seed_everything
from stages.sac import Run
from stages.sac.__main__ import train_sac
from tests.test_actor_critic import actor_critic_sections, run_tiny


def tiny(section):
    section["network"]["hidden_units"] = [16, 16]
    section["training"].update(total_steps=300, initial_random_steps=256, batch_size=32, log_every=100,
                               replay_capacity=1000)
    section["evaluation"]["episodes"] = 2


def test_a_short_run_exports_a_continuous_policy_that_loads_and_plays(tmp_path):
    run_tiny(tmp_path, "sac", "lunarlander", tiny)
    entry = load_index(tmp_path / "data/policies")["sac_tiny_s0"]
    assert (entry.output, entry.env_id, entry.n_actions) == ("continuous_action", "LunarLanderContinuous-v3", 2)
    actions = load_policy(entry)(np.zeros((3, 8), np.float32))
    assert actions.shape == (3, 2) and actions.dtype == np.float32 and np.all(np.abs(actions) <= 1)
    evaluation = json.loads((tmp_path / "reports/sac/tiny/s0/metrics.json").read_text())["evaluation"]
    assert evaluation["greedy"]["episodes"] == 2
    assert evaluation["sampled"] == evaluation["greedy"]  # a deterministic action: sampling changes nothing


def test_the_exported_model_plays_the_agents_deterministic_action(tmp_path):
    section = actor_critic_sections()["sac"]["lunarlander"]
    tiny(section)
    seed_everything(0)
    agent, model, _ = train_sac(Run.model_validate({**section, "config": "tiny"}), np.random.default_rng(0),
                                str(tmp_path / "dvclive"))
    observations = np.random.default_rng(1).normal(size=(64, 8)).astype(np.float32)
    greedy = GreedyPolicy(agent.policy).action(ts.restart(tf.constant(observations), batch_size=64)).action
    np.testing.assert_allclose(model(observations).numpy(), greedy.numpy(), atol=1e-6)
