"""The book's reported numbers, read from the one file that holds them (data/book_results.yaml).

Stages that draw the book's level on a figure, the report that sets the book beside this run, and
the tests that check the exact computations all read it here, so a number is corrected once.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

import yaml

BOOK_RESULTS = Path("data/book_results.yaml")


@cache
def _read(path: str) -> dict[str, Any]:
    with open(path) as handle:
        return yaml.safe_load(handle)["experiments"]


def book_experiments(path: str | os.PathLike = BOOK_RESULTS) -> dict[str, Any]:
    """Every experiment's entry: title, section, headline (value, what, source, verdict, measured_by), details."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} not found: the book's numbers live there (git-tracked)")
    return _read(str(path))


def book_value(experiment: str, detail: str | None = None,
               path: str | os.PathLike = BOOK_RESULTS) -> Any:
    """The headline value of ``experiment``, or the value of one of its ``details``."""
    entry = book_experiments(path)[experiment]
    return entry["headline"]["value"] if detail is None else entry["details"][detail]["value"]
