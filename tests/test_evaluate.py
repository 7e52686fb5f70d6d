"""Held-out evaluation: the statistics it reports, the seeds it may use, and the report's fallbacks."""

from __future__ import annotations

import os

import numpy as np
import pytest

from stages.common.html import VOLATILE_END, VOLATILE_START, strip_volatile, volatile
from stages.common.policies import PolicyEntry
from stages.common.settings import ParamError
from stages.common.statistics import interquartile_mean, summarize_returns
from stages.common.validation import validate_pipeline
from stages.common.workspace import create_workspace
from stages.evaluate.__main__ import check_held_out
from tests.conftest import edited_params, repo_stages


def test_summary_has_the_contracts_fields_and_a_reproducible_interval():
    returns = np.random.default_rng(3).normal(100, 20, 100)
    first = summarize_returns(returns, resamples=2000, seed=7)
    assert set(first) == {"episodes", "mean", "std", "min", "max", "median", "iqm", "ci95_low", "ci95_high"}
    assert first == summarize_returns(returns, resamples=2000, seed=7)  # fixed random state
    assert first["ci95_low"] < first["mean"] < first["ci95_high"]
    # About +-1.96 standard errors for a normal sample.
    half_width = (first["ci95_high"] - first["ci95_low"]) / 2
    assert half_width == pytest.approx(1.96 * np.std(returns) / np.sqrt(100), rel=0.2)


def test_interquartile_mean_ignores_the_tails():
    assert interquartile_mean([0, 10, 10, 10, 10, 10, 10, 1000]) == 10.0


def test_constant_returns_have_a_zero_width_interval():
    summary = summarize_returns([200.0] * 50, resamples=1000, seed=0)
    assert summary["ci95_low"] == summary["ci95_high"] == 200.0


def test_evaluation_seeds_overlapping_training_seeds_are_refused(tmp_path):
    path = edited_params(tmp_path, lambda p: p["evaluate"].update(seed_start=40, episodes=10))
    with pytest.raises(ParamError, match=r"evaluate\.seed_start = 40 is not allowed.*training seeds of nn_policy"):
        validate_pipeline(repo_stages(), path)


def test_a_policy_trained_on_an_evaluation_seed_is_refused():
    entry = PolicyEntry(name="p", stage="s", env_id="CartPole-v1", model="m", observation_shape=(4,),
                        observation_dtype="float32", output="q_values", n_actions=2,
                        training_seeds=(5, 1000003))
    with pytest.raises(ParamError, match="evaluate.seed_start = 1000000.*policy 'p'"):
        check_held_out({"p": entry}, range(1000000, 1000100))
    check_held_out({"p": entry}, range(2000000, 2000100))


def test_volatile_spans_are_the_only_thing_left_out():
    page = f"<p>a{volatile('12.3 s')}b</p><p>{volatile('host')}</p>"
    assert strip_volatile(page) == "<p>ab</p><p></p>"
    assert VOLATILE_START in page and VOLATILE_END in page


def test_the_report_shows_missing_results_as_not_run_yet(tmp_path):
    """A workspace with nothing run yet, rendered with ``--partial``: every experiment is 'not run
    yet', nothing crashes. (Without it the report refuses: tests/test_report_page.py.)"""
    workspace = create_workspace(tmp_path / "empty", profile=None)
    from stages.report.__main__ import experiment_layouts, main

    cwd = os.getcwd()
    os.chdir(workspace)
    try:
        main(["--partial"])
        experiments = experiment_layouts(repo_stages())
    finally:
        os.chdir(cwd)
    page = (workspace / "reports/index.html").read_text()
    assert page.count('<span class="missing">not run yet</span>') >= 2 * len(experiments)
    for name in experiments:
        assert f'<section id="{name}">' in page
    assert "Across training seeds (aggregate)" in page and "Raspberry Pi bundle" in page
