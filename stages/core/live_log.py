"""Training logs through DVCLive: one folder per training run, a named step, scalar metrics.

Every trainer writes its history the same way (see :class:`TrainingLive`):

    <data folder of the run>/dvclive/metrics.json             the latest value of each metric,
                                                              ``step`` and ``step_name``
    <data folder of the run>/dvclive/plots/metrics/<m>.tsv    one file per metric: ``step``, ``<m>``

``step`` is the run's own counter, named by ``step_name`` in metrics.json and in the stage's
docstring: ``iteration`` (nn_policy, REINFORCE, the TF-Agents stages) or ``episode`` (dqn). The
files hold no wall-clock time (no timestamps, no ``wall_time_s`` metric), so two identical runs
write identical bytes (a stage's timings go to logs/timings/, stages/core/timings.py).

The folder is one of the stage's outputs and is replaced with the others, as one set
(stages/core/io.py): while the stage runs, the log grows in a temporary sibling folder,
``<data folder of the run>/.dvclive.tmp-<pid>/`` (printed when training starts), and it takes the
place of ``dvclive`` only when the stage has written everything else. A killed run thus leaves the
previous run's complete log beside the previous policy, figures and metrics; the next run of the
stage removes the killed run's folder. To watch a run live, point DVC at the temporary folder,
e.g. ``dvc plots show data/dqn/dqn/s42/.dvclive.tmp-1234/plots/metrics``.

dvc.yaml declares the folder's ``metrics.json`` as the stage's metrics and ``plots/metrics`` as
its plots (``x: step``), and is the only declaration: DVCLive is opened without writing a
dvc.yaml of its own (``dvcyaml=None``), a report or an experiment (``save_dvc_exp=False``).

Inside ``dvc repro`` DVCLive would still open the DVC repository (reading git for a baseline
revision, picking an experiment name, reading Studio's settings, and in a git repository without
``.dvc`` even running ``dvc init``), and under ``dvc exp run`` it would ``git add`` untracked
files of its folder when it ends. A stage is run by DVC or Snakemake and must touch nothing but
its outputs, so :class:`StageLive` skips that start-up (and Studio) altogether; the logger then
only writes files. ``Live.end`` and ``Live.next_step`` are not called for the same reason:
:class:`TrainingLive` sets the step itself and rewrites metrics.json after each row.

Resuming (the Atari stage) does not use ``Live(resume=True)``, which continues from whatever
metrics.json holds: rows logged after the last checkpoint by a run that was then killed would
stay in the history. The checkpoint keeps the rows up to its own iteration instead, and a
resumed run logs them again into a fresh folder before going on (``history`` below), so the
folder comes out the same whether or not the run was interrupted.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from dvclive import Live

from stages.core.io import atomic_folder

FOLDER = "dvclive"
STEP = "step"  # DVCLive's column
STEP_NAME = "step_name"  # the summary key naming what a step counts
METRICS_FILE = "metrics.json"
WALL_TIME = "wall_time_s"  # the suffix of wall-clock values (see pipeline/reproduction.py)
PLOTS = Path("plots") / "metrics"


class StageLive(Live):
    """DVCLive's logger for a pipeline stage: files only, no repository, experiment or Studio."""

    def _init_dvc(self) -> None:  # Live's start-up that opens the DVC and git repository
        self._save_dvc_exp = False

    def _init_studio(self) -> None:
        self._studio_events_to_skip.update({"start", "data", "done"})


def _scalar(value: object) -> int | float:
    """Python int for integers (written ``12``), float otherwise (``12.5``, ``nan``)."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    return float(value)  # type: ignore[arg-type]


class TrainingLive:
    """A training run's history: ``log(step, name=value, ...)`` per step, ``close()`` at the end.

    The rows are also kept in memory (:meth:`frame`), with the step under its name, for the
    stage's figures and metrics. ``history`` (rows of an interrupted run, each with the step
    under ``step_name``) is logged first.
    """

    def __init__(self, folder: str | os.PathLike, step_name: str,
                 history: Iterable[Mapping[str, object]] = ()) -> None:
        self.folder = Path(folder)
        self.step_name = step_name
        self._writing = atomic_folder(self.folder)  # swapped in by close(), with the stage's outputs
        self.live_folder = self._writing.__enter__()
        print(f"training log (while the stage runs): {self.live_folder}", flush=True)
        self._live = StageLive(dir=str(self.live_folder), resume=False, report=None,
                               save_dvc_exp=False, dvcyaml=None)
        self._live.summary[STEP_NAME] = step_name
        self._rows: list[dict[str, int | float]] = []
        self._start = time.perf_counter()
        for row in history:
            self.log(int(row[step_name]), **row)  # type: ignore[arg-type]

    def log(self, step: int, **metrics: object) -> None:
        """Append one row. A value under the step's own name is the step (left out), and wall-clock
        values (names ending in ``wall_time_s``) are left out: they differ between identical runs."""
        if self._rows and step <= self._rows[-1][self.step_name]:
            last = self._rows[-1][self.step_name]
            raise ValueError(f"{self.folder}: {self.step_name} {step} logged after {last}; steps must increase")
        values = {name: _scalar(value) for name, value in metrics.items()
                  if name != self.step_name and not name.endswith(WALL_TIME)}
        self._live.step = int(step)
        for name, value in values.items():
            self._live.log_metric(name, value, timestamp=False)
        self._rows.append({self.step_name: int(step), **values})
        self._live.make_summary()  # metrics.json follows the run: `dvc metrics show` while it trains

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self._rows)

    def mean_return_over_last(self, steps: int, column: str = "mean_return") -> float:
        returns = self.frame()[column].to_numpy(dtype=float)[-steps:]
        return float(np.nanmean(returns)) if np.isfinite(returns).any() else math.nan

    @property
    def wall_time_s(self) -> float:
        """Seconds since the log was opened (for the stage's timings, stages/core/timings.py)."""
        return round(time.perf_counter() - self._start, 3)

    def close(self) -> None:
        """Write metrics.json (the latest value of each metric, the last ``step`` and its name)
        and hand the folder over: it replaces ``folder`` with the stage's other outputs."""
        self._live.make_summary()
        if self._writing is not None:
            writing, self._writing = self._writing, None
            writing.__exit__(None, None, None)


def read_history(folder: str | os.PathLike) -> pd.DataFrame:
    """A DVCLive folder's metrics, one row per step, the step column under its ``step_name``."""
    folder = Path(folder)
    summary_file, plots = folder / METRICS_FILE, folder / PLOTS
    if not summary_file.is_file() or not plots.is_dir():
        raise FileNotFoundError(f"{folder} is not a DVCLive folder with {METRICS_FILE} and {PLOTS}/: "
                                "run the training stage that writes it")
    step_name = json.loads(summary_file.read_text()).get(STEP_NAME, STEP)
    frame: pd.DataFrame | None = None
    for tsv in sorted(plots.glob("*.tsv")):
        metric = pd.read_csv(tsv, sep="\t")
        frame = metric if frame is None else frame.merge(metric, on=STEP, how="outer")
    if frame is None:
        raise FileNotFoundError(f"{plots} holds no .tsv file")
    return frame.sort_values(STEP).rename(columns={STEP: step_name}).reset_index(drop=True)
