"""Results in git: the small results are committed (DVC ``cache: false``, seen by git), models and
images stay in DVC's cache (and out of git), and the gathering stages read only committed results,
so that a clone with no cached artifact shows the metrics and rebuilds the aggregate's tables."""

from __future__ import annotations

import filecmp
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dvc.repo import Repo

from stages.core.dag import gathered_folders
from stages.core.html import strip_volatile
from tests.conftest import DVC, repo_stages, run

# Kinds of outputs that are results a reader and the gathering stages need: small, committed.
COMMITTED_NAMES = ("metrics.json", "summary.json", "summary.md")
# Kinds that stay in DVC's cache: models (the policy index), images, the bundle.
CACHED_SUFFIXES = (".png", ".gif", ".keras", ".tar.gz")
GATHERING = ("evaluate", "aggregate")


def declared_outputs(root: Path) -> list[tuple[str, str, bool, str | None]]:
    """(stage, path, cached, type) of every output of ``root``/dvc.yaml as DVC resolves it."""
    with Repo(str(root)) as repo:
        return [(stage.name, out.def_path, out.use_cache, out.annot.type)
                for stage in repo.index.stages for out in stage.outs]


def ignored(root: Path, paths: list[str]) -> set[str]:
    """Which of ``paths`` root/.gitignore ignores (a path ending in / is a folder)."""
    result = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=root, input="\n".join(paths),
                            capture_output=True, text=True)
    assert result.returncode in (0, 1), result.stderr
    return set(result.stdout.split())


def probes(path: str) -> list[str]:
    """What git is asked about an output: the file, or for a folder a file in it."""
    return [path] if Path(path).suffix else [f"{path}/metric.tsv"]


def test_committed_results_and_cached_artifacts_are_told_apart(repo_root):
    outputs = declared_outputs(repo_root)
    def wrong(path: str, cached: bool) -> bool:
        result = Path(path).name in COMMITTED_NAMES or "/dvclive/" in path
        artifact = path.endswith(CACHED_SUFFIXES) or path.startswith(("data/policies/", "data/pi_bundle"))
        return (result and cached) or (artifact and not cached)

    wrong_kind = [f"{stage}: {path} is {'cached' if cached else 'cache: false'}"
                  for stage, path, cached, kind in outputs if kind != "checkpoint" and wrong(path, cached)]
    assert wrong_kind == []

    asked = [p for _, path, _, _ in outputs for p in probes(path)]
    hidden = ignored(repo_root, asked)
    problems = []
    for stage, path, cached, kind in outputs:
        committed = not cached and kind != "checkpoint"  # a checkpoint: resumable state, in neither
        seen = [p for p in probes(path) if p not in hidden]
        if committed and len(seen) != len(probes(path)):
            problems.append(f"{stage}: {path} is cache: false but git ignores it")
        if not committed and seen:
            problems.append(f"{stage}: {path} is {'cached' if cached else 'a checkpoint'} but git sees it")
    assert problems == []
    # What git already keeps there (the book's numbers in data/) stays visible to it.
    tracked = subprocess.run(["git", "ls-files", "data", "reports"], cwd=repo_root, capture_output=True,
                             text=True, check=True).stdout.split()
    assert "data/book_results.yaml" in tracked and ignored(repo_root, tracked) == set()


def test_the_gathering_stages_read_only_committed_results(repo_root):
    stages = repo_stages()
    cached = {path for _, path, cached, _ in declared_outputs(repo_root) if cached}
    every_output = {out for stage in stages for out in stage.outs}
    for stage in (s for s in stages if s.name in GATHERING):
        read = [out for dep in stage.deps for out in every_output
                if out == dep or out.startswith(dep.rstrip("/") + "/")]
        assert read, f"{stage.name} reads no other stage's output"
        assert [out for out in read if out in cached] == [], f"{stage.name} reads cached outputs"
    report = next(s for s in stages if s.name == "report")
    assert not any(dep == "data/policies" or dep.startswith("data/policies/") for dep in report.deps)
    evaluate = next(s for s in stages if s.name == "evaluate")
    assert gathered_folders(evaluate, stages) == ["reports/evaluate/policies"]


def committed_only(workspace: Path) -> None:
    """Make ``workspace`` a clone with no cached artifact: no DVC cache, no cached output (what
    git ignores under data/ and reports/ goes), only what git would commit."""
    shutil.rmtree(workspace / ".dvc" / "cache", ignore_errors=True)
    listing = subprocess.run(["git", "ls-files", "--others", "--ignored", "--exclude-standard", "-z",
                              "data", "reports"], cwd=workspace, capture_output=True, text=True, check=True)
    for name in filter(None, listing.stdout.split("\0")):
        (workspace / name).unlink()
    for folder in ("data/policies", "data/pi_bundle", "reports/report"):
        shutil.rmtree(workspace / folder, ignore_errors=True)


AGGREGATE_TABLES = ("summary.csv", "probability_of_improvement.csv", "supported_comparisons.txt")


def comparable(page: str) -> str:
    """The page less its volatile parts and the Pi bundle's section (the bundle's benchmark is
    the bundle stage's output, kept in DVC's cache)."""
    return re.sub(r'<section id="pi_bundle">.*?</section>', "", strip_volatile(page), flags=re.DOTALL)


def rebuild_from_committed_results(workspace: Path) -> None:
    """Remove the DVC cache and every cached output, then rebuild the gathered evaluation, the
    aggregate and the report from what is left: the tables come out byte-identical, the page the
    same but for its volatile parts, and ``dvc metrics show`` lists every stage's metrics."""
    before = workspace.parent / "before"
    shutil.copytree(workspace / "reports", before)
    committed_only(workspace)
    assert not (workspace / "data/policies").exists()
    assert not list((workspace / "reports").rglob("*.png")) and not list((workspace / "reports").rglob("*.gif"))

    for module in ("stages.evaluate", "stages.aggregate", "stages.report"):
        run([sys.executable, "-m", module], workspace)
    for table in ("returns.csv", "summary.csv", "metrics.json"):
        assert filecmp.cmp(before / "evaluate" / table, workspace / "reports/evaluate" / table, shallow=False), table
    for table in AGGREGATE_TABLES:
        assert filecmp.cmp(before / "aggregate" / table, workspace / "reports/aggregate" / table, shallow=False), table
    assert filecmp.cmp(before / "summary.md", workspace / "reports/summary.md", shallow=False)
    page = (workspace / "reports/index.html").read_text()
    assert comparable(page) == comparable((before / "index.html").read_text())
    assert 'alt="dqn/dqn/s42/dqn.gif' in page  # linked, though not there: its alt text is the placeholder

    shown = run([DVC, "metrics", "show", "--json"], workspace).stdout
    for path in ("reports/markov_chain/metrics.json", "reports/aggregate/metrics.json",
                 "reports/evaluate/policies/dqn_s42/summary.json", "data/dqn/dqn/s42/dvclive/metrics.json"):
        assert path in shown, path
    run([DVC, "plots", "diff", "--json"], workspace)


@pytest.mark.e2e
def test_the_aggregate_and_the_report_rebuild_from_committed_results_alone(clone_of_quick_run):
    rebuild_from_committed_results(clone_of_quick_run())


def test_a_profile_workspace_leaves_the_committed_results_behind(tmp_path):
    """The committed results are the full profile's, like dvc.lock: a quick workspace starts
    without them (an engine would take them for its own), and keeps data/'s own files."""
    from pipeline.workspace import create_workspace

    source = create_workspace(tmp_path / "source", profile=None)
    for result in ("reports/markov_chain/metrics.json", "data/dqn/dqn/s42/dvclive/metrics.json"):
        (source / result).parent.mkdir(parents=True, exist_ok=True)
        (source / result).write_text("{}\n")
    assert not ignored(source, ["reports/markov_chain/metrics.json", "data/dqn/dqn/s42/dvclive/metrics.json"])
    quick = create_workspace(tmp_path / "quick", profile="quick", source=source)
    assert not (quick / "reports").exists() and not (quick / "data/dqn").exists()
    assert (quick / "data/book_results.yaml").is_file()
    as_is = create_workspace(tmp_path / "as-is", profile=None, source=source)
    assert (as_is / "reports/markov_chain/metrics.json").is_file()
