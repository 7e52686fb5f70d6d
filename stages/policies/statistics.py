"""Numbers that say how sure they are: bootstrap intervals for one policy's episodes and across
training runs, after Agarwal et al. (2021), "Deep RL at the edge of the statistical precipice".

One policy (the evaluate stage): a mean over 100 episodes moves with the seeds; the 95% bootstrap
interval of the mean says by how much, and is what the report compares with the book.

Across runs (the aggregate stage): a run is one training seed of an algorithm; its score is one
number (the mean return of its exported policy over the held-out episodes). With a handful of
runs a point estimate says little, so every aggregate comes with a 95% confidence interval from
the stratified bootstrap: resample the runs with replacement, within each task (one task per
comparison here, so: resample the runs), recompute the aggregate, take the percentiles.
Aggregates: mean, median and the interquartile mean (IQM, the mean of the middle 50%: robust to an
outlier, less noisy than the median). The probability of improvement P(X > Y) is the chance that
a run of X outscores a run of Y (ties count half), with its interval from resampling the runs of X
and of Y independently.

The paper's library (rliable 1.2) fails to import with pandas 3; scipy.stats.bootstrap computes the
same percentile intervals, with scipy.stats.trim_mean(x, 0.25) as the IQM.
"""


from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 10_000


def iqm(scores: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: the mean after dropping the lowest and highest 25% of the runs."""
    return stats.trim_mean(scores, 0.25, axis=axis)


AGGREGATES: dict[str, Callable[..., np.ndarray]] = {"mean": np.mean, "median": np.median, "iqm": iqm}


@dataclass(frozen=True)
class Interval:
    """A point estimate and its confidence interval (low == high == point for a single run)."""

    point: float
    low: float
    high: float

    def excludes(self, value: float) -> bool:
        return self.low > value or self.high < value


def _percentile_interval(samples: tuple[np.ndarray, ...], statistic: Callable[..., np.ndarray],
                         rng: np.random.Generator, confidence: float, resamples: int,
                         axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    result = stats.bootstrap(samples, statistic, n_resamples=resamples, axis=axis,
                             confidence_level=confidence, method="percentile", vectorized=True,
                             paired=False, rng=rng)
    return result.confidence_interval.low, result.confidence_interval.high


def interval_estimates(scores: np.ndarray, rng: np.random.Generator, *,
                       confidence: float = CONFIDENCE,
                       resamples: int = RESAMPLES) -> dict[str, Interval]:
    """Mean, median and IQM of the run scores, each with its bootstrap interval over runs."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or len(scores) == 0:
        raise ValueError(f"interval_estimates needs a non-empty vector of run scores, got {scores.shape}")
    estimates = {}
    for name, aggregate in AGGREGATES.items():
        point = float(aggregate(scores, axis=-1))
        if len(scores) < 2 or np.all(scores == scores[0]):
            low = high = point  # one run, or runs that all agree: nothing to resample
        else:
            low, high = _percentile_interval((scores,), aggregate, rng, confidence, resamples)
        estimates[name] = Interval(point, float(low), float(high))
    return estimates


def probability_of_improvement(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """P(X > Y): the share of (run of X, run of Y) pairs where X scores higher, ties counting half."""
    x, y = np.moveaxis(np.asarray(x, float), axis, -1), np.moveaxis(np.asarray(y, float), axis, -1)
    greater = (x[..., :, None] > y[..., None, :]).mean(axis=(-2, -1))
    ties = (x[..., :, None] == y[..., None, :]).mean(axis=(-2, -1))
    return greater + 0.5 * ties


def probability_of_improvement_interval(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, *,
                                        confidence: float = CONFIDENCE,
                                        resamples: int = RESAMPLES) -> Interval:
    """P(X > Y) with a bootstrap interval that resamples X's runs and Y's runs independently."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    point = float(probability_of_improvement(x, y))
    if min(len(x), len(y)) < 2 or np.all(np.concatenate([x, y]) == x[0]):
        return Interval(point, point, point)
    low, high = _percentile_interval((x, y), probability_of_improvement, rng, confidence, resamples)
    return Interval(point, float(low), float(high))


def curve_intervals(runs: np.ndarray, rng: np.random.Generator, *, confidence: float = CONFIDENCE,
                    resamples: int = RESAMPLES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IQM across runs at each point of a learning curve (``runs``: runs x points), with intervals."""
    runs = np.asarray(runs, dtype=np.float64)
    point = iqm(runs, axis=0)
    if len(runs) < 2:
        return point, point.copy(), point.copy()
    low, high = _percentile_interval((runs,), iqm, rng, confidence, resamples, axis=0)
    # Points where every run agrees have no spread to resample: the interval is the point.
    agree = np.all(runs == runs[0], axis=0)
    return point, np.where(agree, point, low), np.where(agree, point, high)


# --- one policy's episodes (the evaluate stage) ----------------------------------------------

def interquartile_mean(values: Sequence[float]) -> float:
    """Mean of the values between the 25th and 75th percentiles (25% trimmed from each end)."""
    return float(iqm(np.asarray(values, dtype=np.float64)))


def bootstrap_mean_interval(values: Sequence[float], *, resamples: int, seed: int,
                            confidence_level: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, from a fixed random state (same data, same bounds).

    Constant returns (a policy that always hits the step cap) have a zero-width interval; scipy
    would warn and give NaN there, so that case is answered directly.
    """
    values = np.asarray(values, dtype=np.float64)
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    result = stats.bootstrap((values,), np.mean, n_resamples=resamples, confidence_level=confidence_level,
                             method="percentile", vectorized=True, random_state=np.random.RandomState(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def summarize_returns(returns: Sequence[float], *, resamples: int, seed: int,
                      confidence_level: float = CONFIDENCE) -> dict[str, Any]:
    """Mean, spread, robust centres and the mean's confidence interval of one set of episodes."""
    returns = np.asarray(returns, dtype=np.float64)
    if returns.size == 0:
        raise ValueError("summarize_returns needs at least one episode")
    low, high = bootstrap_mean_interval(returns, resamples=resamples, seed=seed,
                                        confidence_level=confidence_level)
    return {
        "episodes": int(returns.size),
        "mean": float(np.mean(returns)),
        "std": float(np.std(returns)),  # population std (ddof=0), as the book and NumPy compute it
        "min": float(np.min(returns)),
        "max": float(np.max(returns)),
        "median": float(np.median(returns)),
        "iqm": interquartile_mean(returns),
        "ci95_low": low,
        "ci95_high": high,
    }
