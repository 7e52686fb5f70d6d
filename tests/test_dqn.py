"""Deep Q-learning: targets, the dueling head, losses, importance weights, and the stage itself."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from stages.dqn.deep_q import DeepQLearner, build_q_network, elementwise_loss
from stages.policies.index import load_index, load_policy
from stages.replay import Batch
from stages.dqn.__main__ import beta_at, epsilon_at, variant_title
from tests.conftest import dvclive_history, file_digests, run

RNG = np.random.default_rng(0)
NEXT = RNG.normal(size=(16, 4)).astype(np.float32)
REWARDS = np.ones(16, np.float32)
TERMINATED = (np.arange(16) % 4 == 0).astype(np.float32)


def learner(*, double: bool, target_network: bool, dueling: bool = False, seed: int = 0) -> DeepQLearner:
    tf_keras.backend.clear_session()
    tf.keras.utils.set_random_seed(seed)
    online = build_q_network(4, 2, [8, 8], activation="elu", dueling=dueling)
    result = DeepQLearner(online, optimizer="adam", learning_rate=0.01, loss="huber", discount=0.9,
                          target_network=target_network, double=double)
    if result.target is not None:  # make the target network differ from the online one
        result.target.set_weights([w + 0.3 for w in online.get_weights()])
    return result


def test_dqn_targets_come_from_the_online_network():
    agent = learner(double=False, target_network=False)
    targets = agent.targets(REWARDS, NEXT, TERMINATED).numpy()
    expected = REWARDS + 0.9 * (1 - TERMINATED) * agent.online(NEXT).numpy().max(axis=1)
    np.testing.assert_allclose(targets, expected, rtol=1e-6)
    np.testing.assert_array_equal(targets[TERMINATED == 1], 1.0)  # no bootstrapping past the end


def test_double_dqn_values_the_online_choice_with_the_target_network():
    agent = learner(double=True, target_network=True)
    online_next, target_next = agent.online(NEXT).numpy(), agent.target(NEXT).numpy()
    chosen = target_next[np.arange(16), online_next.argmax(axis=1)]
    expected = REWARDS + 0.9 * (1 - TERMINATED) * chosen
    np.testing.assert_allclose(agent.targets(REWARDS, NEXT, TERMINATED).numpy(), expected, rtol=1e-6)
    # Without double Q-learning the target network takes its own maximum.
    agent.double = False
    expected = REWARDS + 0.9 * (1 - TERMINATED) * target_next.max(axis=1)
    np.testing.assert_allclose(agent.targets(REWARDS, NEXT, TERMINATED).numpy(), expected, rtol=1e-6)


def test_sync_copies_the_online_weights():
    agent = learner(double=True, target_network=True)
    agent.sync_target()
    np.testing.assert_array_equal(agent.target(NEXT).numpy(), agent.online(NEXT).numpy())
    with pytest.raises(ValueError, match="needs a target network"):
        learner(double=True, target_network=False)


def test_dueling_q_values_are_value_plus_advantage_minus_its_max():
    agent = learner(double=False, target_network=False, dueling=True)
    model = agent.online
    heads = tf_keras.Model(model.input, [model.get_layer("state_value").output,
                                         model.get_layer("advantages").output])
    value, advantages = (t.numpy() for t in heads(NEXT))
    q_values = model(NEXT).numpy()
    np.testing.assert_allclose(q_values, value + advantages - advantages.max(axis=1, keepdims=True),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(q_values.max(axis=1), value[:, 0], rtol=1e-5, atol=1e-6)


def test_losses_match_keras():
    errors = tf.constant([-3.0, -1.0, -0.5, 0.0, 0.2, 1.0, 2.5])
    huber = tf_keras.losses.Huber(reduction="none")(errors[:, None], tf.zeros((7, 1)))
    np.testing.assert_allclose(elementwise_loss("huber", errors).numpy(), huber.numpy(), rtol=1e-6)
    np.testing.assert_allclose(elementwise_loss("mse", errors).numpy(), errors.numpy() ** 2)


def batch_of(weights: np.ndarray) -> Batch:
    """Terminal transitions: the targets are the rewards, whatever the networks learn."""
    observations = RNG.normal(size=(16, 4)).astype(np.float32)
    return Batch(observations, (np.arange(16) % 2).astype(np.int64), REWARDS, NEXT, np.ones(16, np.float32),
                 np.arange(16), weights.astype(np.float32))


def test_learning_moves_q_toward_the_targets_and_zero_weights_change_nothing():
    agent = learner(double=True, target_network=True)
    batch = batch_of(np.ones(16))
    before = agent.online.get_weights()
    agent.learn(batch_of(np.zeros(16)))
    for old, new in zip(before, agent.online.get_weights()):
        np.testing.assert_array_equal(old, new)
    first_loss, td_errors = agent.learn(batch)
    assert td_errors.shape == (16,)
    for _ in range(30):
        loss, _ = agent.learn(batch)
    assert loss < first_loss


def test_greedy_action_is_the_argmax():
    agent = learner(double=False, target_network=False)
    expected = agent.online(NEXT).numpy().argmax(axis=1)
    assert [agent.greedy_action(observation) for observation in NEXT] == expected.tolist()


def test_schedules_and_titles(repo_root):
    from stages import dqn
    from stages.core.settings import Params

    params = Params.load(repo_root / "params.yaml")
    variant = dqn.settings(["--variant", "prioritized_dueling_double_dqn"], params).variant
    assert [epsilon_at(e, variant) for e in (0, 250, 500, 599)] == [1.0, 0.5, 0.01, 0.01]
    assert beta_at(0, variant) == pytest.approx(0.4) and beta_at(599, variant) == pytest.approx(1.0)
    assert variant_title(variant) == "Dueling Double DQN with prioritized replay"
    book = dqn.settings(["--variant", "dqn"], params).variant
    assert variant_title(book) == "DQN" and beta_at(300, book) == 1.0


@pytest.mark.e2e
def test_stage_is_reproducible_and_exports_what_it_evaluates(quick_workspace):
    ws = quick_workspace("dqn")  # seed 0: a training seed of the quick profile, not the book's 42
    command = [sys.executable, "-m", "stages.dqn", "--variant", "prioritized_dueling_double_dqn",
               "--seed", "0"]
    run(command, ws)
    outputs = ["reports/dqn/prioritized_dueling_double_dqn/s0", "data/dqn/prioritized_dueling_double_dqn/s0",
               "data/policies/prioritized_dueling_double_dqn_s0",
               "data/policies/prioritized_dueling_double_dqn_final_s0"]
    first = file_digests(ws, outputs)
    run(command, ws)
    assert file_digests(ws, outputs) == first

    metrics = json.loads((ws / "reports/dqn/prioritized_dueling_double_dqn/s0/metrics.json").read_text())
    index = load_index(ws / "data/policies")
    assert set(index) == {"prioritized_dueling_double_dqn_s0", "prioritized_dueling_double_dqn_final_s0"}
    final = index["prioritized_dueling_double_dqn_final_s0"]
    assert (final.algorithm, final.seed, final.training_seeds) == ("prioritized_dueling_double_dqn_final", 0, (0,))
    assert metrics["seed"] == 0
    for which in ("best", "final"):
        assert set(metrics["evaluation"][which]) == {"policy", "max_steps_200", "max_steps_500"}
    # The exported best policy acts as the stage's evaluation says: greedy on the Q-values.
    policy = load_policy(index["prioritized_dueling_double_dqn_s0"])
    assert policy(NEXT).shape == (16,)
    # The training history: DVCLive's, one step per episode, where both policies' entries point.
    folder = ws / "data/dqn/prioritized_dueling_double_dqn/s0/dvclive"
    assert {entry.details["training_log"] for entry in index.values()} == {str(folder.relative_to(ws))}
    history = dvclive_history(folder, "episode", {"return", "mean_return", "epsilon", "loss", "gradient_steps"})
    assert history["episode"].tolist() == list(range(metrics["training"]["episodes"]))
    assert history["gradient_steps"].iloc[-1] == metrics["training"]["gradient_steps"]


@pytest.mark.e2e
def test_unknown_variant_fails_with_a_named_parameter(quick_workspace):
    ws = quick_workspace("dqn-bad")
    result = run([sys.executable, "-m", "stages.dqn", "--variant", "triple_dqn"], ws, check=False)
    assert result.returncode == 2
    assert "dqn.variants has no variant 'triple_dqn'" in result.stderr
    assert not (ws / "reports/dqn").exists()
    assert subprocess.run(["git", "status", "--porcelain"], cwd=ws, capture_output=True,
                          text=True).stdout == ""
