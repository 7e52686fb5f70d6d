"""Summaries of episode returns that say how sure they are: robust centres and bootstrap intervals.

A mean over 100 episodes moves with the seeds; the 95% bootstrap confidence interval of the mean
says by how much, and is what the report compares with the book. The interquartile mean (the mean
of the middle 50%) is less swayed by a few lucky or disastrous episodes (Agarwal et al., 2021).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

CONFIDENCE_LEVEL = 0.95


def interquartile_mean(values: Sequence[float]) -> float:
    """Mean of the values between the 25th and 75th percentiles (25% trimmed from each end)."""
    return float(stats.trim_mean(np.asarray(values, dtype=np.float64), 0.25))


def bootstrap_mean_interval(values: Sequence[float], *, resamples: int, seed: int,
                            confidence_level: float = CONFIDENCE_LEVEL) -> tuple[float, float]:
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
                      confidence_level: float = CONFIDENCE_LEVEL) -> dict[str, Any]:
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
