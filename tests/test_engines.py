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

from stages.core.dag import BACKUP_DIR, SNAKEMAKE_LOCKS, clear_stale_backups
from pipeline.dvc_stamps import UP_TO_DATE_MTIME, stamp_path
from stages.core.stage_lock import StageBusy, holding, lock_file, stage_command
from pipeline.workspace import engine_env
from tests.conftest import REPO_ROOT, file_digests, run

BIN = Path(sys.executable).parent
SNAKEMAKE = [str(BIN / "snakemake"), "--cores", "1"]
DVC = str(BIN / "dvc")
CHEAP_STAGES = ("markov_chain", "mdp")
MARKOV_OUTPUTS = ["reports/markov_chain/metrics.json", "reports/markov_chain/runs.txt"]


@pytest.fixture
def cheap_workspace(tmp_path) -> Path:
    """A DVC repository (no git) with the project's code and only the cheap stages."""
    ws = tmp_path / "ws"
    for code in ("stages", "pipeline"):  # the stages, and the tooling the Snakefile runs
        shutil.copytree(REPO_ROOT / code, ws / code, ignore=shutil.ignore_patterns("__pycache__"))
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

@pytest.mark.e2e
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


@pytest.mark.e2e
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


@pytest.mark.e2e
def test_code_counts_by_its_content_for_both_engines(cheap_workspace):
    ws = cheap_workspace
    run([DVC, "repro"], ws)
    code = ws / "stages/markov_chain/__main__.py"
    os.utime(code)  # touched, not changed (a checkout, an editor's save)
    assert dvc_changed(ws) == set() and snakemake_plans(ws) == set()
    code.write_text(code.read_text() + "\n# changed\n")
    assert dvc_changed(ws) == {"markov_chain"}
    assert snakemake_plans(ws) == {"markov_chain", "all"}


# --- A failed rerun keeps the previous results -------------------------------------------------

@pytest.mark.e2e
@pytest.mark.parametrize("engine", ["snakemake", "dvc"])
def test_a_failed_rerun_keeps_the_previous_outputs(cheap_workspace, engine):
    """The stage fails after its work, before writing (the test breaks its code): its previous
    outputs stay, byte for byte, under either engine."""
    ws = cheap_workspace
    run([DVC, "repro"], ws)
    before = file_digests(ws, MARKOV_OUTPUTS)
    code = ws / "stages/markov_chain/__main__.py"
    code.write_text(code.read_text().replace(
        '    write_text(f"{OUT}/runs.txt"', '    raise RuntimeError("injected failure")\n    write_text(f"{OUT}/runs.txt"'))
    command = ([*SNAKEMAKE, "-f", MARKOV_OUTPUTS[0]] if engine == "snakemake"
               else [DVC, "repro", "-f", "-s", "markov_chain"])
    failed = run(command, ws, check=False)
    assert failed.returncode != 0 and "injected failure" in failed.stdout + failed.stderr
    assert file_digests(ws, MARKOV_OUTPUTS) == before


# --- One run of a stage at a time --------------------------------------------------------------

HOLD = """
import sys
from stages.core.stage_lock import holding
with holding(sys.argv[1]):
    print("holding", flush=True)
    sys.stdin.read()
"""


def test_a_stage_refuses_to_start_while_another_process_runs_it(cheap_workspace):
    """A process holds markov_chain's lock through the lock helper; the real stage, started
    meanwhile, stops at once naming that process and writes nothing; once the holder ends (the
    operating system drops its lock), the stage runs."""
    ws = cheap_workspace
    command = stage_command("stages.markov_chain", [])
    holder = subprocess.Popen([sys.executable, "-c", HOLD, command], cwd=ws, env=engine_env(),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        refused = run([sys.executable, "-m", "stages.markov_chain"], ws, check=False)
        assert refused.returncode == StageBusy.exit_status, refused.stderr
        assert f"stage '{command}' is already running in this workspace: pid {holder.pid}" in refused.stderr
        assert not (ws / "reports/markov_chain").exists()
        with pytest.raises(StageBusy, match=f"pid {holder.pid}"), holding(command, ws):
            pass
    finally:
        holder.communicate("")
    run([sys.executable, "-m", "stages.markov_chain"], ws)
    assert all((ws / path).is_file() for path in MARKOV_OUTPUTS)
    assert json.loads(lock_file(command, ws).read_text())["command"] == command


def wait_for_holder(ws: Path, command: str, engine: str, timeout: float = 120) -> dict:
    """The lock file's record once a run started by ``engine`` (its "name (pid N: " prefix) holds
    the stage's lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            holder = json.loads(lock_file(command, ws).read_text())
            if (holder.get("engine") or "").startswith(engine):
                return holder
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"no run of {command} took its lock within {timeout} s")


def start(command: list[str], ws: Path) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=ws, env=engine_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.mark.e2e
def test_two_engines_never_run_one_stage_at_once(cheap_workspace):
    """Snakemake runs a long markov_chain: `dvc repro` of it is refused, naming Snakemake; and the
    other way round. The refused engine fails and the outputs stay those of the last complete run
    (each long run is killed: a kill keeps them too)."""
    ws = cheap_workspace
    run([DVC, "repro"], ws)
    before = file_digests(ws, MARKOV_OUTPUTS)
    edit_params(ws, "markov_chain", transition_matrix=[[0.5, 0.5], [0.5, 0.5]], start_state=0, runs=1,
                max_steps=10**9)  # a chain with no end: runs until killed
    command = stage_command("stages.markov_chain", [])

    snakemake = start([*SNAKEMAKE, "-f", MARKOV_OUTPUTS[0]], ws)
    try:
        wait_for_holder(ws, command, f"snakemake (pid {snakemake.pid}: ")
        refused = run([DVC, "repro", "-f", "-s", "markov_chain"], ws, check=False)
        assert refused.returncode != 0
        assert "is already running in this workspace: pid " in refused.stdout + refused.stderr
        assert f"by snakemake (pid {snakemake.pid}: " in refused.stdout + refused.stderr
    finally:
        stop(snakemake)
    assert file_digests(ws, MARKOV_OUTPUTS) == before
    run([*SNAKEMAKE, "--unlock"], ws)

    dvc = start([DVC, "repro", "-f", "-s", "markov_chain"], ws)
    try:
        wait_for_holder(ws, command, f"dvc (pid {dvc.pid}: ")
        # (--rerun-incomplete: the killed Snakemake run left the outputs marked as being written)
        refused = run([*SNAKEMAKE, "--rerun-incomplete", "-f", MARKOV_OUTPUTS[0]], ws, check=False)
        assert refused.returncode != 0
        assert f"by dvc (pid {dvc.pid}: " in refused.stdout + refused.stderr
        assert file_digests(ws, MARKOV_OUTPUTS) == before  # Snakemake's refused job removed nothing
    finally:
        stop(dvc)
    assert file_digests(ws, MARKOV_OUTPUTS) == before


def test_a_backup_left_by_a_killed_snakemake_is_cleared_once_no_snakemake_runs(tmp_path):
    """Snakemake does not copy a folder output over an earlier copy, so one left by a killed run
    would fail the job's next run; it goes when the Snakefile is read with no Snakemake holding
    the folder, and stays while one does (it may be that run's own)."""
    left = tmp_path / BACKUP_DIR / "data/policies/dqn_s42"
    left.mkdir(parents=True)
    (left / "policy.json").write_text("{}")
    held = tmp_path / SNAKEMAKE_LOCKS / "0.output.lock"
    held.parent.mkdir(parents=True)
    held.write_text("data/policies/dqn_s42\n")
    assert not clear_stale_backups(tmp_path) and left.is_dir()
    held.unlink()  # `snakemake --unlock`, or the run ended
    assert clear_stale_backups(tmp_path) and not (tmp_path / BACKUP_DIR).exists()
