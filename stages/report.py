"""The report: one page where a reader sees, per experiment, what the book reported and what this run got.

``reports/index.html`` opens from disk or from a web server without network access: figures and
GIFs are linked by paths relative to the page, and the page has no scripts. It holds

- an overview table: experiment, the book's number (data/book_results.yaml), this run's result with
  its 95% bootstrap interval, a verdict by the rule stated on the page, and the wall time;
- a section per experiment: the settings used (this workspace's params.yaml, the file DVC records),
  the learning curve, the GIF, the held-out evaluation of its policies and the book's other numbers;
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
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from stages.common.book import BOOK_RESULTS, book_experiments
from stages.common.html import esc, image, link, table, volatile
from stages.common.io import write_text
from stages.common.params import read_params_file
from stages.common.policies import INDEX_DIR, load_index
from stages.common.statistics import summarize_returns
from stages.settings import run_stage, validate_params_file

REPORTS = Path("reports")
PAGE = REPORTS / "index.html"
EVALUATION = REPORTS / "evaluate"
AGGREGATE = REPORTS / "aggregate"
PI_BUNDLE = REPORTS / "pi_bundle"
NOT_RUN = "not run yet"
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


@dataclass(frozen=True)
class Layout:
    """Where an experiment's files are (paths relative to reports/) and which settings it reads."""

    params: tuple[str, ...]
    figures: tuple[str, ...] = ()
    gifs: tuple[str, ...] = ()
    metrics: str | None = None
    policies: tuple[str, ...] = ()  # policy names or algorithms whose evaluation the section shows
    texts: tuple[str, ...] = ()

    def for_seed(self, seed: int) -> "Layout":
        """Per-seed stages keep one folder per training seed (``s{seed}``): show ``seed``'s."""
        def fill(value: Any) -> Any:
            if isinstance(value, str):
                return value.replace("{seed}", str(seed))
            return tuple(fill(v) for v in value) if isinstance(value, tuple) else value
        return replace(self, **{f.name: fill(getattr(self, f.name)) for f in fields(self)})


def layout_of(experiment: str, params: dict[str, Any]) -> Layout:
    """The experiment's layout with the figures of the first training seed of ``seeds``."""
    return LAYOUTS.get(experiment, Layout(())).for_seed(params.get("seeds", [42])[0])


def _dqn(variant: str) -> Layout:
    folder = f"dqn/{variant}/s{{seed}}"
    return Layout(("dqn", f"dqn_variants.{variant}", "seeds"), (f"{folder}/{variant}_rewards_plot.png",),
                  (f"{folder}/{variant}.gif",), f"{folder}/metrics.json", (variant, f"{variant}_final"))


def _atari(game: str) -> Layout:
    folder = f"atari_dqn/{game}"
    return Layout(("atari_dqn.environment", "atari_dqn.network", "atari_dqn.agent", "atari_dqn.training",
                   "atari_dqn.evaluation", f"atari_dqn.games.{game}"),
                  (f"{folder}/learning_curve.png", f"{folder}/{game}_plot.png",
                   f"{folder}/preprocessed_{game}_plot.png", f"{folder}/sub_episodes_plot.png"),
                  (f"{folder}/trained_agent.gif",), f"{folder}/metrics.json", (f"{game}_dqn",))


def _lunar(config: str) -> Layout:
    folder = "pg_lunarlander/solve/s{seed}" if config == "solve" else f"pg_lunarlander/{config}"
    return Layout((f"pg_lunarlander.{config}",), (f"{folder}/learning_curve.png",), (f"{folder}/policy.gif",),
                  f"{folder}/metrics.json", (f"pg_lunarlander_{config}",))


LAYOUTS: dict[str, Layout] = {
    "cartpole_basics": Layout(("cartpole_basics",), ("cartpole_basics/cart_pole_plot.png",),
                              ("cartpole_basics/basic_policy.gif",), "cartpole_basics/metrics.json"),
    "markov_chain": Layout(("markov_chain",), metrics="markov_chain/metrics.json",
                           texts=("markov_chain/runs.txt",)),
    "mdp": Layout(("mdp",), ("mdp/q_value_plot.png",), metrics="mdp/metrics.json"),
    "nn_policy": Layout(("nn_policy", "seeds"), ("nn_policy/s{seed}/learning_curve.png",),
                        ("nn_policy/s{seed}/policy.gif",), "nn_policy/s{seed}/metrics.json", ("nn_policy",)),
    "pg_cartpole": Layout(("pg_cartpole", "seeds"), ("pg_cartpole/s{seed}/learning_curve.png",),
                          ("pg_cartpole/s{seed}/policy.gif",), "pg_cartpole/s{seed}/metrics.json",
                          ("pg_cartpole",)),
    "dqn": _dqn("dqn"),
    "double_dqn": _dqn("double_dqn"),
    "dueling_double_dqn": _dqn("dueling_double_dqn"),
    "prioritized_dueling_double_dqn": _dqn("prioritized_dueling_double_dqn"),
    "pg_lunarlander_book": _lunar("book"),
    "pg_lunarlander_solve": _lunar("solve"),
    "custom_env": Layout(("custom_env",), ("custom_env/learned_path.png",), metrics="custom_env/metrics.json"),
    "replay_benchmark": Layout(("replay_benchmark",), metrics="replay_benchmark/metrics.json"),
    "breakout": _atari("breakout"),
    "space_invaders": _atari("space_invaders"),
}


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


def wall_time_of(metrics: Any) -> float | None:
    """A stage's own training time, where its metrics record one."""
    if isinstance(metrics, dict):
        training = metrics.get("training")
        if isinstance(training, dict) and "wall_time_s" in training:
            return float(training["wall_time_s"])
    return None


def settings_of(params: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {key: dotted(params, key) for key in keys if _has(params, key)}


def _has(params: dict[str, Any], key: str) -> bool:
    try:
        dotted(params, key)
    except (KeyError, IndexError, TypeError):
        return False
    return True


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


# --- measuring this run against the book ----------------------------------------------------------


@dataclass
class Measurement:
    """This run's side of a comparison: a summary of returns or a plain value, and its verdict."""

    text: str
    verdict: str
    stats: dict[str, Any] | None = None
    wall_time_s: float | None = None
    notes: list[str] = field(default_factory=list)
    timing: bool = False  # the value is a wall-clock time: volatile on the page

    def markup(self) -> str:
        if self.text == NOT_RUN:
            return f'<span class="missing">{NOT_RUN}</span>'
        return volatile(esc(self.text)) if self.timing else esc(self.text)


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


def measure(experiment: str, entry: dict[str, Any], returns: pd.DataFrame | None, bootstrap: Any,
            params: dict[str, Any]) -> Measurement:
    headline = entry["headline"]
    how, rule = headline["measured_by"], headline["verdict"]
    layout = layout_of(experiment, params)
    metrics = read_json(REPORTS / layout.metrics) if layout.metrics else None
    wall = wall_time_of(metrics)
    if "metrics" in how:
        data = read_json(Path(how["metrics"]))
        if data is None:
            return Measurement(NOT_RUN, NOT_RUN)
        value = dotted(data, how["key"])
        if rule == "exact":
            verdict = "matches" if close(value, headline["value"], headline.get("tolerance", 0)) else "differs"
            return Measurement(_format(value), verdict, wall_time_s=wall)
        timing = how["key"].endswith("wall_time_s")
        return Measurement(_format(value), "reference only (machine timing)" if timing else "reference only",
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
    text = f"{stats['mean']:.1f} [{stats['ci95_low']:.1f}, {stats['ci95_high']:.1f}]"
    verdict = "no book number" if rule == "none" else judge_interval(float(headline["value"]), stats)
    return Measurement(text, verdict, stats, wall, [description])


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.9g}"
    if isinstance(value, list):
        return "[" + ", ".join(_format(v) for v in value) + "]"
    return "-" if value is None else str(value)


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
    shown = "-" if value is None else value if isinstance(value, str) else _format(value)
    return f"{esc(shown)}<br><small>{esc(headline['what'])}</small>"


def overview(experiments: dict[str, Any], measured: dict[str, Measurement]) -> str:
    rows = []
    for name, entry in experiments.items():
        m = measured[name]
        this_run = m.markup()
        if m.notes:
            this_run += f"<br><small>{esc(m.notes[0])}</small>"
        rows.append([link(f"#{name}", entry["title"]) + f" <small>({esc(entry['spec'])})</small>",
                     book_text(entry["headline"]), this_run, verdict_cell(m.verdict), _seconds(m.wall_time_s)])
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


def banner(params: dict[str, Any]) -> str:
    if params.get("profile") != "quick":
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
    rows = [[name, _format(d["value"]) if not isinstance(d["value"], str) else d["value"], d["source"]]
            for name, d in details.items() if name != "runs"]
    return table(["the book's other numbers", "value", "source"], rows) if rows else ""


def experiment_section(name: str, entry: dict[str, Any], m: Measurement, params: dict[str, Any],
                       summary: pd.DataFrame | None) -> str:
    layout = layout_of(name, params)
    headline = entry["headline"]
    parts = [f'<section id="{esc(name)}">', f"<h2>{esc(entry['title'])} <small>({esc(entry['spec'])})</small></h2>",
             banner(params),
             f"<p><b>The book:</b> {book_text(headline)}<br><small>source: {esc(headline['source'])}</small></p>",
             f"<p><b>This run:</b> {m.markup()} &mdash; {verdict_cell(m.verdict)}"
             + (f"<br><small>{esc('; '.join(m.notes))}</small>" if m.notes else "") + "</p>"]
    parts.append(details_table(entry))
    settings = settings_of(params, layout.params)
    if settings:
        parts.append("<details open><summary>Settings used (params.yaml)</summary><pre>"
                     + esc(yaml.safe_dump(settings, sort_keys=False, default_flow_style=None)) + "</pre></details>")
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
    rows = [[_format(v) if isinstance(v, float) else str(v) for v in row] for row in frame.itertuples(index=False)]
    return table(list(frame.columns), rows)


def aggregate_section(params: dict[str, Any]) -> str:
    head = ['<section id="aggregate">', "<h2>Across training seeds (aggregate)</h2>", banner(params)]
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


def pi_bundle_section(params: dict[str, Any]) -> str:
    head = ['<section id="pi_bundle">', "<h2>Raspberry Pi bundle (SPEC 12)</h2>", banner(params)]
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


def provenance_section(index: dict[str, Any], params: dict[str, Any]) -> str:
    commit, state = git_state()
    hashes = [[name, dvc_md5(entry.folder), entry.stage] for name, entry in index.items()]
    versions = [[name, version] for name, version in package_versions().items()]
    machine = (f"{platform.node()}, {platform.machine()}, {os.cpu_count()} CPU cores, "
               f"{platform.platform()}, Python {platform.python_version()}")
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return "\n".join([
        '<section id="provenance">', "<h2>Provenance</h2>", banner(params),
        "<p class=\"rule\">Commit, working-tree state, machine and date differ from run to run; they sit "
        "in the page's volatile spans, which the reproducibility tests leave out (everything else is "
        "byte-identical between two runs with the same inputs).</p>",
        table(["", ""], [["git commit", volatile(esc(commit))], ["working tree", volatile(esc(state))],
                         ["machine", volatile(esc(machine))], ["generated", volatile(esc(date))]], raw=True),
        "<h3>Exported policies (DVC md5, as dvc.lock records them)</h3>",
        table(["policy", "md5", "stage"], hashes, css_class="hashes") if hashes else f'<p class="missing">{NOT_RUN}</p>',
        "<h3>Package versions (uv.lock)</h3>", table(["package", "version"], versions),
        "</section>"])


def render(params: dict[str, Any], bootstrap: Any) -> str:
    experiments = book_experiments(BOOK_RESULTS)
    returns, summary = read_csv(EVALUATION / "returns.csv"), read_csv(EVALUATION / "summary.csv")
    measured = {name: measure(name, entry, returns, bootstrap, params) for name, entry in experiments.items()}
    index = load_index(INDEX_DIR)
    profile = params.get("profile", "full")
    nav = " | ".join(link(f"#{name}", entry["title"]) for name, entry in experiments.items())
    body = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',  # no favicon request: served, the page asks for nothing absent
        f"<title>Chapter 18 as a pipeline: results ({esc(profile)} profile)</title>",
        f"<style>{STYLE}</style>", "</head>", "<body>",
        "<h1>Chapter 18 as a pipeline: the book beside this run</h1>",
        f"<p>Profile: <b>{esc(profile)}</b>. {len(index)} exported policies evaluated on held-out seeds.</p>",
        banner(params),
        '<section id="overview">', "<h2>Overview</h2>", banner(params),
        f'<p class="rule">{VERDICT_RULE}</p>', overview(experiments, measured),
        "</section>",
        '<section id="evaluation">', "<h2>Held-out evaluation of every policy</h2>", banner(params),
        f"<p>Greedy, one episode per seed, seeds from {esc(params['evaluate']['seed_start'])} on (no "
        "training stage uses them). Files: "
        + ", ".join(link(f"evaluate/{f}", f"evaluate/{f}") for f in ("summary.csv", "returns.csv", "metrics.json")
                    if (EVALUATION / f).is_file()) + "</p>",
        evaluation_table(summary),
        files_block(("evaluate/intervals.png",), lambda p: image(p, "held-out mean return and 95% interval"),
                    "figure"),
        "</section>",
        f"<nav><p>Experiments: {nav}</p></nav>",
        *(experiment_section(name, entry, measured[name], params, summary) for name, entry in experiments.items()),
        aggregate_section(params), pi_bundle_section(params), provenance_section(index, params),
        "</body>", "</html>", ""]
    return "\n".join(b for b in body if b)


def main() -> None:
    validated = validate_params_file()
    params = read_params_file()
    write_text(PAGE, render(params, validated["evaluate"].bootstrap))
    print(f"report: {PAGE.resolve()}")


if __name__ == "__main__":
    run_stage(main)
