"""Markov chain and MDP: exact checks of the chapter's tabular computations."""

from pathlib import Path

import numpy as np
import pytest

from stages import markov_chain
from stages import mdp as mdp_stage
from stages.core.settings import Params
from stages.markov_chain.__main__ import absorbing_states, expected_steps_to_absorption, sample_run
from stages.mdp.__main__ import MDP, greedy_policy, q_learning, q_value_iteration

PARAMS = Path(__file__).parents[1] / "params.yaml"


@pytest.fixture(scope="module")
def mdp_cfg():
    return mdp_stage.settings([], Params.load(PARAMS))


@pytest.fixture(scope="module")
def mdp(mdp_cfg):
    return MDP.from_params(mdp_cfg.transition_probabilities, mdp_cfg.rewards)


def test_q_value_iteration_policies_at_both_discounts(mdp):
    # At 0.90 the agent stays away from the fire in s1; at 0.95 it walks through it (a2 in s1).
    assert greedy_policy(q_value_iteration(mdp, 0.90, 50)[-1]) == [0, 0, 1]
    assert greedy_policy(q_value_iteration(mdp, 0.95, 50)[-1]) == [0, 2, 1]


def test_q_value_iteration_is_a_fixed_point_of_the_bellman_equation(mdp):
    q = q_value_iteration(mdp, 0.90, 500)[-1]
    backup = np.einsum("san,san->sa", mdp.transitions, mdp.rewards + 0.90 * q.max(axis=1))
    np.testing.assert_allclose(q[mdp.possible], backup[mdp.possible], atol=1e-9)


def test_impossible_actions_stay_minus_infinity(mdp):
    q = q_value_iteration(mdp, 0.95, 50)[-1]
    assert np.all(np.isneginf(q[~mdp.possible]))
    assert np.all(np.isfinite(q[mdp.possible]))


def test_q_learning_agrees_with_q_value_iteration(mdp, mdp_cfg):
    ql = mdp_cfg.q_learning
    learned = q_learning(mdp, transitions=ql.transitions, learning_rate=ql.learning_rate,
                         learning_rate_decay=ql.learning_rate_decay, discount=ql.discount,
                         start_state=ql.start_state, seed=ql.seed)[-1]
    reference = q_value_iteration(mdp, ql.discount, 50)[-1]
    assert greedy_policy(learned) == greedy_policy(reference) == [0, 0, 1]
    # Sampled updates with a decaying rate land near, not on, the fixed point.
    np.testing.assert_allclose(learned[mdp.possible], reference[mdp.possible], atol=3.5)


def test_markov_chain_runs_follow_the_matrix():
    cfg = markov_chain.settings([], Params.load(PARAMS))
    transitions = np.array(cfg.transition_matrix)
    rng = np.random.RandomState(cfg.seed)
    for _ in range(200):
        states, cut = sample_run(transitions, 0, cfg.max_steps, rng)
        assert states[0] == 0
        assert all(transitions[a, b] > 0 for a, b in zip(states, states[1:]))
        assert cut == (states[-1] != 3)
        assert len(states) <= cfg.max_steps


def test_expected_run_length_matches_sampling():
    transitions = np.array(markov_chain.settings([], Params.load(PARAMS)).transition_matrix)
    assert absorbing_states(transitions) == [3]
    rng = np.random.RandomState(0)
    lengths = [len(sample_run(transitions, 0, 10_000, rng)[0]) - 1 for _ in range(4000)]
    exact = expected_steps_to_absorption(transitions, 0)
    assert np.mean(lengths) == pytest.approx(exact, rel=0.05)
