"""Every multi-seed algorithm across its training seeds: interval estimates, not single runs.

Reads the gathered held-out evaluation (``reports/evaluate/returns.csv``: one row per episode;
``summary.csv``: each policy's environment and training log) and those per-seed training logs
(DVCLive's files): committed results all, so the tables rebuild from git alone. A run is one training seed; its score, at
each step cap, is the mean return of its exported policy over the held-out episodes. Per
algorithm and cap: mean, median and interquartile mean across runs, each with a 95% stratified
bootstrap interval (stages/policies/statistics.py); per pair of algorithms on the same environment
and cap: the probability of improvement P(X > Y) with its interval. A claim that X beats Y is made
only when that interval lies above 1/2. Learning curves: the IQM across seeds of each training
log's mean return, with its interval shaded, against the environment steps where the log counts
them (the Atari runs, A2C, PPO, SAC: runs that take different numbers of steps per iteration, or
train for different lengths, share an axis).

A single run (the book's Atari recipe, one training seed) is an algorithm of one run: its IQM is
its score, with no interval, and P(X > Y) against it resamples the other algorithm's runs only:
the single run's own spread is unknown, so the interval says how sure the other side's seeds
are, not how lucky the single run was.
"""

from __future__ import annotations

import sys
import time
from itertools import permutations

import numpy as np
import pandas as pd
from scipy import stats

from stages.aggregate import Settings, settings
from stages.core.io import write_csv, write_json, write_text
from stages.core.live_log import read_history
from stages.core.plotting import new_figure, save_figure
from stages.core.settings import ParamError, Params, run_stage
from stages.policies.statistics import (
    AGGREGATES,
    Interval,
    curve_intervals,
    interval_estimates,
    probability_of_improvement,
    probability_of_improvement_interval,
)
from stages.core.timings import write_timings

NAME = "aggregate"
RETURNS = "reports/evaluate/returns.csv"
POLICIES = "reports/evaluate/summary.csv"  # per policy (and cap): its environment and training log
REPORTS = f"reports/{NAME}"
RETURN_COLUMNS = ["policy", "algorithm", "seed", "max_steps", "episode", "env_seed", "return"]


def read_returns(path: str = RETURNS) -> pd.DataFrame:
    """The evaluation's episodes of the policies that belong to a multi-seed algorithm."""
    returns = pd.read_csv(path)
    missing = sorted(set(RETURN_COLUMNS) - set(returns.columns))
    if missing:
        raise ParamError(f"{path} lacks the columns {', '.join(missing)} (expected {', '.join(RETURN_COLUMNS)})")
    returns = returns.dropna(subset=["seed"]).astype({"seed": int, "max_steps": int})
    returns["algorithm"] = returns["algorithm"].fillna(returns["policy"])
    return returns


def run_scores(returns: pd.DataFrame) -> pd.DataFrame:
    """One score per run (algorithm, seed) and cap: the mean return over its held-out episodes."""
    return (returns.groupby(["algorithm", "max_steps", "seed"], as_index=False)
            .agg(score=("return", "mean"), episodes=("return", "size")))


def read_policies(path: str = POLICIES) -> pd.DataFrame:
    """Policy name -> its environment and training log (DVCLive folder, or empty), as the gathered
    evaluation records them from the policies' index entries."""
    frame = pd.read_csv(path)
    missing = sorted({"policy", "env_id", "training_log"} - set(frame.columns))
    if missing:
        raise ParamError(f"{path} lacks the columns {', '.join(missing)}")
    frame["training_log"] = frame["training_log"].astype(object).where(frame["training_log"].notna(), None)
    return frame.drop_duplicates("policy").set_index("policy")[["env_id", "training_log"]]


def environments(returns: pd.DataFrame, policies: pd.DataFrame) -> dict[str, str]:
    """The environment of each algorithm (only algorithms on the same one are compared)."""
    env_of = {}
    for algorithm, names in returns.groupby("algorithm")["policy"]:
        envs = {policies.at[p, "env_id"] for p in names.unique() if p in policies.index}
        if len(envs) != 1:
            raise ParamError(f"algorithm {algorithm}: its policies must be in {POLICIES} and share "
                             f"one environment, found {sorted(envs) or 'none'}")
        env_of[algorithm] = envs.pop()
    return env_of


def summarise(scores: pd.DataFrame, env_of: dict[str, str], rng: np.random.Generator,
              cfg: Settings) -> pd.DataFrame:
    rows = []
    for (algorithm, max_steps), runs in scores.groupby(["algorithm", "max_steps"], sort=True):
        runs = runs.sort_values("seed")
        estimates = interval_estimates(runs["score"].to_numpy(), rng, confidence=cfg.confidence,
                                       resamples=cfg.resamples)
        row = {"algorithm": algorithm, "env_id": env_of[algorithm], "max_steps": max_steps,
               "runs": len(runs), "seeds": " ".join(str(s) for s in runs["seed"]),
               "episodes_per_run": int(runs["episodes"].min())}
        for name, interval in estimates.items():
            row.update({name: interval.point, f"{name}_ci_low": interval.low,
                        f"{name}_ci_high": interval.high})
        rows.append(row)
    return pd.DataFrame(rows)


def improvement_interval(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, cfg: Settings) -> Interval:
    """P(X > Y) with its bootstrap interval; where one side is a single run, only the other side's
    runs are resampled (a single run has no spread to resample)."""
    if min(len(x), len(y)) >= 2 or max(len(x), len(y)) < 2 or np.all(np.concatenate([x, y]) == x[0]):
        return probability_of_improvement_interval(x, y, rng, confidence=cfg.confidence, resamples=cfg.resamples)
    if len(y) == 1:
        def statistic(runs: np.ndarray, axis: int = -1) -> np.ndarray:
            return probability_of_improvement(np.moveaxis(runs, axis, -1), y)
        runs = x
    else:
        def statistic(runs: np.ndarray, axis: int = -1) -> np.ndarray:
            return probability_of_improvement(x, np.moveaxis(runs, axis, -1))
        runs = y
    result = stats.bootstrap((runs,), statistic, n_resamples=cfg.resamples, confidence_level=cfg.confidence,
                             method="percentile", vectorized=True, rng=rng)
    return Interval(float(probability_of_improvement(x, y)), float(result.confidence_interval.low),
                    float(result.confidence_interval.high))


def compare(scores: pd.DataFrame, env_of: dict[str, str], rng: np.random.Generator,
            cfg: Settings) -> pd.DataFrame:
    """P(X > Y) for every ordered pair of algorithms on the same environment and cap."""
    rows = []
    for max_steps, at_cap in scores.groupby("max_steps", sort=True):
        by_algorithm = {a: runs.sort_values("seed")["score"].to_numpy()
                        for a, runs in at_cap.groupby("algorithm", sort=True)}
        for x, y in permutations(sorted(by_algorithm), 2):
            if env_of[x] != env_of[y]:
                continue
            interval = improvement_interval(by_algorithm[x], by_algorithm[y], rng, cfg)
            # With very few runs the bootstrap cannot show its own uncertainty (two runs of X
            # above two of Y give the interval [1, 1]), so claims need min_runs_for_claims runs.
            enough = min(len(by_algorithm[x]), len(by_algorithm[y])) >= cfg.min_runs_for_claims
            rows.append({"env_id": env_of[x], "max_steps": max_steps, "algorithm_x": x,
                         "algorithm_y": y, "probability_x_beats_y": interval.point,
                         "ci_low": interval.low, "ci_high": interval.high,
                         "x_better": bool(enough and interval.low > 0.5)})
    return pd.DataFrame(rows, columns=["env_id", "max_steps", "algorithm_x", "algorithm_y",
                                       "probability_x_beats_y", "ci_low", "ci_high", "x_better"])


def supported_claims(comparisons: pd.DataFrame, confidence: float) -> list[str]:
    """The comparisons the intervals allow: X beats Y when all of P(X > Y)'s interval exceeds 1/2."""
    claims = []
    for row in comparisons[comparisons["x_better"]].itertuples():
        claims.append(f"{row.env_id}, {row.max_steps}-step cap: {row.algorithm_x} beats "
                      f"{row.algorithm_y} (P(X > Y) = {row.probability_x_beats_y:.2f}, "
                      f"{confidence:.0%} CI [{row.ci_low:.2f}, {row.ci_high:.2f}])")
    return claims


ENVIRONMENT_STEPS = "environment_steps"  # a log column (Atari) or step (A2C, PPO, SAC): one axis for all


def curve_axes(frame: pd.DataFrame) -> tuple[str, str]:
    """A training log's x (its environment steps where it counts them, else its step) and its
    return column (``mean_return``; the Atari stage's ``average_return``)."""
    x_name = ENVIRONMENT_STEPS if ENVIRONMENT_STEPS in frame.columns else frame.columns[0]
    y_name = next((c for c in ("mean_return", "average_return") if c in frame.columns), None)
    if y_name is None:
        raise ParamError(f"a training log has no mean_return or average_return column: {', '.join(frame.columns)}")
    return x_name, y_name


def learning_curves(algorithms: list[str], returns: pd.DataFrame, index: pd.DataFrame,
                    rng: np.random.Generator, cfg: Settings) -> list[dict]:
    """Per training run family (algorithms sharing logs, e.g. dqn and dqn_final: one curve), the
    IQM across seeds of the logged mean return, at up to ``curve_points`` points, with intervals."""
    curves, seen = [], set()
    for algorithm in sorted(algorithms, key=lambda a: (len(a), a)):
        policies = returns.loc[returns["algorithm"] == algorithm, ["policy", "seed"]].drop_duplicates()
        logs = {int(seed): index.at[policy, "training_log"] for policy, seed in policies.itertuples(index=False)}
        if None in logs.values():
            print(f"note: no learning curve for {algorithm}: some of its policies' entries name no "
                  "training_log (DVCLive folder)", file=sys.stderr)
            continue
        if frozenset(logs.values()) in seen:  # the same runs' logs (dqn and dqn_final): one curve
            continue
        seen.add(frozenset(logs.values()))
        frames = [read_history(logs[seed]) for seed in sorted(logs)]  # the step first, by its name
        x_name, y_name = curve_axes(frames[0])
        length = min(len(f) for f in frames)
        points = np.unique(np.linspace(0, length - 1, min(cfg.curve_points, length)).round().astype(int))
        runs = np.stack([f[y_name].to_numpy(dtype=float)[points] for f in frames])
        known = np.isfinite(runs).all(axis=0)  # early points where a run had no finished episode
        point, low, high = curve_intervals(runs[:, known], rng, confidence=cfg.confidence,
                                           resamples=cfg.resamples)
        curves.append({"algorithm": algorithm, "env_id": index.at[policies["policy"].iloc[0], "env_id"],
                       "x_name": x_name, "x": frames[0][x_name].to_numpy()[points][known],
                       "iqm": point, "low": low, "high": high, "seeds": sorted(logs)})
    return curves


def plot_interval_estimates(summary: pd.DataFrame, path: str, confidence: float) -> None:
    """One row of panels per environment and cap, one column per aggregate; an algorithm keeps
    its colour and position in every panel."""
    groups = list(summary.groupby(["env_id", "max_steps"], sort=True))
    colours = {a: f"C{i % 10}" for i, a in enumerate(sorted(summary["algorithm"].unique()))}
    fig, axes = new_figure(len(groups), len(AGGREGATES), squeeze=False, constrained_layout=True,
                           figsize=(4.5 * len(AGGREGATES), 0.45 * len(summary) + 1.8 * len(groups)))
    for row, ((env_id, max_steps), group) in enumerate(groups):
        group = group.sort_values("algorithm", ascending=False)
        y = np.arange(len(group))
        for col, name in enumerate(AGGREGATES):
            ax = axes[row][col]
            ax.hlines(y, group[f"{name}_ci_low"], group[f"{name}_ci_high"], linewidth=6, alpha=0.5,
                      color=[colours[a] for a in group["algorithm"]])
            ax.plot(group[name], y, "|", color="black", markersize=12)
            ax.set_yticks(y, group["algorithm"] if col == 0 else [""] * len(group))
            ax.set_title(f"{'IQM' if name == 'iqm' else name.capitalize()} "
                         f"({env_id}, cap {max_steps})", fontsize=10)
            ax.set_xlabel("held-out return", fontsize=9)
    fig.suptitle(f"Across training seeds: point estimates and {confidence:.0%} bootstrap intervals")
    save_figure(fig, path)


def plot_learning_curves(curves: list[dict], path: str, confidence: float) -> None:
    """One panel per environment and training length (imitation's 5,000 iterations and
    REINFORCE's 150 do not share an axis; the DQN variants' 600 episodes do); curves against
    environment steps share their environment's panel whatever their length."""

    def panel(curve: dict) -> tuple[str, str, float]:
        length = 0.0 if curve["x_name"] == ENVIRONMENT_STEPS else float(curve["x"][-1])
        return curve["env_id"], curve["x_name"], length

    panels = sorted({panel(c) for c in curves})
    fig, axes = new_figure(1, max(len(panels), 1), squeeze=False, constrained_layout=True,
                           figsize=(5 * max(len(panels), 1), 4.5))
    for ax, (env_id, x_name, last) in zip(axes[0], panels):
        for i, curve in enumerate(c for c in curves if panel(c) == (env_id, x_name, last)):
            runs = len(curve["seeds"])
            ax.plot(curve["x"], curve["iqm"], color=f"C{i}",
                    label=f"{curve['algorithm']} ({runs} seed{'s' if runs != 1 else ''})")
            ax.fill_between(curve["x"], curve["low"], curve["high"], color=f"C{i}", alpha=0.2)
        ax.set_xlabel("environment steps" if x_name == ENVIRONMENT_STEPS else f"training {x_name}")
        ax.set_ylabel("mean return (IQM across seeds)")
        ax.set_title(env_id)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"Learning curves: IQM across seeds, shaded {confidence:.0%} bootstrap interval")
    save_figure(fig, path)


def curves_table(curves: list[dict]) -> pd.DataFrame:
    """The learning curves' points, one row each (the report draws its per-environment figures from it)."""
    columns = ["algorithm", "env_id", "x_name", "x", "iqm", "ci_low", "ci_high", "runs"]
    rows = [{"algorithm": c["algorithm"], "env_id": c["env_id"], "x_name": c["x_name"], "x": x, "iqm": m,
             "ci_low": low, "ci_high": high, "runs": len(c["seeds"])}
            for c in curves for x, m, low, high in zip(c["x"], c["iqm"], c["low"], c["high"])]
    return pd.DataFrame(rows, columns=columns)


def metrics(summary: pd.DataFrame, claims: list[str], cfg: Settings) -> dict:
    algorithms: dict[str, dict] = {}
    for row in summary.itertuples(index=False):
        entry = algorithms.setdefault(row.algorithm, {"env_id": row.env_id})
        entry[f"max_steps_{row.max_steps}"] = {
            "runs": row.runs, "seeds": [int(s) for s in row.seeds.split()],
            "episodes_per_run": row.episodes_per_run,
            **{name: {"point": getattr(row, name), "ci_low": getattr(row, f"{name}_ci_low"),
                      "ci_high": getattr(row, f"{name}_ci_high")} for name in AGGREGATES}}
    return {
        "method": {
            "run_score": "mean return of a training seed's exported policy over the held-out episodes",
            "interval": "stratified bootstrap over runs (Agarwal et al. 2021), percentile method, "
                        "scipy.stats.bootstrap",
            "confidence": cfg.confidence, "resamples": cfg.resamples, "bootstrap_seed": cfg.seed,
            "claim_rule": "X beats Y when the whole interval of P(X > Y) lies above 0.5 and each "
                          f"has at least {cfg.min_runs_for_claims} runs",
            "single_run": "an algorithm of one run (the book's Atari recipe): its aggregates are its "
                          "score, without interval; P(X > Y) against it resamples the other side's runs only",
        },
        "algorithms": algorithms,
        "supported_comparisons": claims,
    }


def main() -> None:
    cfg = settings(sys.argv[1:], Params.load())
    started = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    returns = read_returns()
    if returns.empty:
        raise ParamError(f"{RETURNS} holds no episode of a policy with a training seed")
    index = read_policies()
    env_of = environments(returns, index)
    scores = run_scores(returns)

    summary = summarise(scores, env_of, rng, cfg)
    comparisons = compare(scores, env_of, rng, cfg)
    claims = supported_claims(comparisons, cfg.confidence)
    curves = learning_curves(sorted(env_of), returns, index, rng, cfg)

    write_csv(f"{REPORTS}/summary.csv", summary)
    write_csv(f"{REPORTS}/probability_of_improvement.csv", comparisons)
    write_text(f"{REPORTS}/supported_comparisons.txt", "\n".join(claims or [
        f"No comparison is supported by the intervals (claims need {cfg.min_runs_for_claims} "
        "runs per algorithm)."]) + "\n")
    plot_interval_estimates(summary, f"{REPORTS}/interval_estimates.png", cfg.confidence)
    plot_learning_curves(curves, f"{REPORTS}/learning_curves.png", cfg.confidence)
    write_csv(f"{REPORTS}/learning_curves.csv", curves_table(curves))
    write_json(f"{REPORTS}/metrics.json", metrics(summary, claims, cfg))
    write_timings(NAME, {"wall_time_s": round(time.perf_counter() - started, 3)})

    for row in summary.itertuples(index=False):
        print(f"{row.algorithm:>34} cap {row.max_steps:>4}: IQM {row.iqm:7.1f} "
              f"[{row.iqm_ci_low:.1f}, {row.iqm_ci_high:.1f}] over seeds {row.seeds}")
    print(f"{len(claims)} supported comparisons of {len(comparisons)} ordered pairs")


if __name__ == "__main__":
    run_stage(main)
