"""How long a stage took: kept out of its results, in ``logs/timings/<stage>.json``.

A wall-clock time differs between two runs that reproduce each other, so a stage's declared
outputs (its metrics.json included) hold none: a rerun that reproduces writes the same bytes, and
DVC's record (dvc.lock) and the results committed to git stay as they were. The stage writes its
timings here instead, as JSON shaped like its metrics (``{"training": {"wall_time_s": ...}}``),
keys ending in ``wall_time_s``. logs/ is ignored by git and by DVC, and no stage declares these
files: nothing depends on them. The report shows them where present, in its volatile spans
(stages/core/html.py), and leaves them out where they are not (a workspace filled by
``dvc pull`` has none).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from stages.core.io import write_json

FOLDER = Path("logs/timings")


def timings_path(stage: str, folder: str | os.PathLike = FOLDER) -> Path:
    """The file of DVC stage ``stage`` (e.g. ``dqn@dqn-42``)."""
    return Path(folder) / f"{stage}.json"


def write_timings(stage: str, timings: dict[str, Any], folder: str | os.PathLike = FOLDER) -> None:
    """Record ``stage``'s timings; written with the stage's outputs (stages/core/io.py), so a
    killed run leaves the previous run's."""
    write_json(timings_path(stage, folder), timings)


def read_timings(stage: str, folder: str | os.PathLike = FOLDER) -> dict[str, Any] | None:
    """``stage``'s timings, or None where it has none (never run here) or they do not read."""
    path = timings_path(stage, folder)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
