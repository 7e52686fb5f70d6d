"""The book's exact numbers (data/book_results.yaml) against the pipeline's deterministic computations.

Every number checked here is read from the one file that holds the book's results; the test holds
no copy of them. Statistical results (returns) are judged in the report, not here.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from stages import markov_chain
from stages import mdp as mdp_stage
from stages.core.book import book_experiments, book_value
from stages.policy_gradient.training import discount_and_normalize_rewards, discount_rewards
from stages.core.settings import Params
from stages.markov_chain.__main__ import sample_run
from stages.mdp.__main__ import MDP, greedy_policy, q_learning, q_value_iteration
from stages.report.results import experiment_layouts
from tests.conftest import repo_stages

ROOT = Path(__file__).parents[1]
PARAMS = ROOT / "params.yaml"
BOOK = ROOT / "data/book_results.yaml"


def detail(experiment: str, name: str) -> dict:
    return book_experiments(BOOK)[experiment]["details"][name]


def as_table(q: np.ndarray) -> list[list[float | None]]:
    return [[None if np.isneginf(v) else float(v) for v in row] for row in q]


def assert_table(found: list, expected: dict) -> None:
    for row_found, row_expected in zip(found, expected["value"], strict=True):
        for f, e in zip(row_found, row_expected, strict=True):
            assert (f is None and e is None) or f == pytest.approx(e, abs=expected["tolerance"])


@pytest.fixture(scope="module")
def mdp():
    cfg = mdp_stage.settings([], Params.load(PARAMS))
    return MDP.from_params(cfg.transition_probabilities, cfg.rewards), cfg


def test_every_experiment_names_its_number_source_and_rule():
    rules = {"interval", "exact", "at_least", "reference", "none"}
    experiments = experiment_layouts(repo_stages())
    for name, entry in book_experiments(BOOK).items():
        headline = entry["headline"]
        assert {"value", "what", "source", "verdict", "measured_by"} <= set(headline), name
        assert headline["verdict"] in rules, name
        assert all("source" in d and "value" in d for d in (entry.get("details") or {}).values()), name
        assert name in experiments, f"{name} is not an experiment of dvc.yaml ({', '.join(experiments)})"


def test_q_value_iteration_gives_the_books_tables_and_policies(mdp):
    model, cfg = mdp
    q90 = q_value_iteration(model, 0.90, cfg.q_value_iteration.iterations)[-1]
    assert_table(as_table(q90), detail("mdp", "q_value_iteration_0.90"))
    assert q90[0, 0] == pytest.approx(book_value("mdp", path=BOOK), abs=book_experiments(BOOK)["mdp"]["headline"]["tolerance"])
    assert greedy_policy(q90) == book_value("mdp", "policy_0.90", BOOK)
    q95 = q_value_iteration(model, 0.95, cfg.q_value_iteration.iterations)[-1]
    assert greedy_policy(q95) == book_value("mdp", "policy_0.95", BOOK)


def test_q_learning_gives_the_books_table(mdp):
    model, cfg = mdp
    learning = cfg.q_learning
    q = q_learning(model, transitions=learning.transitions, learning_rate=learning.learning_rate,
                   learning_rate_decay=learning.learning_rate_decay, discount=learning.discount,
                   start_state=learning.start_state, seed=learning.seed)[-1]
    assert_table(as_table(q), detail("mdp", "q_learning"))
    assert greedy_policy(q) == book_value("mdp", "q_learning_policy", BOOK)


def test_markov_chain_samples_the_books_runs():
    cfg = markov_chain.settings([], Params.load(PARAMS))
    transitions = np.array(cfg.transition_matrix)
    rng = np.random.RandomState(cfg.seed)
    expected = detail("markov_chain", "runs")["value"]
    for line in expected:
        states, cut = sample_run(transitions, cfg.start_state, cfg.max_steps, rng)
        assert line == f"States: {' '.join(map(str, states))}{' ...' if cut else ''}"


def test_discounting_gives_the_books_examples():
    for name in ("discounted", "discounted_and_normalised"):
        example = detail("pg_cartpole", name)
        if len(example["rewards"]) == 1:
            found = [discount_rewards(example["rewards"][0], example["discount"])]
        else:
            found = discount_and_normalize_rewards(example["rewards"], example["discount"])
        for row, expected in zip(found, example["value"], strict=True):
            np.testing.assert_allclose(row, expected, atol=example["tolerance"])


def test_no_stage_repeats_a_book_number():
    """Stages read the book's numbers from data/book_results.yaml; no BOOK_ constants remain."""
    for source in (ROOT / "stages").rglob("*.py"):
        assert not re.search(r"^BOOK_(?!RESULTS\b)\w+\s*=", source.read_text(), flags=re.MULTILINE), source
