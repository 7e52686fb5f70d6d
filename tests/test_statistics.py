"""Interval estimates across runs (stages/policies/statistics.py) and the aggregate stage's tables,
on synthetic data whose answers are known."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from stages.core.live_log import TrainingLive
from stages.policies.statistics import (
    Interval,
    curve_intervals,
    interval_estimates,
    iqm,
    probability_of_improvement,
    probability_of_improvement_interval,
)
from pipeline.workspace import REPO_ROOT, engine_env


def test_iqm_is_the_mean_of_the_middle_half():
    assert iqm(np.array([0.0, 1, 2, 3, 4, 5, 6, 100])) == pytest.approx(np.mean([2, 3, 4, 5]))
    # Five runs: one dropped at each end, the middle three averaged; an outlier run does not move it.
    assert iqm(np.array([10.0, 20, 30, 40, 1e6])) == pytest.approx(30.0)


def test_probability_of_improvement_counts_pairs_and_ties_half():
    assert probability_of_improvement(np.array([3.0, 4]), np.array([1.0, 2])) == 1.0
    assert probability_of_improvement(np.array([1.0, 2]), np.array([3.0, 4])) == 0.0
    # Pairs (x, y): (2,1) win, (2,2) tie, (2,3) loss, and the same for x = 2 again: (1 + 0.5) / 3.
    assert probability_of_improvement(np.array([2.0, 2]), np.array([1.0, 2, 3])) == pytest.approx(0.5)
    x, y = np.array([5.0, 1, 3]), np.array([2.0, 4])
    assert (probability_of_improvement(x, y) + probability_of_improvement(y, x)) == pytest.approx(1.0)


def test_intervals_cover_the_point_and_shrink_with_more_runs():
    rng = np.random.default_rng(0)
    few, many = rng.normal(100, 20, size=5), rng.normal(100, 20, size=200)
    for name, interval in interval_estimates(few, np.random.default_rng(1), resamples=2000).items():
        assert interval.low <= interval.point <= interval.high, name
    wide = interval_estimates(few, np.random.default_rng(1), resamples=2000)["iqm"]
    narrow = interval_estimates(many, np.random.default_rng(1), resamples=2000)["iqm"]
    assert narrow.high - narrow.low < wide.high - wide.low


def test_the_mean_interval_matches_scipys_percentile_bootstrap():
    scores = np.array([480.0, 500, 230, 410, 500])
    ours = interval_estimates(scores, np.random.default_rng(7), resamples=5000)["mean"]
    ci = stats.bootstrap((scores,), np.mean, n_resamples=5000, method="percentile",
                         rng=np.random.default_rng(7)).confidence_interval
    assert (ours.low, ours.high) == pytest.approx((ci.low, ci.high))
    assert ours.point == pytest.approx(424.0)


def test_same_draws_same_intervals_and_agreeing_runs_have_no_spread():
    scores = np.array([3.0, 9, 4, 7])
    first = interval_estimates(scores, np.random.default_rng(3), resamples=1000)
    assert interval_estimates(scores, np.random.default_rng(3), resamples=1000) == first
    assert interval_estimates(np.full(5, 500.0), np.random.default_rng(0))["iqm"] == Interval(500, 500, 500)
    assert interval_estimates(np.array([7.0]), np.random.default_rng(0))["median"] == Interval(7, 7, 7)


def test_a_clear_winner_is_supported_and_a_coin_flip_is_not():
    rng = np.random.default_rng(0)
    strong, weak = rng.normal(400, 10, size=5), rng.normal(100, 10, size=5)
    win = probability_of_improvement_interval(strong, weak, np.random.default_rng(1), resamples=2000)
    assert win.point == 1.0 and win.low == 1.0  # every resample of separated runs still separates
    a, b = rng.normal(100, 30, size=5), rng.normal(100, 30, size=5)
    draw = probability_of_improvement_interval(a, b, np.random.default_rng(1), resamples=2000)
    assert draw.low < 0.5 < draw.high


def test_runs_over_seeds_against_a_single_run_resample_their_own_side_only():
    """The book's Atari recipe is one run: P(X > Y) against it is the share of X's runs above it
    (ties half), and its interval comes from X's runs alone, either way round."""
    from stages.aggregate import Settings
    from stages.aggregate.__main__ import improvement_interval

    cfg = Settings(confidence=0.95, resamples=2000, seed=0, curve_points=10, min_runs_for_claims=5)
    recipe, book = np.array([9.0, 14.0, 30.0]), np.array([12.8])
    over = improvement_interval(recipe, book, np.random.default_rng(0), cfg)
    assert over.point == pytest.approx(2 / 3)
    assert over.low == 0.0 and over.high == 1.0  # three runs: a resample may hold only the 9
    under = improvement_interval(book, recipe, np.random.default_rng(0), cfg)
    assert under.point == pytest.approx(1 / 3) and (under.low, under.high) == (0.0, 1.0)
    tie = improvement_interval(np.array([12.8, 12.8, 20.0]), book, np.random.default_rng(0), cfg)
    assert tie.point == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    # Separated runs: every resample of X lies above the single run.
    assert improvement_interval(np.array([20.0, 25.0, 30.0]), book, np.random.default_rng(0), cfg) == \
        Interval(1.0, 1.0, 1.0)
    # One run each: a single comparison, no interval.
    assert improvement_interval(np.array([5.0]), book, np.random.default_rng(0), cfg) == Interval(0.0, 0.0, 0.0)


def test_curve_intervals_are_pointwise():
    runs = np.array([[0.0, 10, 20], [0.0, 12, 24], [0.0, 14, 30], [0.0, 11, 26]])
    point, low, high = curve_intervals(runs, np.random.default_rng(0), resamples=1000)
    np.testing.assert_allclose(point, iqm(runs, axis=0))
    assert (low[0], high[0]) == (0.0, 0.0)  # runs agree at the first point
    assert np.all(low <= point) and np.all(point <= high)


def synthetic_workspace(root, seeds=(0, 1, 2, 3, 4)):
    """Policies of three algorithms (one clearly best), their training logs, a returns.csv, and a
    dvc.yaml that declares the policies (one stage per training and seed)."""
    import tf_keras

    from stages.policies.export import export_keras_policy

    rng = np.random.default_rng(0)
    rows, policies = [], []
    levels = {"strong": 450.0, "weak": 60.0, "weak_final": 62.0}
    model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(1, activation="sigmoid")])
    stages: dict = {}
    for algorithm, level in levels.items():
        training = algorithm.removesuffix("_final")
        stage = stages.setdefault(training, {"matrix": {"seed": list(seeds)}, "cmd": "python -m tests.test_statistics",
                                             "outs": []})
        stage["outs"].append(f"data/policies/{algorithm}_s${{item.seed}}")
        for seed in seeds:
            name = f"{algorithm}_s{seed}"
            log = f"data/{training}/s{seed}/dvclive"  # a trainer's DVCLive folder
            live = TrainingLive(root / log, "iteration")
            for iteration, mean_return in enumerate(level * np.arange(30) / 29 + rng.normal(0, 5, 30)):
                live.log(iteration, mean_return=mean_return, loss=0.0, wall_time_s=0.1)
            live.close()
            export_keras_policy(model, root / "data/policies" / name, stage=f"{training}@{seed}",
                                env_id="CartPole-v1", output="p_left", algorithm=algorithm, seed=seed,
                                details={"training_log": log})
            policies.append((name, algorithm, seed, "CartPole-v1", log))
            for max_steps in (200, 500):
                for episode in range(10):
                    rows.append((name, algorithm, seed, max_steps, episode, 20000 + episode,
                                 min(max_steps, level + rng.normal(0, 20))))
    # A single-run policy (no seed) is not an algorithm across seeds: left out.
    rows.append(("breakout_dqn", "", None, 27000, 0, 10000, 2.0))
    policies.append(("breakout_dqn", "breakout_dqn", None, "ALE/Breakout-v5", None))
    (root / "reports/evaluate").mkdir(parents=True)
    pd.DataFrame(rows, columns=["policy", "algorithm", "seed", "max_steps", "episode", "env_seed",
                                "return"]).to_csv(root / "reports/evaluate/returns.csv", index=False)
    # What the aggregate reads of each policy's index entry, as the gathered evaluation records it.
    pd.DataFrame(policies, columns=["policy", "algorithm", "seed", "env_id", "training_log"]).to_csv(
        root / "reports/evaluate/summary.csv", index=False)
    (root / "params.yaml").write_text(
        f"profile: full\nseeds: {list(seeds)}\n"
        "aggregate: {confidence: 0.95, resamples: 1000, seed: 0, curve_points: 10,"
        " min_runs_for_claims: 5}\n")
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, check=True)


def run_aggregate(workspace):
    env = {**engine_env(), "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "stages.aggregate"], cwd=workspace, env=env,
                          capture_output=True, text=True, check=True)


def test_the_aggregate_stage_on_synthetic_runs(tmp_path):
    synthetic_workspace(tmp_path)
    result = run_aggregate(tmp_path)
    summary = pd.read_csv(tmp_path / "reports/aggregate/summary.csv")
    assert sorted(summary["algorithm"].unique()) == ["strong", "weak", "weak_final"]
    assert set(summary["runs"]) == {5} and set(summary["max_steps"]) == {200, 500}
    strong = summary[(summary["algorithm"] == "strong") & (summary["max_steps"] == 500)].iloc[0]
    assert strong["iqm_ci_low"] <= strong["iqm"] <= strong["iqm_ci_high"]
    assert 420 < strong["iqm"] < 480

    comparisons = pd.read_csv(tmp_path / "reports/aggregate/probability_of_improvement.csv")
    assert len(comparisons) == 2 * 6  # ordered pairs of 3 algorithms, at 2 caps
    supported = {(r.algorithm_x, r.algorithm_y)
                 for r in comparisons[comparisons["x_better"]].itertuples()}
    assert supported == {("strong", "weak"), ("strong", "weak_final")}  # weak vs weak_final: no claim
    metrics = json.loads((tmp_path / "reports/aggregate/metrics.json").read_text())
    assert metrics["algorithms"]["strong"]["max_steps_500"]["seeds"] == [0, 1, 2, 3, 4]
    assert len(metrics["supported_comparisons"]) == 4
    assert (tmp_path / "reports/aggregate/supported_comparisons.txt").read_text().count("beats") == 4
    for figure in ("interval_estimates.png", "learning_curves.png"):
        assert (tmp_path / "reports/aggregate" / figure).stat().st_size > 10_000
    assert "strong" in result.stdout
    assert "no learning curve" not in result.stderr  # every run's DVCLive folder was read

    # Same inputs, same bytes (the bootstrap is seeded); timings aside.
    first = (tmp_path / "reports/aggregate/summary.csv").read_bytes()
    run_aggregate(tmp_path)
    assert (tmp_path / "reports/aggregate/summary.csv").read_bytes() == first


def test_too_few_runs_support_no_claim(tmp_path):
    """Two runs of a strong algorithm above two of a weak one: P(X > Y)'s bootstrap interval is
    [1, 1], yet two seeds cannot carry a claim (min_runs_for_claims)."""
    synthetic_workspace(tmp_path, seeds=(0, 1))
    run_aggregate(tmp_path)
    comparisons = pd.read_csv(tmp_path / "reports/aggregate/probability_of_improvement.csv")
    strong_weak = comparisons[(comparisons["algorithm_x"] == "strong") & (comparisons["algorithm_y"] == "weak")]
    assert set(strong_weak["ci_low"]) == {1.0} and not comparisons["x_better"].any()
    assert "No comparison is supported" in (tmp_path / "reports/aggregate/supported_comparisons.txt").read_text()


def test_logs_that_count_environment_steps_share_one_axis_whatever_their_length(tmp_path):
    """The Atari stage logs per iteration with an environment_steps column (1 or 4 steps an
    iteration, by recipe), A2C/PPO/SAC with environment_steps as their step: the curves are drawn
    against environment steps, one panel per environment, and the report draws one figure of them."""
    from stages.aggregate import Settings
    from stages.aggregate.__main__ import curves_table, learning_curves, plot_learning_curves
    from stages.report.figures import report_figures

    rows, index = [], []
    for algorithm, per_iteration, iterations, seeds in (("book", 4, 50, [42]), ("recipe", 1, 100, [0, 1, 2])):
        for seed in seeds:
            log = tmp_path / f"data/{algorithm}/s{seed}/dvclive"
            live = TrainingLive(log, "iteration")
            for iteration in range(10, iterations + 1, 10):
                live.log(iteration, environment_steps=per_iteration * iteration, average_return=iteration / 10 + seed,
                         loss=0.0)
            live.close()
            name = f"{algorithm}_s{seed}"
            rows.append((name, algorithm, seed, 27000, 0, 1000000, 1.0))
            index.append((name, "ALE/Game-v5", str(log)))
    returns = pd.DataFrame(rows, columns=["policy", "algorithm", "seed", "max_steps", "episode", "env_seed", "return"])
    policies = pd.DataFrame(index, columns=["policy", "env_id", "training_log"]).set_index("policy")
    cfg = Settings(confidence=0.95, resamples=200, seed=0, curve_points=5, min_runs_for_claims=5)
    curves = learning_curves(["book", "recipe"], returns, policies, np.random.default_rng(0), cfg)
    assert [(c["algorithm"], c["x_name"], c["x"][-1]) for c in curves] == [
        ("book", "environment_steps", 200), ("recipe", "environment_steps", 100)]
    plot_learning_curves(curves, str(tmp_path / "curves.png"), 0.95)  # one panel: ALE/Game-v5
    table = curves_table(curves)
    assert set(table["runs"]) == {1, 3} and set(table["x_name"]) == {"environment_steps"}
    _, shown = report_figures(None, None, table, tmp_path / "reports")
    assert shown == {"book": "report/learning_curves_ALE_Game-v5.png", "recipe": "report/learning_curves_ALE_Game-v5.png"}
    assert (tmp_path / "reports/report/learning_curves_ALE_Game-v5.png").stat().st_size > 10_000
