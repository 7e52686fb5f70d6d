"""The summary at the top of the report (and in reports/summary.md): per environment and step cap,
which algorithm leads across training seeds, and how far the intervals back that.

Read from the aggregate stage's outputs: ``summary.csv`` (IQM across seeds with its bootstrap
interval, per algorithm and cap) and ``probability_of_improvement.csv`` (P(X > Y) with its
interval, and ``x_better``: the whole interval above 1/2, with enough runs). The leader is the
algorithm with the highest IQM (ties: the first by name); it *beats* another only where the
aggregate stage's claim rule says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Estimate:
    point: float
    low: float
    high: float

    def text(self, digits: int = 1) -> str:
        return f"{self.point:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


@dataclass(frozen=True)
class Winner:
    """The leading algorithm of one environment and step cap."""

    env_id: str
    max_steps: int
    algorithm: str
    runs: int
    iqm: Estimate
    algorithms: int  # how many were compared
    runner_up: str | None = None
    runner_up_iqm: Estimate | None = None
    over_runner_up: Estimate | None = None  # P(leader > runner-up)
    beaten: tuple[str, ...] = ()  # the others the intervals say it beats

    @property
    def support(self) -> str:
        """What the intervals say, in words."""
        others = self.algorithms - 1
        if others == 0:
            return "the only algorithm across seeds here"
        if len(self.beaten) == others:
            return f"beats all {others} others (P(X > Y) interval above 1/2)"
        if self.beaten:
            return f"beats {len(self.beaten)} of {others} others; not shown better than the rest"
        return "leads on IQM, but no comparison is supported by the intervals"


def _estimate(row: pd.Series, name: str) -> Estimate:
    return Estimate(float(row[name]), float(row[f"{name}_ci_low"]), float(row[f"{name}_ci_high"]))


def winners(summary: pd.DataFrame | None, comparisons: pd.DataFrame | None) -> list[Winner]:
    """One leader per (environment, cap), sorted by environment then cap."""
    if summary is None or summary.empty:
        return []
    found = []
    for (env_id, max_steps), group in summary.groupby(["env_id", "max_steps"], sort=True):
        ranked = group.sort_values(["iqm", "algorithm"], ascending=[False, True], kind="stable")
        best = ranked.iloc[0]
        pairs = pd.DataFrame() if comparisons is None else comparisons[
            (comparisons["env_id"] == env_id) & (comparisons["max_steps"] == max_steps)
            & (comparisons["algorithm_x"] == best["algorithm"])]
        beaten = tuple(sorted(pairs.loc[pairs["x_better"].astype(bool), "algorithm_y"])) if len(pairs) else ()
        runner_up = ranked.iloc[1] if len(ranked) > 1 else None
        over = None
        if runner_up is not None and len(pairs):
            pair = pairs[pairs["algorithm_y"] == runner_up["algorithm"]]
            if not pair.empty:
                p = pair.iloc[0]
                over = Estimate(float(p["probability_x_beats_y"]), float(p["ci_low"]), float(p["ci_high"]))
        found.append(Winner(
            env_id=str(env_id), max_steps=int(max_steps), algorithm=str(best["algorithm"]),
            runs=int(best["runs"]), iqm=_estimate(best, "iqm"), algorithms=len(ranked),
            runner_up=None if runner_up is None else str(runner_up["algorithm"]),
            runner_up_iqm=None if runner_up is None else _estimate(runner_up, "iqm"),
            over_runner_up=over, beaten=beaten))
    return found
