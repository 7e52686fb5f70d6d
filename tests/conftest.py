"""Shared fixtures: the repository root, and workspaces running the quick profile."""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import stages  # noqa: F401  (sets TensorFlow's Keras mode before any test imports TensorFlow)
from stages.common.html import strip_volatile
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


TIMING_SUFFIX = "wall_time_s"


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if not k.endswith(TIMING_SUFFIX)}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def reproducible_bytes(file: Path) -> bytes:
    """A file's bytes, less what may differ between identical runs: wall-clock timings.

    Outputs must be byte-identical across reruns, except JSON keys and CSV columns whose name
    ends in ``wall_time_s``, and the volatile spans of the report's page and Markdown summary
    (timings, date, machine, git commit; see stages/common/html.py); those are dropped before
    comparing (their presence is still checked).
    """
    if file.suffix in (".html", ".md"):  # the report's page and its Markdown summary
        return strip_volatile(file.read_text()).encode()
    if file.suffix == ".json":
        return json.dumps(_without_timings(json.loads(file.read_text())), sort_keys=True).encode()
    if file.suffix == ".csv":
        lines = file.read_text().splitlines()
        header = lines[0].split(",") if lines else []
        keep = [i for i, name in enumerate(header) if not name.endswith(TIMING_SUFFIX)]
        if len(keep) < len(header):
            return "\n".join(",".join(row.split(",")[i] for i in keep) for row in lines).encode()
    return file.read_bytes()


# Snakemake marks each directory output with this empty file; DVC ignores it (.dvcignore).
SNAKEMAKE_DIRECTORY_MARKER = ".snakemake_timestamp"


def file_digests(root: Path, paths: list[str]) -> dict[str, str]:
    """sha256 of every file named or inside a folder named (less Snakemake's marker); no timings."""
    digests = {}
    for path in paths:
        target = root / path
        files = (sorted(f for f in target.rglob("*")
                        if f.is_file() and f.name != SNAKEMAKE_DIRECTORY_MARKER)
                 if target.is_dir() else [target])
        for file in files:
            digests[str(file.relative_to(root))] = hashlib.sha256(reproducible_bytes(file)).hexdigest()
    return digests


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
