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
    _, log, _ = train_a2c(cfg, np.random.default_rng(42), str(tmp_path / "dvclive"))
    assert log.frame()["mean_return"].max() > 100


def test_both_networks_start_as_stable_baselines3s():
    """Orthogonal kernels (gain sqrt(2) hidden, 0.01 at the policy's output, 1 at the value's),
    zero biases: the first policy is close to uniform, and the draw depends on the seed."""
    from stages.a2c.__main__ import orthogonal_start, value_network
    from stages.policy_gradient.training import policy_network

    actor = orthogonal_start(policy_network(8, [64, 64], "tanh", "action_probabilities", 4), 0.01, 0)
    critic = orthogonal_start(value_network(8, [64, 64], "tanh"), 1.0, 50)
    for model, output_gain in ((actor, 0.01), (critic, 1.0)):
        kernels = [layer.kernel.numpy() for layer in model.layers if hasattr(layer, "kernel")]
        gains = [np.sqrt(2.0)] * (len(kernels) - 1) + [output_gain]
        for kernel, gain in zip(kernels, gains):
            small = min(kernel.shape)
            gram = kernel.T @ kernel if kernel.shape[0] >= kernel.shape[1] else kernel @ kernel.T
            np.testing.assert_allclose(gram, gain ** 2 * np.eye(small), atol=1e-5 * max(1.0, gain ** 2))
        assert all(not layer.bias.numpy().any() for layer in model.layers if hasattr(layer, "bias"))
    observations = np.random.default_rng(0).normal(size=(256, 8)).astype(np.float32)
    assert np.abs(actor(observations).numpy() - 0.25).max() < 0.05
    other = orthogonal_start(policy_network(8, [64, 64], "tanh", "action_probabilities", 4), 0.01, 100)
    assert not np.allclose(actor.layers[0].kernel.numpy(), other.layers[0].kernel.numpy())


def test_keep_best_holds_the_weights_of_the_best_logged_mean_return():
    """NaN (no episode ended yet) is never kept; among equal means the latest wins."""
    from stages.a2c.__main__ import Kept

    kept = Kept()
    for steps, mean in ((40, float("nan")), (80, 10.0), (120, 30.0), (160, 20.0), (200, 30.0)):
        kept.offer(mean, steps, [np.full(2, steps, np.float32)])
    assert (kept.environment_steps, kept.mean_return) == (200, 30.0)
    assert kept.weights[0][0] == 200


def test_a_run_that_keeps_its_best_weights_returns_them(tmp_path):
    section = actor_critic_sections()["a2c"]["cartpole"]
    cfg = Run.model_validate({**section, "config": "cartpole", "keep": "best",
                              "training": {**section["training"], "total_steps": 8_000, "log_every": 20}})
    seed_everything(0)
    actor, log, kept = train_a2c(cfg, np.random.default_rng(0), str(tmp_path / "dvclive"))
    frame = log.frame()
    assert kept.mean_return == frame["mean_return"].max()
    assert kept.environment_steps == frame.loc[frame["mean_return"] == kept.mean_return, "environment_steps"].max()
    assert all(np.array_equal(a, b) for a, b in zip(actor.get_weights(), kept.weights))
