"""Shared fixtures: the repository root, and workspaces running the quick profile."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

import stages  # noqa: F401  (sets TensorFlow's Keras mode before any test imports TensorFlow)
from pipeline.reproduction import (  # noqa: F401  (tests import them from here)
    SNAKEMAKE_DIRECTORY_MARKER, file_digests, produced_by_a_stage, reproducible_bytes)
from pipeline.workspace import REPO_ROOT, create_workspace, engine_env


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@functools.cache
def _repo_stages() -> tuple:
    from stages.core.dag import read_dag

    return tuple(read_dag(REPO_ROOT))


def repo_stages() -> list:
    """The repository's DAG as DVC resolves it (read once per test session)."""
    return list(_repo_stages())


def edited_params(folder: Path, edit) -> Path:
    """``folder``/params.yaml: the repository's, changed by ``edit``; with dvc.yaml beside it in a
    DVC repository of its own, so the DAG it resolves to can be read there."""
    data = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    edit(data)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    shutil.copy(REPO_ROOT / "dvc.yaml", folder / "dvc.yaml")
    if not (folder / ".dvc").exists():
        subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=folder, check=True)
    return path


def run(command: list[str], cwd: Path, check: bool = True,
        timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run a pipeline command the way a user would, with this environment's tools first on PATH.

    With ``timeout`` (seconds), a command still running then is killed and raises
    ``subprocess.TimeoutExpired`` holding what it printed so far."""
    result = subprocess.run(command, cwd=cwd, env=engine_env(), capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


@pytest.fixture
def quick_workspace(tmp_path_factory):
    """A factory: a new workspace holding the project with the quick profile applied."""

    def make(name: str = "ws") -> Path:
        return create_workspace(tmp_path_factory.mktemp(name) / "repo", profile="quick")

    return make


BIN = Path(sys.executable).parent
SNAKEMAKE = [str(BIN / "snakemake"), "--cores", "2"]
DVC = str(BIN / "dvc")


@contextlib.contextmanager
def exclusive(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` (created if missing) for the block: one process at
    a time, across the pytest-xdist workers and any other process taking the same lock."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


def shared_temp(tmp_path_factory, worker_id: str) -> Path:
    """The temporary folder every pytest-xdist worker of this session sees (the session's own
    folder when the tests run in one process)."""
    base = tmp_path_factory.getbasetemp()
    return base if worker_id == "master" else base.parent


def built_once(name: str, build: Callable[[Path], object], tmp_path_factory, worker_id: str) -> Path:
    """The folder ``build`` fills, built once per test session whichever pytest-xdist worker asks
    first: that worker builds it under a file lock in the session's shared temporary folder, the
    others wait for the lock and get the same folder, which every user treats as read-only. A
    build that failed is reported to every later asker, not tried again."""
    shared = shared_temp(tmp_path_factory, worker_id) / name
    folder, done, failed = shared / "repo", shared / "done", shared / "failed.txt"
    with exclusive(shared.with_suffix(".lock")):
        if failed.exists():
            pytest.fail(f"building {name} failed (in another worker):\n{failed.read_text()}")
        if not done.exists():
            shared.mkdir(exist_ok=True)
            try:
                build(folder)
            except BaseException as error:
                failed.write_text(f"{type(error).__name__}: {error}")
                raise
            done.touch()
    return folder


def _run_the_quick_profile(ws: Path) -> None:
    create_workspace(ws, profile="quick")
    run(SNAKEMAKE, ws)


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory, worker_id) -> Path:
    """The quick profile run once through Snakemake for the whole session (:func:`built_once`).
    It is read-only: a test that runs an engine or changes a file works on a clone
    (``clone_of_quick_run``)."""
    return built_once("quick", _run_the_quick_profile, tmp_path_factory, worker_id)


def one_stage_of_every_kind(stages: list) -> list:
    """The first stage the DAG declares for each stage module: every kind of stage (tabular,
    policy gradient, DQN, TF-Agents, the consumers of every policy) once, per-seed ones at their
    first seed. The second and third passes over the quick profile (DVC, SLURM) run these."""
    chosen: dict[str, object] = {}
    for stage in stages:
        chosen.setdefault(stage.module, stage)
    return list(chosen.values())


def with_downstream(stages: list, chosen: list) -> list:
    """``chosen`` and every stage that reads, directly or not, what they write (in DAG order):
    what an engine reruns once the chosen stages are rebuilt."""
    names = {stage.name for stage in chosen}
    grown = True
    while grown:
        written = {o for stage in stages if stage.name in names for o in stage.outs}
        readers = {stage.name for stage in stages
                   if any(produced_by_a_stage(d, written) for d in (*stage.deps, *stage.inputs))}
        grown = not readers <= names
        names |= readers
    return [stage for stage in stages if stage.name in names]


def remove_outputs(workspace: Path, stages: list) -> None:
    """Delete the outputs and the resumable state of ``stages``: they must run from nothing."""
    for stage in stages:
        for path in (*stage.outs, *stage.state):
            target = workspace / path
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()


# What a clone leaves out: the engines' lock and scratch folders, which name processes of the
# source folder, not of the clone.
ENGINE_LOCKS = {".dvc": {"tmp"}, ".snakemake": {"locks"}}


def engine_locks(folder: str, names: list[str]) -> set[str]:
    """``shutil.copytree``'s ``ignore``: the entries of :data:`ENGINE_LOCKS` found in ``folder``."""
    return ENGINE_LOCKS.get(Path(folder).name, set()) & set(names)


@pytest.fixture
def clone_of_quick_run(quick_run, tmp_path):
    """A private copy of the finished run (git, DVC cache, Snakemake metadata, outputs)."""
    def make() -> Path:
        target = tmp_path / f"clone-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(quick_run, target, symlinks=True, ignore=engine_locks)
        return target

    return make


def dvclive_history(folder: Path, step_name: str, metrics: set[str]):
    """A trainer's DVCLive folder, checked: each metric's .tsv (read with pandas) holds ``step`` and
    the metric, steps increasing, no timestamp; metrics.json names the step. The merged history."""
    import json as _json

    import pandas as pd

    from stages.core.live_log import read_history

    summary = _json.loads((folder / "metrics.json").read_text())
    assert summary["step_name"] == step_name and metrics <= set(summary), summary
    written = {tsv.stem for tsv in (folder / "plots/metrics").glob("*.tsv")}
    assert metrics <= written and not any(name.endswith("wall_time_s") for name in written), written
    for metric in metrics:
        table = pd.read_csv(folder / "plots/metrics" / f"{metric}.tsv", sep="\t")
        assert list(table.columns) == ["step", metric]
        assert table["step"].is_monotonic_increasing and table["step"].iloc[-1] == summary["step"]
    history = read_history(folder)
    assert history.columns[0] == step_name
    return history


# The longest tests that use the shared quick run, longest first (measured): the first of them
# builds the quick run. Only an order: a test missing here just runs after these.
LONGEST_FIRST = ("tests/test_slurm.py::", "tests/test_extending.py::",
                 "tests/test_pipeline.py::test_dvc_repro_reproduces",
                 "tests/test_atari.py::test_both_games_run_end_to_end",
                 "tests/test_atari_recipe.py::test_every_run_of_a_recipe",
                 "tests/test_report.py::test_dvc_metrics_and_plots",
                 "tests/test_pipeline.py::test_a_parameter_change")


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected: only the selected tests count
def pytest_collection_modifyitems(config, items):
    """An order that keeps both pytest-xdist workers busy. The first slow test (``e2e``,
    ``system``) that uses the shared quick run starts first, and its worker builds the run. The
    other worker meanwhile takes the slow tests that need no quick run, then the fast tests, so
    that it waits for the run as little as possible. The other users of the quick run come last,
    longest first, so that short ones fill in the end."""
    def slow(item) -> bool:
        return any(item.get_closest_marker(name) for name in ("e2e", "system"))

    def first(item) -> int:
        return next((i for i, prefix in enumerate(LONGEST_FIRST) if item.nodeid.startswith(prefix)),
                    len(LONGEST_FIRST))

    sharing = sorted((i for i in items if slow(i) and "quick_run" in i.fixturenames), key=first)
    alone = [i for i in items if slow(i) and "quick_run" not in i.fixturenames]
    fast = [i for i in items if not slow(i)]
    items[:] = sharing[:1] + alone + fast + sharing[1:]

    # One worker (or the only process) starts the Debian packages the selected system tests need
    # installing now, in the background (tests/debian.py), rather than when each test gets there.
    if os.environ.get("PYTEST_XDIST_WORKER", "gw0") == "gw0":
        from tests.debian import install_in_background

        needed = {name for item in items for name in item.fixturenames}
        config.stash[APT_JOB] = install_in_background(needed, Path(tempfile.gettempdir()) / "rl-pipeline-apt.log")


APT_JOB = pytest.StashKey["subprocess.Popen | None"]()


def pytest_sessionfinish(session):
    """Wait for the background installer (:func:`pytest_collection_modifyitems`) if it still runs:
    cutting apt-get short would leave dpkg half-configured."""
    job = session.config.stash.get(APT_JOB, None)
    if job is not None:
        job.wait()
