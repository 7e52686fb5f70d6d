"""Per environment and step cap, every algorithm beside every other: one table each, so that
"REINFORCE vs A2C vs PPO on LunarLander" is read in one place.

Built from the aggregate stage's outputs: ``summary.csv`` (each algorithm's runs and IQM with
its bootstrap interval) and ``probability_of_improvement.csv`` (P(X > Y) with its interval for
every ordered pair on the same environment and cap, and ``x_better``: the aggregate's claim rule).
A row per algorithm, best IQM first; a column per other algorithm holds P(row > column).

Published results of other implementations (RL Baselines3 Zoo) are set beside an algorithm where
``data/anchors.yaml`` has one for it: read by the report alone, so an anchor added or corrected
reruns nothing but the report (the book's own numbers are ``data/book_results.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from stages.core.settings import InputError
from stages.report.summary import Estimate

ANCHORS = Path("data/anchors.yaml")
ANCHOR_FIELDS = ("env_id", "max_steps", "source", "mean", "std", "environment_steps")


@dataclass(frozen=True)
class Anchor:
    """A published result for an algorithm: mean +/- std of its evaluation episodes."""

    source: str
    mean: float
    std: float | None
    environment_steps: int
    target: str | None = None  # what this project aims for (issue 34's targets)

    def text(self) -> str:
        spread = "" if self.std is None else f" +/- {self.std:.1f}"
        return f"{self.mean:.1f}{spread} at {self.environment_steps:,} steps"


def read_anchors(path: Path = ANCHORS) -> dict[tuple[str, str, int], Anchor]:
    """(algorithm, env_id, max_steps) -> its anchor; an entry lacking a field is refused by name."""
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    anchors = {}
    for algorithm, entry in data.items():
        missing = [f for f in ANCHOR_FIELDS if not isinstance(entry, dict) or f not in entry]
        if missing:
            raise InputError(f"{path}: {algorithm} lacks {', '.join(missing)}")
        anchors[(algorithm, entry["env_id"], int(entry["max_steps"]))] = Anchor(
            source=str(entry["source"]), mean=float(entry["mean"]),
            std=None if entry["std"] is None else float(entry["std"]),
            environment_steps=int(entry["environment_steps"]), target=entry.get("target"))
    return anchors


@dataclass(frozen=True)
class Row:
    algorithm: str
    runs: int
    iqm: Estimate
    mean: Estimate
    anchor: Anchor | None
    # P(this > other) per other algorithm, in the table's column order (None on the diagonal);
    # with whether the aggregate's claim rule supports "this beats other".
    against: tuple[tuple[Estimate | None, bool], ...]


@dataclass(frozen=True)
class Comparison:
    """Every algorithm on one environment and step cap."""

    env_id: str
    max_steps: int
    algorithms: tuple[str, ...]  # the column order: best IQM first
    rows: tuple[Row, ...]

    @property
    def anchored(self) -> bool:
        return any(row.anchor is not None for row in self.rows)

    def header(self) -> list[str]:
        """The Markdown table's header: P(> n) is P(row > the n-th row's algorithm)."""
        return ["#", "algorithm", "runs", "IQM [95% CI]", "mean [95% CI]", *(["published"] if self.anchored else []),
                *(f"P(> {n})" for n in range(1, len(self.algorithms) + 1))]

    def markdown_rows(self) -> list[list[str]]:
        """The Markdown table's cells; a P(X > Y) the intervals support as a claim in bold."""
        rows = []
        for n, row in enumerate(self.rows, 1):
            anchor = [] if not self.anchored else ["-" if row.anchor is None else
                                                   f"{row.anchor.text()} ({row.anchor.source})"]
            against = ["-" if p is None else f"**{p.text(2)}**" if supported else p.text(2)
                       for p, supported in row.against]
            rows.append([str(n), row.algorithm, str(row.runs), row.iqm.text(), row.mean.text(), *anchor, *against])
        return rows


def _estimate(row: Any, name: str) -> Estimate:
    return Estimate(float(row[name]), float(row[f"{name}_ci_low"]), float(row[f"{name}_ci_high"]))


def comparisons(summary: pd.DataFrame | None, pairs: pd.DataFrame | None,
                anchors: dict[tuple[str, str, int], Anchor] | None = None) -> list[Comparison]:
    """One table per (environment, cap), sorted by environment then cap (one algorithm alone on
    its environment gets its table too: its IQM beside its published result)."""
    if summary is None or summary.empty:
        return []
    anchors = anchors or {}
    found = []
    for (env_id, max_steps), group in summary.groupby(["env_id", "max_steps"], sort=True):
        ranked = group.sort_values(["iqm", "algorithm"], ascending=[False, True], kind="stable")
        order = tuple(str(a) for a in ranked["algorithm"])
        here = pd.DataFrame() if pairs is None else pairs[
            (pairs["env_id"] == env_id) & (pairs["max_steps"] == max_steps)]
        lookup = {(str(p["algorithm_x"]), str(p["algorithm_y"])): p for _, p in here.iterrows()}
        rows = []
        for _, best in ranked.iterrows():
            x = str(best["algorithm"])
            against = []
            for y in order:
                pair = lookup.get((x, y))
                against.append((None, False) if pair is None else (
                    Estimate(float(pair["probability_x_beats_y"]), float(pair["ci_low"]), float(pair["ci_high"])),
                    bool(pair["x_better"])))
            rows.append(Row(algorithm=x, runs=int(best["runs"]), iqm=_estimate(best, "iqm"),
                            mean=_estimate(best, "mean"), anchor=anchors.get((x, str(env_id), int(max_steps))),
                            against=tuple(against)))
        found.append(Comparison(env_id=str(env_id), max_steps=int(max_steps), algorithms=order, rows=tuple(rows)))
    return found
