"""Training logs: one row per iteration (mean return, loss, wall time) as a CSV and a curve.

Every training stage keeps the same columns, so curves can be compared and plotted alike. The
wall-clock column is named ``wall_time_s``: the reproducibility tests drop such columns before
comparing two runs, and keep everything else byte for byte.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import pandas as pd

from stages.common.io import write_csv
from stages.common.plotting import new_figure, save_figure

COLUMNS = ("iteration", "mean_return", "loss", "wall_time_s")


class TrainingLog:
    """Rows of (iteration, mean return, loss, seconds since the log was created)."""

    def __init__(self) -> None:
        self._start = time.perf_counter()
        self._rows: list[tuple[int, float, float, float]] = []

    def record(self, iteration: int, mean_return: float, loss: float) -> None:
        """``mean_return`` may be NaN when no episode has ended yet (written as an empty cell)."""
        self._rows.append((iteration, float(mean_return), float(loss),
                           round(time.perf_counter() - self._start, 3)))

    @property
    def wall_time_s(self) -> float:
        return round(time.perf_counter() - self._start, 3)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self._rows, columns=list(COLUMNS))

    def mean_return_over_last(self, iterations: int) -> float:
        returns = self.frame()["mean_return"].to_numpy()[-iterations:]
        return float(np.nanmean(returns)) if np.isfinite(returns).any() else math.nan

    def write(self, path: str | os.PathLike) -> None:
        write_csv(path, self.frame())


def plot_learning_curve(log: pd.DataFrame, path: str | os.PathLike, title: str, *,
                        reference: dict[str, float] | None = None, loss: bool = False) -> None:
    """Mean return per iteration (and the loss, if asked), with dashed reference levels."""
    panels = 2 if loss else 1
    fig, axes = new_figure(1, panels, figsize=(6 * panels, 4), squeeze=False)
    ax = axes[0][0]
    ax.plot(log["iteration"], log["mean_return"], label="mean return")
    for i, (label, level) in enumerate((reference or {}).items()):
        ax.axhline(level, linestyle="--", linewidth=1, color=f"C{i + 1}", label=label)
    ax.set_xlabel("iteration")
    ax.set_ylabel("mean return")
    ax.set_title(title)
    if reference:
        ax.legend(loc="lower right")
    if loss:
        axes[0][1].plot(log["iteration"], log["loss"], color="C3")
        axes[0][1].set_xlabel("iteration")
        axes[0][1].set_ylabel("loss")
        axes[0][1].set_title("training loss")
    save_figure(fig, path)
