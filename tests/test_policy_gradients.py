"""Policy gradients: the book's discounting examples, and the batched update against the book's.

The book takes one gradient per environment step and averages them, each weighted by its step's
normalised return; the stages take one gradient of the weighted mean loss over the whole batch.
These tests hold the two to float tolerance on fixed batches.
"""

from __future__ import annotations

import json
import sys

import gymnasium as gym
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from stages.policies.cartpole import basic_policy
from stages.policies.evaluation import evaluate_policy
from stages.policies.index import load_index
from stages.policy_gradient.training import (
    discount_and_normalize_rewards,
    entropy,
    make_train_step,
    negative_log_likelihood,
    play_episodes,
    policy_gradient_loss,
    policy_network,
)
from stages.core.settings import ParamError, Params
from pipeline.validation import validate_pipeline
from tests.conftest import dvclive_history, edited_params, repo_stages, run

# The book's discounting examples: tests/test_book_results.py (numbers from data/book_results.yaml).


def test_discounting_and_normalising_standardises_over_every_step():
    normalised = discount_and_normalize_rewards([[10, 0, -50], [10, 20]], 0.8)
    flat = np.concatenate(normalised)
    assert abs(flat.mean()) < 1e-12 and abs(flat.std() - 1) < 1e-12


def test_equal_returns_carry_no_preference():
    assert [w.tolist() for w in discount_and_normalize_rewards([[1.0], [1.0]], 0.9)] == [[0.0], [0.0]]


def _fixed_batch(output: str, n_steps: int = 37):
    tf_keras.backend.clear_session()
    tf.keras.utils.set_random_seed(0)
    observation_size, hidden, activation, n_actions = (
        (4, [5], "elu", 2) if output == "p_left" else (8, [32, 32], "relu", 4))
    model = policy_network(observation_size, hidden, activation, output, n_actions)
    rng = np.random.default_rng(1)
    observations = rng.normal(size=(n_steps, observation_size)).astype(np.float32)
    actions = rng.integers(0, n_actions, size=n_steps)
    weights = np.concatenate(discount_and_normalize_rewards(
        [rng.normal(size=n) for n in (10, 20, n_steps - 30)], 0.95)).astype(np.float32)
    return model, observations, actions, weights


def _book_mean_of_per_step_gradients(model, output, observations, actions, weights):
    """The book's update: one tape per step on a batch of one, then the weighted mean."""
    per_step = []
    for observation, action in zip(observations, actions):
        with tf.GradientTape() as tape:
            outputs = model(observation[np.newaxis])
            loss = tf.reduce_mean(negative_log_likelihood(output, outputs, tf.constant([action])))
        per_step.append(tape.gradient(loss, model.trainable_variables))
    return [tf.reduce_mean([w * grads[i] for w, grads in zip(weights, per_step)], axis=0)
            for i in range(len(model.trainable_variables))]


@pytest.mark.parametrize("output", ["p_left", "action_probabilities"])
def test_one_batched_gradient_equals_the_mean_of_per_step_gradients(output):
    model, observations, actions, weights = _fixed_batch(output)
    book = _book_mean_of_per_step_gradients(model, output, observations, actions, weights)
    with tf.GradientTape() as tape:
        loss = policy_gradient_loss(model, output, tf.constant(observations),
                                    tf.constant(actions, tf.int64), tf.constant(weights))
    batched = tape.gradient(loss, model.trainable_variables)
    for expected, got in zip(book, batched):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_the_compiled_step_applies_that_gradient():
    """Plain SGD with rate 1 moves the weights by exactly minus the book's mean gradient."""
    model, observations, actions, weights = _fixed_batch("p_left")
    book = _book_mean_of_per_step_gradients(model, "p_left", observations, actions, weights)
    before = [v.numpy().copy() for v in model.trainable_variables]
    step = make_train_step(model, tf_keras.optimizers.SGD(learning_rate=1.0), "p_left")
    step(tf.constant(observations), tf.constant(actions, tf.int64), tf.constant(weights))
    for old, new, grad in zip(before, model.trainable_variables, book):
        np.testing.assert_allclose(old - new.numpy(), grad.numpy(), rtol=1e-5, atol=1e-6)


def test_action_likelihood_and_entropy_of_known_distributions():
    p_left = tf.constant([[0.25], [0.25]])
    nll = negative_log_likelihood("p_left", p_left, tf.constant([0, 1]))
    np.testing.assert_allclose(nll.numpy(), [-np.log(0.25), -np.log(0.75)], rtol=1e-5)
    uniform = tf.fill((3, 4), 0.25)
    np.testing.assert_allclose(entropy("action_probabilities", uniform).numpy(), np.log(4), rtol=1e-5)
    np.testing.assert_allclose(entropy("p_left", tf.constant([[0.5]])).numpy(), np.log(2), rtol=1e-5)


def test_episodes_played_together_equal_episodes_played_alone():
    seeds = [3, 4, 5, 6, 7]
    envs = [gym.make("CartPole-v1", max_episode_steps=200) for _ in seeds]
    episodes = play_episodes(envs, basic_policy, seeds)
    alone = evaluate_policy("CartPole-v1", basic_policy, seeds, max_steps=200, batch_size=1,
                            progress=False)
    assert [e.total_reward for e in episodes] == alone.returns.tolist()
    for episode in episodes:
        assert len(episode.observations) == len(episode.actions) == len(episode.rewards)
        np.testing.assert_array_equal(episode.actions, basic_policy(episode.observations))

    # Unseeded, each environment continues its own stream: a second copy replays the same episodes.
    again = [gym.make("CartPole-v1", max_episode_steps=200) for _ in seeds]
    play_episodes(again, basic_policy, seeds)
    follow_ups = [play_episodes(group, basic_policy) for group in (envs, again)]
    assert [e.total_reward for e in follow_ups[0]] == [e.total_reward for e in follow_ups[1]]


@pytest.mark.parametrize("section", ["nn_policy", "pg_cartpole"])
def test_evaluation_seeds_must_be_held_out(tmp_path, section):
    def overlap(params):
        params[section]["training"]["env_seed_start"] = 10
        params[section]["evaluation"]["seed_start"] = 15

    with pytest.raises(ParamError, match=r"overlap the training environment seeds 10\.\.\d+: evaluation must be held out"):
        validate_pipeline(repo_stages(), edited_params(tmp_path, overlap))


def test_every_training_seed_keeps_the_evaluation_seeds_held_out(repo_root):
    """Seed s trains on its own block of environment seeds; the section's seed keeps block 0."""
    from stages import dqn, pg_cartpole

    params = Params.load(repo_root / "params.yaml")
    book = pg_cartpole.settings([], params)
    assert (book.training.seed, book.training.env_seed_start) == (42, 0)
    many = Params({**params.data, "seeds": list(range(50))}, params.path)
    starts = {pg_cartpole.settings(["--seed", str(s)], many).training.env_seed_start for s in range(50)}
    assert len(starts) == 50 and all(start % 10 == 0 for start in starts)  # disjoint blocks of 10
    assert dqn.settings(["--variant", "dqn", "--seed", "3"], params).seed == 3


def test_each_lunarlander_configuration_is_validated(tmp_path):
    path = edited_params(tmp_path, lambda p: p["pg_lunarlander"]["solve"]["training"].update(discount=1.5))
    with pytest.raises(ParamError, match=r"pg_lunarlander\.solve\.training\.discount = 1\.5"):
        validate_pipeline(repo_stages(), path)
    path = edited_params(tmp_path, lambda p: p["pg_lunarlander"]["book"].update(env_id="CartPole-v1"))
    with pytest.raises(ParamError, match="expected a LunarLander environment"):
        validate_pipeline(repo_stages(), path)


PLAY_FROM_THE_INDEX = """
import sys
import numpy as np
from stages.policies.evaluation import evaluate_policy
from stages.policies.index import load_index, load_policy
index = load_index()
entry = index["pg_cartpole_s42"]
result = evaluate_policy(entry.env_id, load_policy(entry, rng=np.random.default_rng(0)), [7, 8],
                         max_steps=entry.training_max_steps, progress=False)
trainers = sorted(m for m in sys.modules if m in ("stages.pg_cartpole", "stages.policy_gradient.training"))
print(entry.output, len(result.returns), trainers)
"""


@pytest.mark.e2e
def test_a_trained_policy_plays_from_the_index_without_its_stage(quick_workspace):
    ws = quick_workspace("pg")
    run([sys.executable, "-m", "stages.pg_cartpole"], ws)  # without --seed: the section's own, 42
    played = run([sys.executable, "-c", PLAY_FROM_THE_INDEX], ws).stdout.split("\n")[-2]
    assert played == "p_left 2 []"
    entry = load_index(ws / "data/policies")["pg_cartpole_s42"]
    assert (entry.algorithm, entry.seed, entry.stage) == ("pg_cartpole", 42, "pg_cartpole@42")
    history = dvclive_history(ws / entry.details["training_log"], "iteration", {"mean_return", "loss"})
    metrics = json.loads((ws / "reports/pg_cartpole/s42/metrics.json").read_text())
    assert history["iteration"].tolist() == list(range(metrics["training"]["iterations"]))
    lunar = run([sys.executable, "-m", "stages.pg_lunarlander", "--config", "nonsense"], ws, check=False)
    assert lunar.returncode == 2
    assert "pg_lunarlander has no configuration 'nonsense'; known: book, solve" in lunar.stderr
    assert not (ws / "reports/pg_lunarlander").exists()
