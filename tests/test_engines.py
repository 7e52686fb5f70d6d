"""Two engines, one workspace: each sees what the other did, a failed rerun keeps the previous
results, and one stage runs once at a time.

The workspace here is small and quick: a DVC repository holding the project's code and
Snakefile, with only the two cheap tabular stages (markov_chain, mdp) of dvc.yaml and their
sections of params.yaml. Every command is a real engine run in a real process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from stages.common.dvc_stamps import UP_TO_DATE_MTIME, stamp_path
from stages.common.stage_lock import StageBusy, holding, lock_file, stage_command
from tests.conftest import REPO_ROOT, file_digests, run
from stages.common.workspace import engine_env

BIN = Path(sys.executable).parent
SNAKEMAKE = [str(BIN / "snakemake"), "--cores", "1"]
DVC = str(BIN / "dvc")
CHEAP_STAGES = ("markov_chain", "mdp")
MARKOV_OUTPUTS = ["reports/markov_chain/metrics.json", "reports/markov_chain/runs.txt"]


@pytest.fixture
def cheap_workspace(tmp_path) -> Path:
    """A DVC repository (no git) with the project's code and only the cheap stages."""
    ws = tmp_path / "ws"
    shutil.copytree(REPO_ROOT / "stages", ws / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("Snakefile", ".dvcignore"):
        shutil.copy(REPO_ROOT / name, ws / name)
    dvc_yaml = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    (ws / "dvc.yaml").write_text(yaml.safe_dump(
        {"stages": {name: dvc_yaml["stages"][name] for name in CHEAP_STAGES}}, sort_keys=False))
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    (ws / "params.yaml").write_text(yaml.safe_dump(
        {key: params[key] for key in ("profile", "seeds", *CHEAP_STAGES)}, sort_keys=False))
    run([DVC, "init", "--no-scm", "-q"], ws)
    return ws


def edit_params(ws: Path, stage: str, **values) -> None:
    path = ws / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[stage].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def dvc_changed(ws: Path) -> set[str]:
    return set(json.loads(run([DVC, "status", "--json"], ws).stdout or "{}"))


def snakemake_plans(ws: Path, *targets: str) -> set[str]:
    """The rules a dry run would run (``all`` included when it is the target)."""
    result = run([*SNAKEMAKE, "--dry-run", *targets], ws)
    return set(re.findall(r"^rule (\w+):", result.stdout + result.stderr, flags=re.MULTILINE))


# --- Both engines see every change, whichever ran last ----------------------------------------

def test_snakemake_reruns_what_a_parameter_change_touches_in_a_workspace_dvc_built(cheap_workspace):
    ws = cheap_workspace
    run([DVC, "repro"], ws)
    assert snakemake_plans(ws) == set()  # DVC's outputs are up to date for Snakemake too
    assert (ws / stamp_path("markov_chain")).stat().st_mtime == UP_TO_DATE_MTIME

    edit_params(ws, "markov_chain", runs=7)
    assert dvc_changed(ws) == {"markov_chain"}
    assert snakemake_plans(ws) == {"markov_chain", "all"}

    run(SNAKEMAKE, ws)
    assert len(json.loads((ws / "reports/markov_chain/metrics.json").read_text())["runs"]) == 7
    assert dvc_changed(ws) == set() and snakemake_plans(ws) == set()


def test_dvc_sees_a_parameter_change_in_a_workspace_snakemake_built_and_back(cheap_workspace):
    """Snakemake builds (and records in dvc.lock); a change is seen by DVC; DVC reruns, and
    Snakemake agrees with that run; the value set back to the one Snakemake ran with is a change
    again for both (Snakemake's own record of that value is older than dvc.lock's)."""
    ws = cheap_workspace
    run(SNAKEMAKE, ws)
    assert dvc_changed(ws) == set() and snakemake_plans(ws) == set()

    original = yaml.safe_load((ws / "params.yaml").read_text())["mdp"]["q_learning"]
    edit_params(ws, "mdp", q_learning={**original, "transitions": original["transitions"] + 1})
    assert dvc_changed(ws) == {"mdp"}
    assert snakemake_plans(ws) == {"mdp", "all"}

    run([DVC, "repro"], ws)
    assert snakemake_plans(ws) == set()

    edit_params(ws, "mdp", q_learning=original)
    assert dvc_changed(ws) == {"mdp"}
    assert snakemake_plans(ws) == {"mdp", "all"}


def test_code_counts_by_its_content_for_both_engines(cheap_workspace):
    ws = cheap_workspace
    run([DVC, "repro"], ws)
    code = ws / "stages/markov_chain/__main__.py"
    os.utime(code)  # touched, not changed (a checkout, an editor's save)
    assert dvc_changed(ws) == set() and snakemake_plans(ws) == set()
    code.write_text(code.read_text() + "\n# changed\n")
    assert dvc_changed(ws) == {"markov_chain"}
    assert snakemake_plans(ws) == {"markov_chain", "all"}
