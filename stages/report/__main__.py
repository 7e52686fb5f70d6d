"""The report: one page where a reader sees, per experiment, what the book reported and what this run got.

``reports/index.html`` is rendered from the Jinja2 templates in ``templates/`` (autoescaping on:
every name and number from the run's files is escaped; only markup the templates write is
markup). It opens from disk or from a web server without network access: figures and GIFs are
linked by paths relative to the page, and it has no scripts. The page is a function of the
committed results (metrics, the gathered evaluation, the aggregate's tables: see
docs/experiments/report.md): it reads no model and no image, so it builds on a clone that has
none; an image not there shows its placeholder text. It holds, in order,

- the summary: one row per experiment of the DAG with the book's number where it reported one
  (data/book_results.yaml, keyed by experiment), this run's result with its 95% bootstrap
  interval, a verdict by the rule stated on the page and the wall time; then, per environment and
  step cap, the algorithm leading across training seeds (IQM with its interval, from the aggregate
  stage) and what the probability of improvement says of its lead (stages/report/summary.py);
  and per environment and step cap, every algorithm in one table: IQM with its interval, P(X > Y)
  against each other one, and a published result where data/anchors.yaml has one
  (stages/report/comparison.py);
- the held-out evaluation of every policy, with one interval figure per environment drawn here
  (stages/report/figures.py, into reports/report/);
- a section per stage package (its anchor is the package name: ``#dqn``), with a subsection per
  experiment of it (``#dqn@double_dqn``) where it has several: the settings its stages read (as
  DVC resolves them), its figures and GIFs side by side (with, where its training logs count
  environment steps, its environment's learning curves from the aggregate: the Atari recipes
  beside the book's; A2C beside PPO), texts, the held-out evaluation of the
  policies it exports and the book's other numbers. A new experiment, variant, configuration or
  game gets its section with no code here;
- sections for the multi-seed aggregate and the Raspberry Pi bundle, from their files when present;
- provenance: the DVC hashes of the exported policies (as their evaluation recorded them), package
  versions from uv.lock, and (marked volatile, see stages/core/html.py) git commit, working-tree
  state, machine, date and the evaluation's wall times.

A sidebar links to every section. ``reports/summary.md`` holds the summary's tables in
Markdown, for documentation to link to. What is not there yet (an Atari game not trained, a stage
not run) is shown as "not run yet".
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup, escape

from stages.core.book import BOOK_RESULTS, book_experiments
from stages.core.dag import StageSpec, read_dag
from stages.core.html import volatile
from stages.core.io import write_text
from stages.core.settings import Bootstrap, InputError, Params, run_stage
from stages.core.timings import read_timings
from stages.report import settings
from stages.report.comparison import Anchor, comparisons, read_anchors
from stages.report.figures import report_figures
from stages.report.results import (
    NOT_RUN,
    REPORTS,
    Layout,
    Measurement,
    experiment_layouts,
    format_value,
    measure,
    read_csv,
    read_json,
)
from stages.report.summary import winners

PAGE = REPORTS / "index.html"
SUMMARY = REPORTS / "summary.md"
TEMPLATES = Path(__file__).parent / "templates"
EVALUATION = REPORTS / "evaluate"
AGGREGATE = REPORTS / "aggregate"
PI_BUNDLE = REPORTS / "pi_bundle"
# Packages whose versions decide the numbers (uv.lock pins them all; these are the ones that matter).
KEY_PACKAGES = ("tensorflow-cpu", "tf-keras", "tf-agents", "tensorflow-probability", "gymnasium",
                "ale-py", "box2d-py", "numpy", "scipy", "pandas", "matplotlib", "pillow", "dvc",
                "snakemake", "ai-edge-litert")
VERDICT_CLASSES = {"matches": "verdict-matches", "beats": "verdict-beats", "below the book": "verdict-below",
                   "differs": "verdict-differs", NOT_RUN: "missing"}


def package_versions(lock: Path = Path("uv.lock")) -> dict[str, str]:
    if not lock.is_file():
        return {}
    packages = {p["name"]: p.get("version", "?") for p in tomllib.loads(lock.read_text()).get("package", [])}
    return {name: packages[name] for name in KEY_PACKAGES if name in packages}


def git_state() -> tuple[str, str]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "not a git repository", "unknown"
    return commit, ("dirty: " + ", ".join(line[3:] for line in changed.splitlines())) if changed else "clean"


# --- the templates -------------------------------------------------------------------------------


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def volatile_filter(value: Any) -> Markup:
    """``{{ x | volatile }}``: the value, escaped, inside the page's volatile span."""
    return Markup(volatile(str(escape(value))))


def markdown_cell(value: Any) -> Markup:
    """A value for a Markdown table cell: ``&``, ``<`` and ``>`` as entities (Markdown passes HTML
    through, so a name holding a tag must not become one), pipes escaped, line breaks made spaces."""
    text = str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return Markup(text.replace("|", "\\|").replace("\n", " "))


def templates() -> Environment:
    environment = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(enabled_extensions=("html",), disabled_extensions=("md",), default=True),
        undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    environment.filters.update(volatile=volatile_filter, md=markdown_cell, seconds=seconds, value=format_value)
    return environment


# --- what the page shows, as plain data ------------------------------------------------------------


def evaluation_wall_time(policy: str, max_steps: int) -> float | None:
    """A per-policy evaluation's wall time, where this machine ran it (logs/, not a result: volatile)."""
    timings = read_timings(f"evaluate/{policy}")  # stages/evaluate/policy.py
    return (timings or {}).get("wall_time_s", {}).get(f"max_steps_{max_steps}")


def evaluation_rows(summary: pd.DataFrame | None, names: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    if summary is None:
        return []
    rows = summary if names is None else summary[summary["policy"].isin(names) | summary["algorithm"].isin(names)]
    return [{"policy": r.policy, "max_steps": r.max_steps, "episodes": r.episodes, "mean": f"{r.mean:.1f}",
             "ci": f"[{r.ci95_low:.1f}, {r.ci95_high:.1f}]", "std": f"{r.std:.1f}", "median": f"{r.median:.1f}",
             "iqm": f"{r.iqm:.1f}", "min": f"{r.min:.0f}", "max": f"{r.max:.0f}",
             "wall_time_s": evaluation_wall_time(r.policy, r.max_steps)}
            for r in rows.itertuples()]


def book_view(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    if entry is None:
        return None
    headline = entry["headline"]
    value = headline["value"]
    details = [{"name": name, "value": d["value"] if isinstance(d["value"], str) else format_value(d["value"]),
                "source": d["source"]} for name, d in (entry.get("details") or {}).items() if name != "runs"]
    return {"title": entry["title"], "section": entry["section"], "what": headline["what"], "source": headline["source"],
            "value": "-" if value is None else value if isinstance(value, str) else format_value(value),
            "details": details}


def measurement_view(m: Measurement) -> dict[str, Any]:
    return {"text": m.text, "missing": m.text == NOT_RUN, "timing": m.timing, "verdict": m.verdict,
            "verdict_class": VERDICT_CLASSES.get(m.verdict, ""), "notes": m.notes, "wall_time_s": m.wall_time_s}


def anchors_of(layout: Layout, anchors: dict[tuple[str, str, int], Anchor]) -> list[dict[str, Any]]:
    """The published results of the algorithms an experiment exports (``<algorithm>_s<seed>``)."""
    algorithms = {policy.rsplit("_s", 1)[0] for policy in layout.policies}
    return [{"algorithm": algorithm, "env_id": env_id, "max_steps": cap, "text": anchor.text(),
             "source": anchor.source, "target": anchor.target}
            for (algorithm, env_id, cap), anchor in sorted(anchors.items()) if algorithm in algorithms]


def experiment_view(layout: Layout, entry: dict[str, Any] | None, m: Measurement,
                    summary: pd.DataFrame | None,
                    anchors: dict[tuple[str, str, int], Anchor] | None = None,
                    curves: dict[str, str] | None = None) -> dict[str, Any]:
    """One experiment's section; ``curves``: algorithm -> its environment's learning-curve figure."""
    algorithms = set() if summary is None else set(
        summary.loc[summary["policy"].isin(layout.policies), "algorithm"])
    shared = sorted({figure for algorithm, figure in (curves or {}).items() if algorithm in algorithms})
    return {
        "name": layout.name, "module": layout.module, "desc": layout.desc, "book": book_view(entry),
        "anchors": anchors_of(layout, anchors or {}),
        "result": measurement_view(m), "seeds": list(layout.seeds),
        "settings": yaml.safe_dump(layout.settings, sort_keys=False, default_flow_style=None)
        if layout.settings else "",
        "figures": [*layout.figures, *shared], "gifs": list(layout.gifs),
        "texts": [{"path": t, "content": (REPORTS / t).read_text() if (REPORTS / t).is_file() else None}
                  for t in layout.texts],
        "has_policies": bool(layout.policies), "evaluation": evaluation_rows(summary, layout.policies),
        "metrics": layout.metrics, "metrics_present": bool(layout.metrics) and (REPORTS / layout.metrics).is_file(),
    }


def sections(experiments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Experiments grouped by stage package, in declaration order: one page section each; the
    package's experiments are its subsections unless it has one of its own name."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for experiment in experiments:
        grouped.setdefault(experiment["module"] or experiment["name"], []).append(experiment)
    return [{"id": module, "experiments": group, "nested": not (len(group) == 1 and group[0]["name"] == module)}
            for module, group in grouped.items()]


def frame_table(path: Path) -> dict[str, Any] | None:
    frame = read_csv(path)
    if frame is None:
        return None
    return {"columns": list(frame.columns),
            "rows": [[format_value(v) if isinstance(v, float) else str(v) for v in row]
                     for row in frame.itertuples(index=False)]}


def aggregate_view() -> dict[str, Any]:
    claims = AGGREGATE / "supported_comparisons.txt"
    summary = frame_table(AGGREGATE / "summary.csv")
    figures = ["aggregate/interval_estimates.png", "aggregate/learning_curves.png"] if summary else []
    return {"summary": summary, "figures": figures,
            "claims": claims.read_text() if claims.is_file() else None,
            "comparisons": frame_table(AGGREGATE / "probability_of_improvement.csv"),
            "metrics": (AGGREGATE / "metrics.json").is_file()}


def pi_bundle_rows() -> list[dict[str, str]] | None:
    benchmark = read_json(PI_BUNDLE / "benchmark.json")
    if benchmark is None:
        return None
    rows = []
    kinds = ("original", "float32", "int8")
    for name, values in sorted(benchmark.items()):
        if not isinstance(values, dict) or "int8" not in values:
            continue
        evaluation, latency, size, int8 = values["evaluation"], values["latency"], values["size_bytes"], values["int8"]
        target = {True: " (meets the target)", False: " (below the target)"}.get(int8.get("meets_target"), "")
        rounding, before = int8.get("input_rounding_agreement"), int8.get("post_training_action_agreement")
        rows.append({
            "policy": name, "float32_diff": f"{values['float32']['max_abs_diff']:.1e}",
            "int8_agreement": f"{int8['action_agreement']:.4f}{target}",
            "post_training_agreement": "-" if before is None else f"{before:.4f}",
            "rounding_agreement": "-" if rounding is None else f"{rounding:.4f}",
            "default": values.get("default_precision", "-"),
            "returns": " / ".join(f"{evaluation[k]['mean']:.1f}" for k in kinds),
            "latency": " / ".join(f"{latency[k]['median_wall_time_s'] * 1e6:.1f}" for k in kinds),
            "size": " / ".join(f"{size[k] / 1024:.1f}" for k in kinds)})
    return rows


def provenance_view(summary: pd.DataFrame | None) -> dict[str, Any]:
    commit, state = git_state()
    machine = (f"{platform.node()}, {platform.machine()}, {os.cpu_count()} CPU cores, "
               f"{platform.platform()}, Python {platform.python_version()}")
    return {"commit": commit, "state": state, "machine": machine,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "hashes": [] if summary is None else
                      [{"policy": r.policy, "md5": r.policy_md5, "stage": r.stage}
                       for r in summary.drop_duplicates("policy").itertuples()],
            "versions": package_versions()}


def missing_inputs(stages: list[StageSpec]) -> list[str]:
    """The report stage's deps in dvc.yaml that are not there, each with the stages that make it."""
    report = next(stage for stage in stages if stage.module == "stages.report")
    missing = []
    for dep in report.deps:
        if Path(dep).exists():
            continue
        makers = [s.name for s in stages if any(out == dep or out.startswith(f"{dep}/") for out in s.outs)]
        shown = ", ".join(makers[:3]) + (f" and {len(makers) - 3} more" if len(makers) > 3 else "")
        missing.append(f"{dep} (made by {shown})" if makers else dep)
    return missing


def context(stages: list[StageSpec], profile: str, bootstrap: Bootstrap, partial: bool = True) -> dict[str, Any]:
    """Everything the templates show, read from the run's files (sorted where read from a folder);
    ``partial``: a policy not trained yet is shown as not run yet instead of refused."""
    book = book_experiments(BOOK_RESULTS)
    layouts = experiment_layouts(stages)
    unknown = sorted(set(book) - set(layouts))
    if unknown:
        raise InputError(f"{BOOK_RESULTS} has entries for {', '.join(unknown)}, which are not "
                         f"experiments of dvc.yaml (known: {', '.join(layouts)})")
    returns, summary = read_csv(EVALUATION / "returns.csv"), read_csv(EVALUATION / "summary.csv")
    aggregate_summary = read_csv(AGGREGATE / "summary.csv")
    intervals, curves = report_figures(summary, aggregate_summary, read_csv(AGGREGATE / "learning_curves.csv"),
                                       REPORTS)
    # Policy -> algorithm, for the policies evaluated (one not evaluated yet is shown as not run yet).
    algorithms = {} if summary is None else dict(zip(summary["policy"], summary["algorithm"]))
    anchors = read_anchors()
    experiments = [experiment_view(layout, book.get(name),
                                   measure(layout, book.get(name), returns, algorithms, bootstrap), summary,
                                   anchors, curves)
                   for name, layout in layouts.items()]
    pairs = read_csv(AGGREGATE / "probability_of_improvement.csv")
    evaluation = read_json(EVALUATION / "metrics.json")
    return {
        "profile": profile, "quick": profile == "quick", "policy_count": len(algorithms),
        "experiments": experiments, "sections": sections(experiments),
        "winners": winners(aggregate_summary, pairs),
        "comparisons": comparisons(aggregate_summary, pairs, anchors),
        "aggregate_present": aggregate_summary is not None,
        "evaluation": {
            "present": summary is not None, "rows": evaluation_rows(summary),
            "first_seed": evaluation["seeds"]["first"] if evaluation else None,
            "files": [f"evaluate/{f}" for f in ("summary.csv", "returns.csv", "metrics.json")
                      if (EVALUATION / f).is_file()],
            "all_policies_figure": "evaluate/intervals.png" if summary is not None else None,
            "figures": intervals},
        "aggregate": aggregate_view(), "pi_bundle": pi_bundle_rows(), "provenance": provenance_view(summary),
        "not_run": NOT_RUN,
    }


def render(stages: list[StageSpec], profile: str, bootstrap: Bootstrap,
           partial: bool = True) -> tuple[str, str]:
    """The page and the Markdown summary."""
    data = context(stages, profile, bootstrap, partial)
    environment = templates()
    return environment.get_template("index.html").render(data), environment.get_template("summary.md").render(data)


def main(argv: list[str] | None = None) -> None:
    cfg = settings(sys.argv[1:] if argv is None else argv, Params.load())
    stages = read_dag()
    missing = [] if cfg.partial else missing_inputs(stages)
    if missing:
        raise InputError("the report's inputs are missing, nothing was written: " + "; ".join(missing)
                         + ". Run the stages that make them first (`dvc repro report`), or "
                         "`python -m stages.report --partial` to render what exists")
    page, summary = render(stages, cfg.pipeline.profile, cfg.bootstrap, cfg.partial)
    write_text(PAGE, page)
    write_text(SUMMARY, summary)
    print(f"report: {PAGE.resolve()}, {SUMMARY.resolve()}")


if __name__ == "__main__":
    run_stage(main)
