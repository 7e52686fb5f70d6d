"""Held-out evaluation: the statistics it reports, the seeds it may use, gathering the per-policy
results, and the report's fallbacks."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from stages.core.html import VOLATILE_END, VOLATILE_START, strip_volatile, volatile
from stages.core.settings import InputError, ParamError
from stages.policies.statistics import interquartile_mean, summarize_returns
from pipeline.validation import validate_pipeline
from pipeline.workspace import create_workspace
from stages.evaluate import RETURN_COLUMNS, returns_path, summary_path
from stages.evaluate.__main__ import check_held_out as check_gathered_held_out
from stages.evaluate.__main__ import completed, read_results, summary_rows
from stages.evaluate.policy import check_held_out
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
    with pytest.raises(ParamError, match="evaluate.seed_start = 1000000.*policy 'p'"):
        check_held_out("p", (5, 1000003), range(1000000, 1000100), 1000000)
    check_held_out("p", (5, 1000003), range(2000000, 2000100), 2000000)


def write_result(name: str, stage: str, training_seeds: list[int], env_seeds: list[int]) -> None:
    """One per-policy stage's results, as stages/evaluate/policy.py writes them."""
    returns = pd.DataFrame([{"policy": name, "algorithm": "dqn", "seed": 1, "max_steps": 200, "episode": i,
                             "env_seed": s, "return": 10.0 + i} for i, s in enumerate(env_seeds)],
                           columns=RETURN_COLUMNS)
    os.makedirs(os.path.dirname(returns_path(name)), exist_ok=True)
    returns.to_csv(returns_path(name), index=False)
    stats = {"episodes": len(env_seeds), "mean": 11.0, "std": 1.0, "min": 10.0, "max": 12.0, "median": 11.0,
             "iqm": 11.0, "ci95_low": 10.0, "ci95_high": 12.0}
    with open(summary_path(name), "w") as handle:
        json.dump({"policy": name, "algorithm": "dqn", "seed": 1, "stage": stage, "env_id": "CartPole-v1",
                   "training_seeds": training_seeds, "training_log": None, "policy_md5": "0.dir",
                   "max_steps": {"max_steps_200": stats}}, handle)


def test_the_gathering_reads_the_declared_policies_and_checks_their_seeds_again(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_result("dqn_s1", "dqn@dqn-1", [1, 2], [100, 101, 102])
    write_result("dqn_s9", "dqn@dqn-9", [9], [100, 101])  # a seed since removed from params.yaml
    summaries, returns = read_results({"dqn_s1": "dqn@dqn-1"})
    assert [s["policy"] for s in summaries] == ["dqn_s1"] and set(returns["policy"]) == {"dqn_s1"}
    assert "dqn_s9" in capsys.readouterr().err  # left out, with a note
    assert list(summary_rows(summaries)[["policy", "max_steps", "mean"]].itertuples(index=False)) == [
        ("dqn_s1", 200, 11.0)]
    check_gathered_held_out(summaries, returns, 100)

    # A declared policy without results names the stage that writes them; one from another stage is stale.
    with pytest.raises(InputError, match="'dqn_s2' \\(made by stage dqn@dqn-2\\) has no held-out evaluation.*"
                                         "`dvc repro evaluate_dqn@dqn-2`"):
        read_results({"dqn_s1": "dqn@dqn-1", "dqn_s2": "dqn@dqn-2"})
    with pytest.raises(InputError, match="not the evaluation of policy 'dqn_s1' made by stage dqn@other-1"):
        read_results({"dqn_s1": "dqn@other-1"})
    # Results played on a training seed are refused here too.
    write_result("dqn_s1", "dqn@dqn-1", [1, 101], [100, 101, 102])
    summaries, returns = read_results({"dqn_s1": "dqn@dqn-1"})
    with pytest.raises(ParamError, match="policy 'dqn_s1' was evaluated on seeds it was trained on \\(\\[101\\]\\)"):
        check_gathered_held_out(summaries, returns, 100)


def test_volatile_spans_are_the_only_thing_left_out():
    page = f"<p>a{volatile('12.3 s')}b</p><p>{volatile('host')}</p>"
    assert strip_volatile(page) == "<p>ab</p><p></p>"
    assert VOLATILE_START in page and VOLATILE_END in page


def test_the_report_shows_missing_results_as_not_run_yet(tmp_path):
    """A workspace with nothing run yet, rendered with ``--partial``: every experiment is 'not run
    yet', nothing crashes. (Without it the report refuses: tests/test_report_page.py.)"""
    workspace = create_workspace(tmp_path / "empty", profile=None)
    shutil.rmtree(workspace / "reports", ignore_errors=True)  # none of the results git keeps either
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


def test_what_an_atari_entry_leaves_out_is_taken_from_the_dag():
    """The Atari stage's index entries name no training seed, algorithm or log: a recipe run gets
    its stage's seed and an algorithm across seeds, the book's single run its one training seed,
    both their DVCLive folder; a per-seed policy that names its own keeps them."""
    stages = {stage.name: stage for stage in repo_stages()}

    def entry(policy: str, stage: str, training_seeds: list[int], **fields) -> dict:
        return completed({"policy": policy, "algorithm": policy, "seed": None, "stage": stage,
                          "training_seeds": training_seeds, "training_log": None, **fields}, stages[stage])

    recipe = entry("breakout_drq_eps_s1_dqn", "atari_dqn_recipes@breakout_drq_eps_s1", [1])
    assert (recipe["algorithm"], recipe["seed"]) == ("breakout_drq_eps", 1)
    assert recipe["training_log"] == "data/atari_dqn/breakout_drq_eps_s1/dvclive"
    book = entry("space_invaders_dqn", "atari_dqn@space_invaders", [42])
    assert (book["algorithm"], book["seed"], book["training_log"]) == (
        "space_invaders_dqn", 42, "data/atari_dqn/space_invaders/dvclive")
    dqn = entry("dqn_final_s0", "dqn@dqn-0", list(range(10, 20)), algorithm="dqn_final", seed=0,
                training_log="data/dqn/dqn/s0/dvclive")
    assert (dqn["algorithm"], dqn["seed"], dqn["training_log"]) == ("dqn_final", 0, "data/dqn/dqn/s0/dvclive")
