"""The report page without a pipeline run: a workspace where nothing has trained, given a small
evaluation and aggregate by hand. The report's command refuses it (inputs missing) and writes
nothing; ``--partial`` renders it. Autoescaping, the order of sections, the sidebar, the Markdown
summary beside the page, the leaders per environment, and the same bytes from a rerun (timings
aside).
(The quick run's page in a real browser: test_report.py.)"""

from __future__ import annotations

import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
import yaml

from stages.core.html import VOLATILE_START, strip_volatile
from pipeline.workspace import create_workspace
from stages.report.summary import winners
from tests.conftest import built_once

HOSTILE = '<script>alert("x")</script>'


def _evaluation(folder: Path) -> None:
    """Two algorithms on CartPole (three seeds each, two caps) and one on a second environment;
    one policy with a hostile name."""
    rows = []
    for algorithm, base in (("alpha", 100.0), (f"beta{HOSTILE}", 150.0)):
        for seed in (42, 0, 1):
            for cap in (200, 500):
                mean = base + seed + cap / 10
                rows.append({"policy": f"{algorithm}_s{seed}", "algorithm": algorithm, "seed": seed,
                             "env_id": "CartPole-v1", "max_steps": cap, "episodes": 10, "mean": mean,
                             "std": 5.0, "min": mean - 10, "max": mean + 10, "median": mean, "iqm": mean,
                             "ci95_low": mean - 4, "ci95_high": mean + 4, "stage": f"{algorithm}@{seed}",
                             "training_log": f"data/{algorithm}/s{seed}/dvclive", "policy_md5": f"{seed}.dir"})
    rows.append({"policy": "game_dqn", "algorithm": "game_dqn", "seed": None, "env_id": "ALE/Game-v5",
                 "max_steps": 1000, "episodes": 3, "mean": 7.0, "std": 1.0, "min": 6, "max": 8, "median": 7.0,
                 "iqm": 7.0, "ci95_low": 6.0, "ci95_high": 8.0, "stage": "game@x", "training_log": None,
                 "policy_md5": "9.dir"})
    (folder / "evaluate").mkdir(parents=True)
    frame = pd.DataFrame(rows)
    frame["seed"] = frame["seed"].astype("Int64")
    frame.to_csv(folder / "evaluate/summary.csv", index=False)


def _aggregate(folder: Path) -> None:
    rows, pairs = [], []
    for cap in (200, 500):
        for algorithm, iqm in (("alpha", 110.0 + cap / 10), (f"beta{HOSTILE}", 160.0 + cap / 10)):
            rows.append({"algorithm": algorithm, "env_id": "CartPole-v1", "max_steps": cap, "runs": 3,
                         "seeds": "42 0 1", "episodes_per_run": 10,
                         **{f"{name}{suffix}": iqm + shift for name in ("mean", "median", "iqm")
                            for suffix, shift in (("", 0), ("_ci_low", -5), ("_ci_high", 5))}})
        pairs += [{"env_id": "CartPole-v1", "max_steps": cap, "algorithm_x": f"beta{HOSTILE}",
                   "algorithm_y": "alpha", "probability_x_beats_y": 1.0, "ci_low": 1.0, "ci_high": 1.0,
                   "x_better": False},
                  {"env_id": "CartPole-v1", "max_steps": cap, "algorithm_x": "alpha",
                   "algorithm_y": f"beta{HOSTILE}", "probability_x_beats_y": 0.0, "ci_low": 0.0, "ci_high": 0.0,
                   "x_better": False}]
    (folder / "aggregate").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(folder / "aggregate/summary.csv", index=False)
    pd.DataFrame(pairs).to_csv(folder / "aggregate/probability_of_improvement.csv", index=False)


def render_twice(ws: Path) -> None:
    """An untrained workspace with a hand-made evaluation and aggregate, an experiment's title
    in the book made hostile; the report's command refused there (its message kept in
    refused.txt), then the report run twice with ``--partial`` (pages kept as index_1/2,
    summary_1/2, and figures in figures_1/2), the second time with the evaluation's timings."""
    create_workspace(ws, profile=None)
    shutil.rmtree(ws / "reports", ignore_errors=True)  # untrained: none of the results git keeps
    book = ws / "data/book_results.yaml"
    data = yaml.safe_load(book.read_text())
    data["experiments"]["markov_chain"]["title"] = f"Markov chain {HOSTILE}"
    book.write_text(yaml.safe_dump(data, sort_keys=False))
    _evaluation(ws / "reports")
    _aggregate(ws / "reports")
    from stages.core.settings import InputError
    from stages.core.timings import write_timings
    from stages.report.__main__ import main

    cwd = os.getcwd()
    os.chdir(ws)
    try:
        before = sorted(str(p.relative_to(ws)) for p in (ws / "reports").rglob("*"))
        with pytest.raises(InputError) as refused:
            main([])
        assert sorted(str(p.relative_to(ws)) for p in (ws / "reports").rglob("*")) == before
        (ws / "refused.txt").write_text(str(refused.value))
        for run in (1, 2):
            if run == 2:
                write_timings("evaluate/alpha_s42", {"wall_time_s": {"max_steps_200": 4321.0}})
            main(["--partial"])
            for name in ("index.html", "summary.md"):
                stem, suffix = name.split(".")
                (ws / "reports" / f"{stem}_{run}.{suffix}").write_bytes((ws / "reports" / name).read_bytes())
            copies = ws / f"figures_{run}"  # reports/report/ is replaced as a whole by each run
            copies.mkdir()
            for figure in (ws / "reports/report").glob("*.png"):
                (copies / figure.name).write_bytes(figure.read_bytes())
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="session")
def workspace(tmp_path_factory, worker_id) -> Path:
    """The workspace of :func:`render_twice`, rendered once per session and read-only."""
    return built_once("report_page", render_twice, tmp_path_factory, worker_id)


class _Page(HTMLParser):
    """Section ids in order, every id, the sidebar's links, and script elements."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.ids: list[str] = []
        self.nav_links: list[str] = []
        self.scripts = 0
        self._in_nav = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if "id" in attributes:
            self.ids.append(attributes["id"])
        if tag == "section":
            self.sections.append(attributes.get("id"))
        if tag == "nav":
            self._in_nav = True
        if tag == "a" and self._in_nav:
            self.nav_links.append(attributes["href"])
        if tag == "script":
            self.scripts += 1

    def handle_endtag(self, tag):
        if tag == "nav":
            self._in_nav = False


def parsed(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


def test_names_from_the_data_are_escaped(workspace):
    page = (workspace / "reports/index.html").read_text()
    assert HOSTILE not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page  # the title, the policy, the algorithm
    assert parsed(page).scripts == 0
    summary = (workspace / "reports/summary.md").read_text()
    assert HOSTILE not in summary and '&lt;script&gt;alert("x")&lt;/script&gt;' in summary


def test_the_summary_comes_first_and_the_sidebar_reaches_every_section(workspace):
    page = parsed((workspace / "reports/index.html").read_text())
    assert page.sections[0] == "summary"
    assert len(page.ids) == len(set(page.ids)), "ids are unique"
    targets = [href[1:] for href in page.nav_links]
    assert all(href.startswith("#") for href in page.nav_links)
    assert set(targets) <= set(page.ids)
    top_level = {"summary", "evaluate", "aggregate", "pi_bundle", "provenance", "markov_chain", "dqn",
                 "atari_dqn", "pg_lunarlander", "pg_cartpole"}
    assert top_level <= set(targets)
    assert "dqn@double_dqn" in targets and "dqn@double_dqn" in page.sections


def test_the_leader_per_environment_is_in_the_page_and_the_markdown(workspace):
    page = (workspace / "reports/index.html").read_text()
    summary = (workspace / "reports/summary.md").read_text()
    leader = "beta&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;"
    md_leader = 'beta&lt;script&gt;alert("x")&lt;/script&gt;'  # Markdown needs no quotes escaped
    rows = [line for line in summary.splitlines() if line.startswith("| CartPole-v1 |")]
    assert [row.split(" | ")[1] for row in rows] == ["200", "500"]
    for row, iqm in zip(rows, ("180.0 [175.0, 185.0]", "210.0 [205.0, 215.0]")):
        assert f"**{md_leader}**" in row and iqm in row
        assert "no comparison is supported" in row  # x_better is false in every pair
    winners_table = page.split('class="winners"')[1].split("</table>")[0]
    assert winners_table.count(f"<b>{leader}</b>") == 2 and "210.0 [205.0, 215.0]" in winners_table
    # Every experiment of the page's overview is a row of the Markdown's, with the same verdict.
    overview = page.split('class="overview"')[1].split("</table>")[0]
    verdicts = re.findall(r'<td><span class="verdict[^"]*">([^<]*)</span></td>', overview)
    md_rows = [line.split(" | ") for line in summary.splitlines() if line.startswith("| [")]
    assert [row[3] for row in md_rows] == verdicts and len(verdicts) == overview.count("<tr>") - 1


def test_the_reports_command_refuses_missing_inputs_and_names_them(workspace):
    message = (workspace / "refused.txt").read_text()
    assert message.startswith("the report's inputs are missing, nothing was written: ")
    assert "reports/nn_policy (made by nn_policy@" in message and "data/policies" not in message
    assert "python -m stages.report --partial" in message


def test_a_rerun_gives_the_same_bytes_but_for_volatile_spans(workspace):
    reports = workspace / "reports"
    for name in ("index", "summary"):
        suffix = "html" if name == "index" else "md"
        first, second = [(reports / f"{name}_{run}.{suffix}").read_text() for run in (1, 2)]
        assert strip_volatile(first) == strip_volatile(second)
    # A policy's evaluation time (logs/timings/evaluate/<policy>.json) is shown, in a volatile span only.
    timed = "<!--volatile-->72.0 min<!--/volatile-->"
    assert timed not in (reports / "index_1.html").read_text() and timed in (reports / "index_2.html").read_text()
    assert VOLATILE_START in (reports / "index_1.html").read_text()
    figures = sorted((reports / "report").glob("*.png"))
    assert [f.name for f in figures] == ["intervals_ALE_Game-v5.png", "intervals_CartPole-v1.png"]
    for figure in figures:
        assert (workspace / "figures_1" / figure.name).read_bytes() == figure.read_bytes()
    page = (reports / "index.html").read_text()
    assert all(f'src="report/{f.name}"' in page for f in figures)
    assert page.count('<figure class="span">') == 1  # CartPole's two caps: the figure spans the grid


def test_the_leader_is_the_highest_iqm_and_beats_only_what_the_intervals_allow():
    summary = pd.DataFrame([
        {"algorithm": a, "env_id": "E", "max_steps": 10, "runs": 5, "iqm": iqm, "iqm_ci_low": iqm - 1,
         "iqm_ci_high": iqm + 1} for a, iqm in (("a", 5.0), ("b", 9.0), ("c", 9.0))])
    pairs = pd.DataFrame([
        {"env_id": "E", "max_steps": 10, "algorithm_x": "b", "algorithm_y": y, "probability_x_beats_y": p,
         "ci_low": low, "ci_high": 1.0, "x_better": better}
        for y, p, low, better in (("a", 0.9, 0.7, True), ("c", 0.5, 0.2, False))])
    (leader,) = winners(summary, pairs)
    assert (leader.algorithm, leader.runner_up, leader.beaten) == ("b", "c", ("a",))  # a tie goes by name
    assert leader.over_runner_up.text(2) == "0.50 [0.20, 1.00]"
    assert leader.support == "beats 1 of 2 others; not shown better than the rest"
    assert winners(None, None) == [] and winners(summary.iloc[:1], None)[0].support.startswith("the only")


def test_every_algorithm_of_an_environment_is_one_table_in_the_page_and_the_markdown(workspace):
    page = (workspace / "reports/index.html").read_text()
    summary = (workspace / "reports/summary.md").read_text()
    assert 'href="#comparison"' in page and 'id="comparison"' in page
    tables = page.split('class="comparison"')[1:]
    assert len(tables) == 2  # CartPole at its two caps (the Atari policy has no training seeds)
    first = tables[0].split("</table>")[0]
    assert "CartPole-v1, 200-step cap: 2 algorithms" in page
    assert first.index("beta&lt;script&gt;") < first.index("<td>alpha</td>")  # best IQM first
    assert "1.00 [1.00, 1.00]" in first and "0.00 [0.00, 0.00]" in first and "<b>" not in first
    section = summary.split("## Per environment: every algorithm across training seeds")[1]
    assert "### CartPole-v1, 200-step cap" in section and "### CartPole-v1, 500-step cap" in section
    rows = [line for line in section.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert rows[0].startswith('| 1 | beta&lt;script&gt;alert("x")&lt;/script&gt; | 3 | 180.0 [175.0, 185.0] |')
    assert rows[1].endswith("| 0.00 [0.00, 0.00] | - |")


def test_the_comparison_orders_by_iqm_marks_supported_claims_and_sets_anchors_beside(tmp_path):
    from stages.core.settings import InputError
    from stages.report.comparison import comparisons, read_anchors

    summary = pd.DataFrame([
        {"algorithm": a, "env_id": env, "max_steps": 1000, "runs": 5,
         **{f"{name}{suffix}": iqm + shift for name in ("mean", "iqm")
            for suffix, shift in (("", 0), ("_ci_low", -1), ("_ci_high", 1))}}
        for a, env, iqm in (("ppo_x", "E", 250.0), ("reinforce", "E", 240.0), ("sac_x", "F", 200.0))])
    pairs = pd.DataFrame([
        {"env_id": "E", "max_steps": 1000, "algorithm_x": x, "algorithm_y": y, "probability_x_beats_y": p,
         "ci_low": low, "ci_high": high, "x_better": better}
        for x, y, p, low, high, better in (("ppo_x", "reinforce", 0.9, 0.6, 1.0, True),
                                           ("reinforce", "ppo_x", 0.1, 0.0, 0.4, False))])
    (tmp_path / "anchors.yaml").write_text(yaml.safe_dump({
        "ppo_x": {"env_id": "E", "max_steps": 1000, "source": "a benchmark", "mean": 242.1, "std": 31.8,
                  "environment_steps": 1000000, "target": "IQM at least 250"},
        "sac_x": {"env_id": "F", "max_steps": 1000, "source": "a benchmark", "mean": 260.4, "std": None,
                  "environment_steps": 500000}}))
    anchors = read_anchors(tmp_path / "anchors.yaml")
    on_e, on_f = comparisons(summary, pairs, anchors)
    assert on_e.algorithms == ("ppo_x", "reinforce") and on_f.algorithms == ("sac_x",)
    assert on_e.header() == ["#", "algorithm", "runs", "IQM [95% CI]", "mean [95% CI]", "published",
                             "P(> 1)", "P(> 2)"]
    assert on_e.markdown_rows() == [
        ["1", "ppo_x", "5", "250.0 [249.0, 251.0]", "250.0 [249.0, 251.0]",
         "242.1 +/- 31.8 at 1,000,000 steps (a benchmark)", "-", "**0.90 [0.60, 1.00]**"],
        ["2", "reinforce", "5", "240.0 [239.0, 241.0]", "240.0 [239.0, 241.0]", "-", "0.10 [0.00, 0.40]", "-"]]
    assert on_f.rows[0].anchor.text() == "260.4 at 500,000 steps"  # alone on its environment: still a table
    assert comparisons(None, None) == []
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"ppo_x": {"env_id": "E", "mean": 1.0}}))
    with pytest.raises(InputError, match="ppo_x lacks max_steps, source, std, environment_steps"):
        read_anchors(tmp_path / "bad.yaml")


def test_the_published_anchors_name_algorithms_and_environments_of_the_pipeline():
    from stages.core.settings import read_params_file
    from stages.report.comparison import ANCHORS, read_anchors
    from tests.conftest import REPO_ROOT

    params = read_params_file(REPO_ROOT / "params.yaml")
    algorithms = {f"{stage}_{config}": run["env_id"] for stage in ("a2c", "ppo", "sac")
                  for config, run in params[stage].items()}
    atari = params["atari_dqn"]  # a recipe's runs are one algorithm, <game>_<recipe> (stages/evaluate)
    algorithms |= {f"{run['game']}_{run['recipe']}": atari["games"][run["game"]]["env_id"]
                   for run in atari["runs"].values()}
    anchors = read_anchors(REPO_ROOT / ANCHORS)
    assert anchors and {(a, env) for a, env, _ in anchors} <= set(algorithms.items())
    assert ("breakout_drq_eps", "BreakoutNoFrameskip-v4", 27000) in anchors
