"""What the report shows and how it judges it: experiments as the DAG declares them, what their
stages produced, and this run's result against the book's number (the page itself is rendered
from templates/ by ``__main__``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from stages.core.dag import StageSpec, consumes_outputs, experiments
from stages.core.settings import Bootstrap
from stages.policies.statistics import summarize_returns
from stages.core.timings import read_timings

REPORTS = Path("reports")
NOT_RUN = "not run yet"


@dataclass(frozen=True)
class Layout:
    """An experiment as dvc.yaml declares it: what it shows (paths relative to reports/), the
    settings its stages read, and the policies it exports."""

    name: str
    desc: str
    settings: dict[str, Any]
    module: str = ""  # the stage package (``dqn`` for ``dqn@double_dqn``): the page's section
    stage: str = ""  # the first training seed's stage (its timings are the ones shown)
    figures: tuple[str, ...] = ()
    gifs: tuple[str, ...] = ()
    texts: tuple[str, ...] = ()
    metrics: str | None = None
    policies: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()

    @classmethod
    def of(cls, name: str, stages: list[StageSpec]) -> Layout:
        """The layout of experiment ``name`` from its stages (the first training seed's files)."""
        first = stages[0]
        shown = [Path(out) for out in first.outs if Path(out).parts[0] == str(REPORTS)]
        relative = [out.relative_to(REPORTS).as_posix() for out in shown]
        metrics = [r for r in relative if r.endswith("metrics.json")]
        return cls(
            name=name, desc=first.desc, settings=first.params, module=first.module.split(".")[-1],
            stage=first.name,
            figures=tuple(r for r in relative if r.endswith(".png")),
            gifs=tuple(r for r in relative if r.endswith(".gif")),
            texts=tuple(r for r in relative if r.endswith(".txt")),
            metrics=metrics[0] if metrics else None,
            policies=tuple(Path(p).name for stage in stages for p in stage.policies),
            seeds=tuple(stage.seed for stage in stages if stage.seed is not None))


def experiment_layouts(stages: list[StageSpec]) -> dict[str, Layout]:
    """Every experiment of the DAG, in declaration order; the stages that read other stages'
    outputs (per-policy evaluation and conversion, the gathering stages, the report) are not
    experiments."""
    return {name: Layout.of(name, group) for name, group in experiments(stages).items()
            if not consumes_outputs(group[0], stages)}


# --- reading what the run produced -------------------------------------------------------------


def read_json(path: Path) -> Any | None:
    return json.loads(path.read_text()) if path.is_file() else None


def read_csv(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.is_file() else None


def dotted(data: Any, key: str) -> Any:
    """``data["a"]["b"][0]`` for key ``a.b.0``; keys may themselves hold dots (``0.9``), tried first."""
    parts = key.split(".")
    while parts:
        for n in range(len(parts), 0, -1):
            candidate = ".".join(parts[:n])
            if isinstance(data, dict) and candidate in data:
                data, parts = data[candidate], parts[n:]
                break
            if isinstance(data, list) and n == 1 and candidate.isdigit():
                data, parts = data[int(candidate)], parts[1:]
                break
        else:
            raise KeyError(key)
    return data


def wall_time_of(timings: Any) -> float | None:
    """A stage's own training time, where its timings (logs/timings/, stages/core/timings.py)
    record one: a workspace filled by ``dvc pull`` has none."""
    if isinstance(timings, dict):
        training = timings.get("training")
        if isinstance(training, dict) and "wall_time_s" in training:
            return float(training["wall_time_s"])
    return None


# --- this run against the book -----------------------------------------------------------------


@dataclass
class Measurement:
    """This run's side of a comparison: a summary of returns or a plain value, and its verdict."""

    text: str
    verdict: str
    stats: dict[str, Any] | None = None
    wall_time_s: float | None = None
    notes: list[str] = field(default_factory=list)
    timing: bool = False  # the value is a wall-clock time: volatile on the page


def returns_of(measured_by: dict[str, Any], returns: pd.DataFrame | None) -> tuple[pd.DataFrame | None, str]:
    """The held-out returns an experiment is judged on: its policy (every seed of it) at one step cap."""
    if "returns_csv" in measured_by:
        path = Path(measured_by["returns_csv"])
        frame = read_csv(path)
        count = 0 if frame is None else len(frame)
        return frame, f"the {path.parent.name} stage's own {count} episodes, at most {measured_by['max_steps']} steps"
    if returns is None:
        return None, ""
    name = measured_by["policy"]
    rows = returns[(returns["policy"] == name) | (returns["algorithm"] == name)]
    if "max_steps" in measured_by:
        rows = rows[rows["max_steps"] == measured_by["max_steps"]]
    if rows.empty:
        return None, ""
    policies = sorted(set(rows["policy"]))
    cap = int(rows["max_steps"].iloc[0])
    return rows, (f"{', '.join(policies)}: {len(rows)} held-out episodes, greedy, "
                  f"at most {cap} steps")


def interval_text(stats: dict[str, Any]) -> str:
    """A summary's mean and its 95% interval, as the overview prints them."""
    return f"{stats['mean']:.1f} [{stats['ci95_low']:.1f}, {stats['ci95_high']:.1f}]"


def judge_interval(book: float, stats: dict[str, Any]) -> str:
    """The book's value against the interval; a level to pass (at_least) reads the same way."""
    low, high = stats["ci95_low"], stats["ci95_high"]
    return "beats" if low > book else "below the book" if high < book else "matches"


def close(found: Any, expected: Any, tolerance: float) -> bool:
    if isinstance(expected, list):
        return isinstance(found, list) and len(found) == len(expected) and all(
            close(f, e, tolerance) for f, e in zip(found, expected))
    if expected is None or found is None:
        return expected is found
    return abs(float(found) - float(expected)) <= tolerance


def measure(layout: Layout, entry: dict[str, Any] | None, returns: pd.DataFrame | None,
            algorithms: dict[str, str], bootstrap: Bootstrap) -> Measurement:
    """This run's result for the overview: what the book entry names, or, for an experiment the
    book gives no number for, the held-out evaluation of its first algorithm."""
    wall = wall_time_of(read_timings(layout.stage)) if layout.stage else None
    if entry is None:
        evaluated = [algorithms[p] for p in layout.policies if p in algorithms]
        if not evaluated:
            if layout.policies:  # it exports policies, not evaluated yet
                return Measurement(NOT_RUN, NOT_RUN)
            return Measurement("-", "no book number", wall_time_s=wall)
        rows, description = returns_of({"policy": evaluated[0]}, returns)
        if rows is None:
            return Measurement(NOT_RUN, NOT_RUN)
        rows = rows[rows["max_steps"] == rows["max_steps"].min()]
        stats = summarize_returns(rows["return"].to_numpy(), resamples=bootstrap.resamples,
                                  seed=bootstrap.seed)
        return Measurement(interval_text(stats),
                           "no book number", stats, wall, [description])
    headline = entry["headline"]
    how, rule = headline["measured_by"], headline["verdict"]
    if "metrics" in how:
        data = read_json(Path(how["metrics"]))
        if data is None:
            return Measurement(NOT_RUN, NOT_RUN)
        value = dotted(data, how["key"])
        if rule == "exact":
            verdict = "matches" if close(value, headline["value"], headline.get("tolerance", 0)) else "differs"
            return Measurement(format_value(value), verdict, wall_time_s=wall)
        timing = how["key"].endswith("wall_time_s")
        return Measurement(format_value(value), "reference only (machine timing)" if timing else "reference only",
                           wall_time_s=wall, timing=timing)
    if "text" in how:
        path = Path(how["text"])
        if not path.is_file():
            return Measurement(NOT_RUN, NOT_RUN)
        runs = path.read_text().splitlines()
        book_runs = entry["details"]["runs"]["value"]
        same = sum(a == b for a, b in zip(runs, book_runs))
        verdict = "matches" if runs == book_runs else "differs"
        return Measurement(f"{same} of {len(book_runs)} runs identical to the book's", verdict)
    rows, description = returns_of(how, returns)
    if rows is None:
        return Measurement(NOT_RUN, NOT_RUN)
    stats = summarize_returns(rows["return"].to_numpy(), resamples=bootstrap.resamples, seed=bootstrap.seed)
    text = interval_text(stats)
    verdict = "no book number" if rule == "none" else judge_interval(float(headline["value"]), stats)
    return Measurement(text, verdict, stats, wall, [description])


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.9g}"
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return "-" if value is None else str(value)
