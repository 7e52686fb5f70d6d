"""The report as a reader sees it (a real browser), and DVC's own views of metrics and plots.

Both use the quick profile's Snakemake run (fixture ``quick_run`` in conftest.py, shared with
test_pipeline.py); the parameter change works on a clone of it. The browser is Debian's chromium
driven by Playwright; the session fixture installs it with apt-get on a machine without it.
Screenshots land in tests/artifacts/ (ignored by git); their paths are printed.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml
from dvc.repo import Repo

from stages.core.book import book_experiments
from stages.core.dag import read_dag
from stages.policies.index import load_index
from tests.conftest import DVC, SNAKEMAKE, run
from tests.debian import BROWSER, ensure_installed
from tests.test_dag import dvc_view

pytestmark = pytest.mark.e2e

CHROMIUM = Path(BROWSER["chromium"])
ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's chromium (Playwright's own browser download is not reachable here), installed if missing."""
    if not CHROMIUM.exists() and shutil.which("apt-get") is None:
        pytest.fail("chromium is missing and apt-get is not available to install it")
    ensure_installed(BROWSER)  # also waits for an install still under way (tests/debian.py)
    return CHROMIUM


@pytest.fixture
def served(quick_run) -> Iterator[str]:
    """The quick run's reports/ folder on a local web server, as a user would publish it."""
    handler = functools.partial(_QuietHandler, directory=str(quick_run / "reports"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/index.html"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


LINKS = "Array.from(document.querySelectorAll('a[href]')).map(a => [a.getAttribute('href'), a.href])"
BROKEN_IMAGES = "Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"


def test_the_quick_report_in_a_real_browser(quick_run, chromium, served):
    from playwright.sync_api import sync_playwright

    from stages.report.results import experiment_layouts

    experiments = experiment_layouts(read_dag(quick_run))  # the report's sections: the DAG's
    assert set(book_experiments(quick_run / "data/book_results.yaml")) <= set(experiments)
    policies = set(load_index(quick_run / "data/policies"))
    page_file = quick_run / "reports/index.html"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        try:
            for how, url in (("file", page_file.as_uri()), ("served", served)):
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                errors: list[str] = []
                page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
                page.on("pageerror", lambda error: errors.append(str(error)))
                page.on("requestfailed", lambda request: errors.append(f"failed: {request.url}"))
                page.goto(url, wait_until="load")

                assert page.evaluate(BROKEN_IMAGES) == [], how
                assert page.locator("img").count() >= 20
                assert page.locator("img[src$='.gif']").count() >= 8
                assert page.locator("script").count() == 0
                # The summary comes first: verdicts against the book, then the leader per environment.
                assert page.locator("main > section").first.get_attribute("id") == "summary"
                assert page.locator("table.overview tbody tr").count() == len(experiments)
                verdicts = page.locator("table.overview tbody tr td:nth-child(4)").all_inner_texts()
                assert "not run yet" not in verdicts, "the quick profile runs every experiment, Atari too"
                leaders = page.locator("#summary table.winners tbody tr").all_inner_texts()
                assert leaders and {row.split("\t")[0] for row in leaders} >= {"CartPole-v1", "LunarLander-v3"}
                assert_markdown_summary_agrees(quick_run / "reports/summary.md", verdicts, leaders)
                # A sidebar that stays in view, linking to every section; experiments by package name.
                assert page.locator("nav.sidebar").evaluate("e => getComputedStyle(e).position") == "sticky"
                nav = [a.get_attribute("href") for a in page.locator("nav.sidebar a").all()]
                sections = [s.get_attribute("id") for s in page.locator("section").all()]
                assert set(nav) == {f"#{s}" for s in sections}, "every section, nothing else"
                assert {"#summary", "#pg_cartpole", "#dqn", "#atari_dqn", "#pi_bundle", "#dqn@double_dqn"} <= set(nav)
                # Figures and GIFs side by side: a grid of more than one column at this width.
                columns = page.locator("#pg_cartpole .gallery").evaluate(
                    "e => getComputedStyle(e).gridTemplateColumns.split(' ').length")
                assert columns >= 2
                envs = set(page.locator("#summary table.winners tbody tr td:first-child").all_inner_texts())
                assert page.locator("#evaluate img[src^='report/intervals_']").count() >= len(envs)
                shown = set(page.locator("#evaluate table.evaluation tbody tr td:first-child").all_text_contents())
                assert shown == policies
                for section in page.locator("section").all():  # quick profile: a banner in every one
                    assert section.locator(":scope > .banner").count() == 1, section.get_attribute("id")
                assert page.locator("#aggregate, #pi_bundle").count() == 2
                hashes = dict(zip(page.locator("#provenance table.hashes td:nth-child(1)").all_inner_texts(),
                                  page.locator("#provenance table.hashes td:nth-child(2)").all_inner_texts()))
                assert hashes == locked_policy_hashes(quick_run)

                for href, absolute in page.evaluate(LINKS):
                    if href.startswith("#"):
                        assert page.locator(f"[id='{href[1:]}']").count() == 1, href
                    elif how == "file":
                        assert Path(unquote(urlparse(absolute).path)).is_file(), href
                    else:
                        assert page.request.get(absolute).status == 200, href
                assert errors == [], (how, errors)

                height = page.evaluate("document.documentElement.scrollHeight")
                print(f"page height ({how}): {height} CSS px at 1280 px wide")
                top = ARTIFACTS / f"report_quick_{how}_top.png"
                page.screenshot(path=str(top))
                print(f"screenshot: {top}")
                page.locator("[id='dqn@double_dqn']").scroll_into_view_if_needed()
                middle = ARTIFACTS / f"report_quick_{how}_dqn.png"
                page.screenshot(path=str(middle))  # the sidebar stays in view beside a section
                print(f"screenshot: {middle}")
                shot = ARTIFACTS / f"report_quick_{how}.png"
                page.screenshot(path=str(shot), full_page=True)
                print(f"screenshot: {shot}")
                page.close()
        finally:
            browser.close()


def assert_markdown_summary_agrees(path: Path, verdicts: list[str], leaders: list[str]) -> None:
    """reports/summary.md holds the page's two summary tables: the same verdicts in the same order,
    and the same leader, IQM and interval per environment and step cap."""
    rows = [line.strip("| ").split(" | ") for line in path.read_text().splitlines() if line.startswith("| ")]
    experiments = [r for r in rows if r[0].startswith("[")]
    assert [r[3] for r in experiments] == verdicts
    md_leaders = [(r[0], r[1], r[2].strip("*"), r[3]) for r in rows if len(r) == 8 and r[0] != "environment"
                  and not r[0].startswith("---")]
    page_leaders = [tuple(row.split("\t")[:4]) for row in leaders]
    assert md_leaders == page_leaders


def locked_policy_hashes(workspace: Path) -> dict[str, str]:
    """What dvc.lock records for each exported policy folder."""
    lock = yaml.safe_load((workspace / "dvc.lock").read_text())["stages"]
    return {Path(out["path"]).name: out["md5"] for stage in lock.values() for out in stage.get("outs", [])
            if Path(out["path"]).parent == Path("data/policies")}


def test_dvc_metrics_and_plots_cover_every_stage_and_show_what_a_change_moved(clone_of_quick_run):
    ws = clone_of_quick_run()
    run(["git", "add", "-A"], ws)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm", "quick run"], ws)

    view = dvc_view(ws)
    # Every stage's metrics.json and each policy's evaluation summary.
    metrics_files = {o for stage in view.values() for o in stage["outs"] if o.endswith(("metrics.json", "summary.json"))}
    shown = json.loads(run([DVC, "metrics", "show", "--json"], ws).stdout)
    assert set(shown[""]["data"]) == metrics_files
    training_logs = {o for stage in view.values() for o in stage["outs"] if o.endswith("dvclive/plots/metrics")}
    assert training_logs and {o.removesuffix("plots/metrics") + "metrics.json" for o in training_logs} <= metrics_files
    top_level = yaml.safe_load((ws / "dvc.yaml").read_text())["plots"]
    curves = {path for plot in top_level if isinstance(plot, dict)
              for definition in plot.values() for path in definition["y"]}
    # Per-seed stages declare each seed's curve where the seed is known: in the stage's own plots.
    with Repo(str(ws)) as repo:
        curves |= {out.def_path for stage in repo.index.stages for out in stage.outs
                   if isinstance(out.plot, dict) and {"x", "y"} <= set(out.plot)}
        # DVCLive folders: every .tsv against DVCLive's step (each file's one metric is its y).
        curves |= {out.def_path for stage in repo.index.stages for out in stage.outs
                   if isinstance(out.plot, dict) and out.plot.get("x") == "step"}
    assert training_logs <= curves, "every learning curve is a DVC plot with its x (and y) fields"
    for plot in top_level:
        for definition in (plot.values() if isinstance(plot, dict) else []):
            assert {"title", "x", "y"} <= set(definition)
    plots = json.loads(run([DVC, "plots", "show", "--json"], ws).stdout)
    assert not plots.get("errors"), plots.get("errors")

    path = ws / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["pg_cartpole"]["training"]["iterations"] += 1
    path.write_text(yaml.safe_dump(params, sort_keys=False, default_flow_style=None))
    # The evaluation is enough to see a change move (the rest of the consumers would only cost time).
    repro = run([DVC, "repro", "evaluate"], ws).stdout
    seeds = params["seeds"]
    assert set(_ran(repro)) == {*(f"{stage}@{seed}" for seed in seeds for stage in ("pg_cartpole", "evaluate_pg_cartpole")),
                                "evaluate"}

    diff = json.loads(run([DVC, "metrics", "diff", "--json"], ws).stdout)
    moved = diff[f"reports/pg_cartpole/s{seeds[0]}/metrics.json"]["training.iterations"]
    iterations = params["pg_cartpole"]["training"]["iterations"]
    assert (moved["old"], moved["new"]) == (iterations - 1, iterations)
    assert "reports/evaluate/metrics.json" in diff and f"reports/evaluate/policies/pg_cartpole_s{seeds[0]}/summary.json" in diff
    plots_diff = json.loads(run([DVC, "plots", "diff", "--json"], ws).stdout)
    curve = plots_diff["data"][f"data/pg_cartpole/s{seeds[0]}/dvclive/plots/metrics/mean_return.tsv"]
    assert {"HEAD", "workspace"} <= {rev for definition in curve for rev in definition["revisions"]}


def _ran(repro_output: str) -> list[str]:
    return [line.split("'")[1] for line in repro_output.splitlines() if line.startswith("Running stage '")]


def test_snakemakes_own_report_holds_the_figures(clone_of_quick_run, tmp_path):
    ws = clone_of_quick_run()
    report = tmp_path / "snakemake_report.html"
    run([*SNAKEMAKE, "--report", str(report)], ws)
    text = report.read_text(errors="replace")
    figures = {Path(o).name for stage in dvc_view(ws).values() for o in stage["outs"]
               if o.endswith((".png", ".gif"))}
    assert all(name in text for name in figures)
