"""One look for every figure, and saving that never leaves half a PNG."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from stages.common.io import atomic_path  # noqa: E402

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
