"""A2C (stages/a2c): a few rollouts end to end into the index, and learning CartPole on a short run."""

from __future__ import annotations


import numpy as np

from stages.a2c import Run
from stages.a2c.__main__ import train_a2c
from stages.policies.index import load_index, load_policy
from stages.core.seeding import seed_everything
from tests.test_actor_critic import actor_critic_sections, run_tiny


def test_a_short_run_exports_a_policy_that_loads_from_the_index(tmp_path):
    def tiny(section):
        section["training"].update(total_steps=400, log_every=2)
        section["evaluation"]["episodes"] = 2

    run_tiny(tmp_path, "a2c", "lunarlander", tiny)
    entry = load_index(tmp_path / "data/policies")["a2c_tiny_s0"]
    assert (entry.output, entry.env_id, entry.n_actions) == ("action_probabilities", "LunarLander-v3", 4)
    assert load_policy(entry)(np.zeros((3, 8), np.float32)).shape == (3,)
    assert (tmp_path / "reports/a2c/tiny/s0/metrics.json").is_file()


def test_a2c_learns_cartpole_on_a_short_run(tmp_path):
    """RL Zoo's CartPole settings over 40,000 steps: random play lasts about 22 steps."""
    section = actor_critic_sections()["a2c"]["cartpole"]
    cfg = Run.model_validate({**section, "config": "cartpole",
                              "training": {**section["training"], "total_steps": 40_000, "log_every": 100}})
    seed_everything(42)
    _, log = train_a2c(cfg, np.random.default_rng(42), str(tmp_path / "dvclive"))
    assert log.frame()["mean_return"].max() > 100
