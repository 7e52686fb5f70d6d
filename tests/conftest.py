"""Shared fixtures: the repository root, and workspaces running the quick profile."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import stages  # noqa: F401  (sets TensorFlow's Keras mode before any test imports TensorFlow)
from stages.common.reproduction import (  # noqa: F401  (tests import them from here)
    SNAKEMAKE_DIRECTORY_MARKER, file_digests, produced_by_a_stage, reproducible_bytes)
from stages.common.workspace import REPO_ROOT, create_workspace, engine_env


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@functools.cache
def _repo_stages() -> tuple:
    from stages.common.dag import read_dag

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


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory) -> Path:
    """The quick profile run once through Snakemake; tests that change things work on clones."""
    ws = create_workspace(tmp_path_factory.mktemp("quick") / "repo", profile="quick")
    run(SNAKEMAKE, ws)
    return ws


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


@pytest.fixture
def clone_of_quick_run(quick_run, tmp_path):
    """A private copy of the finished run (git, DVC cache, Snakemake metadata, outputs)."""
    def make() -> Path:
        target = tmp_path / f"clone-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(quick_run, target, symlinks=True)
        return target

    return make


def dvclive_history(folder: Path, step_name: str, metrics: set[str]):
    """A trainer's DVCLive folder, checked: each metric's .tsv (read with pandas) holds ``step`` and
    the metric, steps increasing, no timestamp; metrics.json names the step. The merged history."""
    import json as _json

    import pandas as pd

    from stages.common.live_log import read_history

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
