"""The report's own figures: one interval figure per environment, readable at any number of seeds.

The evaluate stage draws every policy in one column (a row per policy and step cap: 58 policies in
the full profile make a figure taller than a screen). Here a row is an *algorithm*: its training
seeds' policies sit side by side in the row's band, each seed in the same colour in every row and
figure (a dot: the held-out mean; a thin bar: its 95% bootstrap interval), and, where the aggregate
stage has run, a wide pale bar behind them gives the IQM across seeds with its interval. A policy
without a training seed is a black dot on a row of its own (the book's Atari runs carry their one
seed, 42, from the gathered evaluation). Step caps (CartPole's 200 and 500) are panels side by
side, so the figure's height grows with algorithms, not policies.

Where training logs count environment steps (the Atari stage's, the book's recipe and the others
of atari_dqn.recipes; A2C's, PPO's and SAC's), their learning curves share an axis whatever a
run's steps per iteration or length: one figure per such environment draws the aggregate's curves (IQM across seeds, its
interval shaded; a single run is its own line) against environment steps, and the sections of the
experiments drawn in it show it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from stages.core.io import atomic_folder
from stages.core.plotting import new_figure, save_figure

FOLDER = "report"  # reports/report/: the report's own figures
ROW_HEIGHT = 0.42  # inches per algorithm row
NO_SEED = "black"


@dataclass(frozen=True)
class EnvironmentFigure:
    """One environment's figure: its path relative to reports/ and what it shows."""

    env_id: str
    path: str
    algorithms: int
    policies: int
    caps: tuple[int, ...]


def slug(env_id: str) -> str:
    """A file-name-safe form of an environment id (``ALE/Breakout-v5`` -> ``ALE_Breakout-v5``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", env_id)


def seed_colours(summary: pd.DataFrame) -> dict[int, str]:
    """Each training seed's colour, the same in every figure (seeds in order of first appearance)."""
    seeds = list(dict.fromkeys(int(s) for s in summary["seed"].dropna()))
    return {seed: f"C{i % 10}" for i, seed in enumerate(seeds)}


def _rows(frame: pd.DataFrame) -> list[str]:
    """The algorithms of one environment, top to bottom: sorted by name."""
    return sorted(set(frame["algorithm"].fillna(frame["policy"])))


def _draw_panel(ax, rows: list[str], at_cap: pd.DataFrame, aggregate: pd.DataFrame | None,
                colours: dict[int, str]) -> None:
    positions = {name: len(rows) - 1 - i for i, name in enumerate(rows)}
    for name, y in positions.items():
        if aggregate is not None:
            agg = aggregate[aggregate["algorithm"] == name]
            if not agg.empty:
                a = agg.iloc[0]
                ax.fill_betweenx([y - 0.42, y + 0.42], a["iqm_ci_low"], a["iqm_ci_high"], color="0.85",
                                 linewidth=0, zorder=0)
                ax.vlines(a["iqm"], y - 0.42, y + 0.42, color="0.35", linewidth=2, zorder=1)
        policies = at_cap[at_cap["algorithm"].fillna(at_cap["policy"]) == name]
        policies = policies.sort_values("seed", key=lambda s: s.map(lambda v: list(colours).index(int(v))
                                                                     if pd.notna(v) else -1))
        offsets = np.linspace(-0.3, 0.3, len(policies)) if len(policies) > 1 else np.zeros(1)
        for offset, row in zip(offsets, policies.itertuples()):
            colour = colours[int(row.seed)] if pd.notna(row.seed) else NO_SEED
            ax.errorbar(row.mean, y + offset, xerr=[[row.mean - row.ci95_low], [row.ci95_high - row.mean]],
                        fmt="o", markersize=4, color=colour, elinewidth=1, capsize=0, zorder=2)
    ax.set_yticks(list(positions.values()), list(positions))
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.grid(axis="y", visible=False)


def plot_environment(env_id: str, frame: pd.DataFrame, aggregate: pd.DataFrame | None,
                     colours: dict[int, str], path: Path) -> EnvironmentFigure:
    """One environment: a panel per step cap, a row per algorithm."""
    caps = sorted(int(c) for c in frame["max_steps"].unique())
    rows = _rows(frame)
    fig, axes = new_figure(1, len(caps), squeeze=False, sharey=True, constrained_layout=True,
                           figsize=(4.2 * len(caps) + 1.8, ROW_HEIGHT * len(rows) + 1.6))
    for ax, cap in zip(axes[0], caps):
        at_cap = aggregate[(aggregate["env_id"] == env_id) & (aggregate["max_steps"] == cap)] \
            if aggregate is not None else None
        _draw_panel(ax, rows, frame[frame["max_steps"] == cap], at_cap, colours)
        ax.set_title(f"at most {cap} steps", fontsize=11)
        ax.set_xlabel("held-out mean return", fontsize=10)
    shown = [s for s in colours if s in set(frame["seed"].dropna().astype(int))]
    handles = [Line2D([], [], marker="o", linestyle="", markersize=5, color=colours[s], label=f"seed {s}")
               for s in shown]
    if aggregate is not None and not aggregate[aggregate["env_id"] == env_id].empty:
        handles.append(Patch(facecolor="0.85", edgecolor="0.35", label="IQM across seeds, 95% CI"))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=9)
    fig.suptitle(f"{env_id}: held-out mean return, 95% bootstrap intervals", fontsize=12)
    save_figure(fig, path)
    return EnvironmentFigure(env_id, f"{FOLDER}/{path.name}", len(rows), frame["policy"].nunique(),
                             tuple(caps))


ENVIRONMENT_STEPS = "environment_steps"  # the aggregate's x for logs that count environment steps


def plot_curves(env_id: str, curves: pd.DataFrame, path: Path) -> None:
    """One environment's learning curves against environment steps, an algorithm per line."""
    fig, ax = new_figure(figsize=(7.5, 4.5), constrained_layout=True)
    for i, (algorithm, curve) in enumerate(curves.groupby("algorithm", sort=True)):
        curve = curve.sort_values("x")
        runs = int(curve["runs"].iloc[0])
        ax.plot(curve["x"], curve["iqm"], color=f"C{i}",
                label=f"{algorithm} ({runs} training seed{'s' if runs != 1 else ''})")
        if runs > 1:
            ax.fill_between(curve["x"], curve["ci_low"], curve["ci_high"], color=f"C{i}", alpha=0.2)
    ax.set_xlabel("environment steps (agent steps; after any random warm-up)")
    ax.set_ylabel("training return, recent episodes (IQM across seeds)")
    ax.legend(loc="upper left", fontsize=9)
    ax.set_title(f"{env_id}: learning curves, shaded 95% bootstrap interval across seeds", fontsize=11)
    save_figure(fig, path)


def report_figures(summary: pd.DataFrame | None, aggregate: pd.DataFrame | None, curves: pd.DataFrame | None,
                   reports: Path) -> tuple[list[EnvironmentFigure], dict[str, str]]:
    """Write reports/report/ anew: one interval figure per environment (sorted by id; none without
    an evaluation), and one learning-curve figure per environment whose curves count environment
    steps. Returns the interval figures, and algorithm -> its curve figure (relative to reports/)."""
    figures: list[EnvironmentFigure] = []
    shown: dict[str, str] = {}
    with atomic_folder(reports / FOLDER) as folder:
        if curves is not None and not curves.empty:
            stepped = curves[curves["x_name"] == ENVIRONMENT_STEPS]
            for env_id, group in stepped.groupby("env_id", sort=True):
                name = f"learning_curves_{slug(env_id)}.png"
                plot_curves(env_id, group, folder / name)
                shown.update({algorithm: f"{FOLDER}/{name}" for algorithm in group["algorithm"].unique()})
        if summary is None or summary.empty:
            return figures, shown
        colours = seed_colours(summary)
        for env_id in sorted(summary["env_id"].unique()):
            figures.append(plot_environment(env_id, summary[summary["env_id"] == env_id], aggregate, colours,
                                            folder / f"intervals_{slug(env_id)}.png"))
    return figures, shown
