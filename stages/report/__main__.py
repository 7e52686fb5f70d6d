"""The report: one page where a reader sees, per experiment, what the book reported and what this run got.

``reports/index.html`` opens from disk or from a web server without network access: figures and
GIFs are linked by paths relative to the page, and the page has no scripts. It holds

- an overview table: one row per experiment of the DAG, the book's number where it reported one
  (data/book_results.yaml, keyed by experiment), this run's result with its 95% bootstrap
  interval, a verdict by the rule stated on the page, and the wall time;
- a section per experiment, found in dvc.yaml (stages/common/dag.py): the settings its stages
  read (as DVC resolves them), its figures, GIFs and texts (the first training seed's, for a
  per-seed experiment), the held-out evaluation of the policies it exports and the book's other
  numbers. A new experiment, variant, configuration or game gets its section with no code here;
- sections for the multi-seed aggregate and the Raspberry Pi bundle, from their files when present;
- provenance: the DVC hashes of the exported policies, package versions from uv.lock, and (marked
  volatile, see stages/common/html.py) git commit, working-tree state, machine and date.

What is not there yet (an Atari game not trained, a stage not run) is shown as "not run yet".
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from stages.common.book import BOOK_RESULTS, book_experiments
from stages.common.dag import StageSpec, policy_producers, read_dag
from stages.common.html import esc, image, link, table, volatile
from stages.common.io import write_text
from stages.common.policies import INDEX_DIR, load_index
from stages.common.settings import Bootstrap, InputError, Params, run_stage
from stages.report import settings
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

PAGE = REPORTS / "index.html"
EVALUATION = REPORTS / "evaluate"
AGGREGATE = REPORTS / "aggregate"
PI_BUNDLE = REPORTS / "pi_bundle"
# Packages whose versions decide the numbers (uv.lock pins them all; these are the ones that matter).
KEY_PACKAGES = ("tensorflow-cpu", "tf-keras", "tf-agents", "tensorflow-probability", "gymnasium",
                "ale-py", "box2d-py", "numpy", "scipy", "pandas", "matplotlib", "pillow", "dvc",
                "snakemake", "ai-edge-litert")
VERDICT_RULE = (
    "Verdict: for returns, the book's number is set against the 95% bootstrap confidence interval "
    "of this run's held-out mean return (percentile bootstrap, fixed random state): <b>matches</b> "
    "when the interval contains the book's value, <b>beats</b> when the whole interval lies above "
    "it, <b>below the book</b> when it lies below. A level to pass (LunarLander's 200, the human "
    "Space Invaders score) is beaten when the interval's low end is above it. Deterministic "
    "computations (Q-values, sampled runs, the grid's path) <b>match</b> when equal within the "
    "stated tolerance, else <b>differ</b>. Machine timings are shown for reference only.")


def dvc_md5(folder: Path) -> str:
    """The hash DVC records for a folder output (``<md5 of its manifest>.dir``), files it ignores left out."""
    manifest = [{"md5": hashlib.md5(f.read_bytes()).hexdigest(), "relpath": f.relative_to(folder).as_posix()}
                for f in sorted(folder.rglob("*")) if f.is_file() and f.name != ".snakemake_timestamp"]
    manifest.sort(key=lambda entry: entry["relpath"])
    return hashlib.md5(json.dumps(manifest, sort_keys=True).encode()).hexdigest() + ".dir"


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


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return volatile(f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min")


# --- the page ------------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.banner { background: #fff4d6; border: 1px solid #e0b74f; padding: 0.4em 0.8em; margin: 0.6em 0; }
.missing { color: #8a8a8a; font-style: italic; }
.verdict-matches { background: #e3f4e1; } .verdict-beats { background: #d4ecfb; }
.verdict-below { background: #fde2e1; } .verdict-differs { background: #fde2e1; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; vertical-align: top; }
figure img { max-width: 520px; border: 1px solid #eee; } figcaption { font-size: 0.85em; color: #555; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
.rule { font-size: 0.92em; color: #333; }
"""


def verdict_cell(verdict: str) -> str:
    css = {"matches": "verdict-matches", "beats": "verdict-beats", "below the book": "verdict-below",
           "differs": "verdict-differs"}.get(verdict, "missing" if verdict == NOT_RUN else "")
    return f'<span class="{css}">{esc(verdict)}</span>'


def book_text(headline: dict[str, Any]) -> str:
    value = headline["value"]
    shown = "-" if value is None else value if isinstance(value, str) else format_value(value)
    return f"{esc(shown)}<br><small>{esc(headline['what'])}</small>"


def title_of(layout: Layout, entry: dict[str, Any] | None) -> str:
    """The book entry's title and SPEC section, or the stage's description."""
    if entry is None:
        return esc(layout.desc or layout.name)
    return f"{esc(entry['title'])} <small>({esc(entry['spec'])})</small>"


def overview(layouts: dict[str, Layout], book: dict[str, Any], measured: dict[str, Measurement]) -> str:
    rows = []
    for name, layout in layouts.items():
        m, entry = measured[name], book.get(name)
        this_run = m.markup()
        if m.notes:
            this_run += f"<br><small>{esc(m.notes[0])}</small>"
        rows.append([f'<a href="#{esc(name)}">{title_of(layout, entry)}</a>',
                     book_text(entry["headline"]) if entry else "-", this_run, verdict_cell(m.verdict),
                     _seconds(m.wall_time_s)])
    header = ["experiment", "the book", "this run (held-out mean [95% CI] or value)", "verdict",
              "training wall time"]
    return table(header, rows, css_class="overview", raw=True)


def evaluation_table(summary: pd.DataFrame | None, names: tuple[str, ...] | None = None) -> str:
    if summary is None:
        return f'<p class="missing">held-out evaluation: {NOT_RUN}</p>'
    rows = summary if names is None else summary[summary["policy"].isin(names) | summary["algorithm"].isin(names)]
    if rows.empty:
        return f'<p class="missing">held-out evaluation: {NOT_RUN}</p>'
    header = ["policy", "step cap", "episodes", "mean", "95% CI", "std", "median", "IQM", "min", "max",
              "wall time"]
    body = [[esc(r.policy), str(r.max_steps), str(r.episodes), f"{r.mean:.1f}",
             f"[{r.ci95_low:.1f}, {r.ci95_high:.1f}]", f"{r.std:.1f}", f"{r.median:.1f}", f"{r.iqm:.1f}",
             f"{r.min:.0f}", f"{r.max:.0f}", _seconds(r.wall_time_s)] for r in rows.itertuples()]
    return table(header, body, css_class="evaluation", raw=True)


def banner(profile: str) -> str:
    if profile != "quick":
        return ""
    return ('<div class="banner">Quick profile (<code>profile: quick</code>): tiny settings for a '
            "preview. These numbers say the pipeline runs, not what the experiment gives.</div>")


def files_block(paths: tuple[str, ...], render: Callable[[str], str], what: str) -> str:
    present = [p for p in paths if (REPORTS / p).is_file()]
    missing = [p for p in paths if not (REPORTS / p).is_file()]
    out = "".join(render(p) for p in present)
    if missing:
        out += f'<p class="missing">{esc(what)} {NOT_RUN}: {esc(", ".join(missing))}</p>'
    return out


def details_table(entry: dict[str, Any]) -> str:
    details = entry.get("details") or {}
    rows = [[name, format_value(d["value"]) if not isinstance(d["value"], str) else d["value"], d["source"]]
            for name, d in details.items() if name != "runs"]
    return table(["the book's other numbers", "value", "source"], rows) if rows else ""


def experiment_section(layout: Layout, entry: dict[str, Any] | None, m: Measurement, profile: str,
                       summary: pd.DataFrame | None) -> str:
    parts = [f'<section id="{esc(layout.name)}">', f"<h2>{title_of(layout, entry)}</h2>", banner(profile)]
    if entry is not None:
        headline = entry["headline"]
        parts.append(f"<p><b>The book:</b> {book_text(headline)}<br><small>source: "
                     f"{esc(headline['source'])}</small></p>")
    parts.append(f"<p><b>This run:</b> {m.markup()} &mdash; {verdict_cell(m.verdict)}"
                 + (f"<br><small>{esc('; '.join(m.notes))}</small>" if m.notes else "") + "</p>")
    if entry is not None:
        parts.append(details_table(entry))
        if layout.desc:
            parts.append(f"<p><small>{esc(layout.desc)}</small></p>")
    if layout.seeds:
        parts.append(f"<p>Training seeds: {esc(', '.join(map(str, layout.seeds)))}; the figures and "
                     f"GIF are seed {layout.seeds[0]}'s.</p>")
    if layout.settings:
        parts.append("<details open><summary>Settings used (params.yaml, as DVC records them)</summary><pre>"
                     + esc(yaml.safe_dump(layout.settings, sort_keys=False, default_flow_style=None))
                     + "</pre></details>")
    parts.append(files_block(layout.figures, lambda p: image(p, p), "figure"))
    parts.append(files_block(layout.gifs, lambda p: image(p, f"{p} (one episode of the trained policy)"), "GIF"))
    for text in layout.texts:
        path = REPORTS / text
        parts.append(f"<pre>{esc(path.read_text())}</pre>" if path.is_file()
                     else f'<p class="missing">{esc(text)}: {NOT_RUN}</p>')
    if layout.policies:
        parts.append("<h3>Held-out evaluation</h3>" + evaluation_table(summary, layout.policies))
    if layout.metrics:
        metrics = REPORTS / layout.metrics
        parts.append(f"<p>All numbers: {link(layout.metrics, layout.metrics)}</p>" if metrics.is_file()
                     else f'<p class="missing">{esc(layout.metrics)}: {NOT_RUN}</p>')
    parts.append("</section>")
    return "\n".join(p for p in parts if p)


def csv_table(path: Path) -> str:
    frame = read_csv(path)
    if frame is None:
        return f'<p class="missing">{esc(path.relative_to(REPORTS))}: {NOT_RUN}</p>'
    rows = [[format_value(v) if isinstance(v, float) else str(v) for v in row] for row in frame.itertuples(index=False)]
    return table(list(frame.columns), rows)


def aggregate_section(profile: str) -> str:
    head = ['<section id="aggregate">', "<h2>Across training seeds (aggregate)</h2>", banner(profile)]
    if not (AGGREGATE / "summary.csv").is_file():
        return "\n".join(head + [f'<p class="missing">{NOT_RUN}: the per-seed training stages and their '
                                 "aggregate (reports/aggregate/) have not been run.</p>", "</section>"])
    body = [csv_table(AGGREGATE / "summary.csv"),
            files_block(("aggregate/interval_estimates.png", "aggregate/learning_curves.png"),
                        lambda p: image(p, p), "figure"),
            "<h3>Supported comparisons</h3>",
            "<p class=\"rule\">An algorithm is said to beat another only when the whole 95% interval of "
            "P(X &gt; Y) lies above 1/2, with enough runs per algorithm (aggregate.min_runs_for_claims).</p>",
            "<pre>" + esc((AGGREGATE / "supported_comparisons.txt").read_text()) + "</pre>"
            if (AGGREGATE / "supported_comparisons.txt").is_file() else "",
            "<h3>Probability of improvement</h3>", csv_table(AGGREGATE / "probability_of_improvement.csv"),
            f"<p>All numbers: {link('aggregate/metrics.json', 'aggregate/metrics.json')}</p>"
            if (AGGREGATE / "metrics.json").is_file() else ""]
    return "\n".join(head + body + ["</section>"])


def pi_bundle_section(profile: str) -> str:
    head = ['<section id="pi_bundle">', "<h2>Raspberry Pi bundle (SPEC 12)</h2>", banner(profile)]
    benchmark = read_json(PI_BUNDLE / "benchmark.json")
    if benchmark is None:
        return "\n".join(head + [f'<p class="missing">{NOT_RUN}: reports/pi_bundle/benchmark.json is absent.</p>',
                                 "</section>"])
    rows = []
    for name, values in sorted(benchmark.items()):
        if not isinstance(values, dict) or "int8" not in values:
            continue
        evaluation, latency, size = values["evaluation"], values["latency"], values["size_bytes"]
        int8 = values["int8"]
        target = {True: " (meets the target)", False: " (below the target)"}.get(int8.get("meets_target"), "")
        rows.append([
            esc(name),
            esc(f"{values['float32']['max_abs_diff']:.1e}"),
            esc(f"{int8['action_agreement']:.4f}{target}"),
            esc("-" if int8.get("input_rounding_agreement") is None else f"{int8['input_rounding_agreement']:.4f}"),
            esc(" / ".join(f"{evaluation[kind]['mean']:.1f}" for kind in ("original", "float32", "int8"))),
            volatile(esc(" / ".join(f"{latency[kind]['median_wall_time_s'] * 1e6:.1f}"
                                    for kind in ("original", "float32", "int8")))),
            esc(" / ".join(f"{size[kind] / 1024:.1f}" for kind in ("original", "float32", "int8"))),
        ])
    body = [table(["policy", "float32 max |diff|", "int8 action agreement",
                   "agreement with only the input rounded to the int8 grid",
                   "mean return: original / float32 / int8", "median latency (µs): original / float32 / int8",
                   "size (KiB): original / float32 / int8"], rows, raw=True),
            "<p class=\"rule\">Parity on held-out observations; returns on the training stages' evaluation "
            "seeds; latency of one action on this machine's CPU. The fourth column plays the original "
            "(float) policy on observations rounded to the int8 model's input grid, everything else in "
            "float: how much of the int8 model's disagreement the 8-bit input alone causes.</p>",
            f"<p>All numbers: {link('pi_bundle/benchmark.json', 'pi_bundle/benchmark.json')}</p>"]
    return "\n".join(head + body + ["</section>"])


def provenance_section(index: dict[str, Any], profile: str) -> str:
    commit, state = git_state()
    hashes = [[name, dvc_md5(entry.folder), entry.stage] for name, entry in index.items()]
    versions = [[name, version] for name, version in package_versions().items()]
    machine = (f"{platform.node()}, {platform.machine()}, {os.cpu_count()} CPU cores, "
               f"{platform.platform()}, Python {platform.python_version()}")
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return "\n".join([
        '<section id="provenance">', "<h2>Provenance</h2>", banner(profile),
        "<p class=\"rule\">Commit, working-tree state, machine and date differ from run to run; they sit "
        "in the page's volatile spans, which the reproducibility tests leave out (everything else is "
        "byte-identical between two runs with the same inputs).</p>",
        table(["", ""], [["git commit", volatile(esc(commit))], ["working tree", volatile(esc(state))],
                         ["machine", volatile(esc(machine))], ["generated", volatile(esc(date))]], raw=True),
        "<h3>Exported policies (DVC md5, as dvc.lock records them)</h3>",
        table(["policy", "md5", "stage"], hashes, css_class="hashes") if hashes else f'<p class="missing">{NOT_RUN}</p>',
        "<h3>Package versions (uv.lock)</h3>", table(["package", "version"], versions),
        "</section>"])


def render(stages: list[StageSpec], profile: str, bootstrap: Bootstrap) -> str:
    book = book_experiments(BOOK_RESULTS)
    layouts = experiment_layouts(stages)
    unknown = sorted(set(book) - set(layouts))
    if unknown:
        raise InputError(f"{BOOK_RESULTS} has entries for {', '.join(unknown)}, which are not "
                         f"experiments of dvc.yaml (known: {', '.join(layouts)})")
    returns, summary = read_csv(EVALUATION / "returns.csv"), read_csv(EVALUATION / "summary.csv")
    index = load_index(INDEX_DIR, {name: stage.name for name, stage in policy_producers(stages).items()},
                       missing_ok=True)  # a policy not trained yet is shown as not run yet
    measured = {name: measure(layout, book.get(name), returns, index, bootstrap)
                for name, layout in layouts.items()}
    evaluation = read_json(EVALUATION / "metrics.json")
    seeds_from = (f"seeds from {esc(evaluation['seeds']['first'])} on" if evaluation
                  else "held-out seeds")
    nav = " | ".join(link(f"#{name}", name) for name in layouts)
    body = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',  # no favicon request: served, the page asks for nothing absent
        f"<title>Chapter 18 as a pipeline: results ({esc(profile)} profile)</title>",
        f"<style>{STYLE}</style>", "</head>", "<body>",
        "<h1>Chapter 18 as a pipeline: the book beside this run</h1>",
        f"<p>Profile: <b>{esc(profile)}</b>. {len(index)} exported policies evaluated on held-out seeds.</p>",
        banner(profile),
        '<section id="overview">', "<h2>Overview</h2>", banner(profile),
        f'<p class="rule">{VERDICT_RULE}</p>', overview(layouts, book, measured),
        "</section>",
        '<section id="evaluation">', "<h2>Held-out evaluation of every policy</h2>", banner(profile),
        f"<p>Greedy, one episode per seed, {seeds_from} (no training stage uses them). Files: "
        + ", ".join(link(f"evaluate/{f}", f"evaluate/{f}") for f in ("summary.csv", "returns.csv", "metrics.json")
                    if (EVALUATION / f).is_file()) + "</p>",
        evaluation_table(summary),
        files_block(("evaluate/intervals.png",), lambda p: image(p, "held-out mean return and 95% interval"),
                    "figure"),
        "</section>",
        f"<nav><p>Experiments: {nav}</p></nav>",
        *(experiment_section(layout, book.get(name), measured[name], profile, summary)
          for name, layout in layouts.items()),
        aggregate_section(profile), pi_bundle_section(profile), provenance_section(index, profile),
        "</body>", "</html>", ""]
    return "\n".join(b for b in body if b)


def main(argv: list[str] | None = None) -> None:
    cfg = settings(sys.argv[1:] if argv is None else argv, Params.load())
    write_text(PAGE, render(read_dag(), cfg.pipeline.profile, cfg.bootstrap))
    print(f"report: {PAGE.resolve()}")


if __name__ == "__main__":
    run_stage(main)
