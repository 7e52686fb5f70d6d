"""One look for every figure, and saving that never leaves half a PNG."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from stages.core.io import atomic_path  # noqa: E402

if TYPE_CHECKING:
    import pandas as pd

STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "savefig.bbox": "tight",
    "font.size": 11,
    "axes.titlesize": 13,
    "axes.labelsize": 12,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 2,
    "legend.frameon": False,
}


def new_figure(*args, **kwargs) -> tuple[plt.Figure, object]:
    """``plt.subplots`` under the pipeline's style."""
    with plt.rc_context(STYLE):
        return plt.subplots(*args, **kwargs)


def save_figure(fig: plt.Figure, path: str | os.PathLike) -> None:
    # No software/date metadata, so a rerun with the same data gives the same bytes.
    with plt.rc_context(STYLE), atomic_path(path) as tmp:
        fig.savefig(tmp, metadata={"Software": None})
    plt.close(fig)


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
