"""The quick profile end to end through Snakemake and DVC, and the reproducibility contract.

The quick profile runs once in full through Snakemake in a workspace (a git copy of the project
with profiles/quick.yaml applied; fixture ``quick_run`` in conftest.py, shared with other test
files). DVC then reruns a stage of every kind from nothing in a copy of it; tests that change
parameters work on copies too. Nothing here touches the repository's params.yaml or outputs.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.reproduction import measures_time
from stages.core.dag import read_dag, rule_name
from tests.conftest import (
    SNAKEMAKE,
    SNAKEMAKE_DIRECTORY_MARKER,
    file_digests,
    one_stage_of_every_kind,
    remove_outputs,
    run,
)
from tests.test_dag import dvc_view

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")
PYTHON = sys.executable


def declared_outputs(workspace: Path) -> list[str]:
    return sorted(o for stage in dvc_view(workspace).values() for o in stage["outs"])


def metrics_files(workspace: Path) -> list[str]:
    return [o for o in declared_outputs(workspace) if o.endswith("metrics.json")]


def dvc_changed_stages(workspace: Path) -> set[str]:
    return set(json.loads(run([DVC, "status", "--json"], workspace).stdout or "{}"))


def snakemake_planned_jobs(workspace: Path) -> set[str]:
    result = run([*SNAKEMAKE, "--dry-run"], workspace)
    return set(re.findall(r"^rule (\w+):", result.stdout + result.stderr, flags=re.MULTILINE))


def edit_params(workspace: Path, edit) -> None:
    path = workspace / "params.yaml"
    params = yaml.safe_load(path.read_text())
    edit(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False, default_flow_style=None))


def mtimes(workspace: Path, paths: list[str]) -> dict[str, int]:
    return {p: (workspace / p).stat().st_mtime_ns for p in paths}


def outputs_of(workspace: Path, stage: str) -> list[str]:
    return dvc_view(workspace)[stage]["outs"]


def test_snakemake_runs_the_quick_profile_and_leaves_dvc_up_to_date(clone_of_quick_run):
    ws = clone_of_quick_run()  # the engines are asked again: on a copy, the shared run stays as it is
    for output in declared_outputs(ws):
        assert (ws / output).exists(), output
        files = [ws / output, *(ws / output).rglob("*")]
        assert all(f.stat().st_size > 0 for f in files
                   if f.is_file() and f.name != SNAKEMAKE_DIRECTORY_MARKER), output
    assert yaml.safe_load((ws / "params.yaml").read_text())["profile"] == "quick"
    assert dvc_changed_stages(ws) == set()
    assert "Nothing to be done" in run([*SNAKEMAKE, "--dry-run"], ws).stdout
    repro = run([DVC, "repro"], ws).stdout
    assert "Running stage" not in repro


def test_dvc_repro_reproduces_snakemakes_outputs_byte_for_byte(quick_run, clone_of_quick_run):
    """Two engines, the same bytes: a stage of every kind, its outputs and resumable state
    deleted, is run again by DVC and gives what Snakemake's run gave (so every stage module is
    deterministic whichever engine starts it), and DVC runs those stages and no other. The
    reproduction check, recorded from Snakemake's run, says the same stage by stage."""
    ws = clone_of_quick_run()
    recorded = run([PYTHON, "-m", "pipeline.reproduction", "record"], ws).stdout
    assert f"{len(read_dag(ws))} stages recorded" in recorded
    chosen = one_stage_of_every_kind(read_dag(ws))
    remove_outputs(ws, chosen)
    not_run = run([PYTHON, "-m", "pipeline.reproduction", "check"], ws).stdout
    assert verdicts(not_run) == {s.name: "not run" if s in chosen else "reproduced"
                                 for s in read_dag(ws)}
    ran = [line.split("'")[1] for line in run([DVC, "repro"], ws).stdout.splitlines()
           if line.startswith("Running stage '")]
    assert sorted(ran) == sorted(stage.name for stage in chosen)
    assert dvc_changed_stages(ws) == set()
    # (Stages whose results are measured times are compared without them.)
    for stage in chosen:
        timed = measures_time(stage.name)
        assert file_digests(ws, stage.outs, timed) == file_digests(quick_run, stage.outs, timed), stage.name
    rerun = run([PYTHON, "-m", "pipeline.reproduction", "check"], ws).stdout
    assert set(verdicts(rerun).values()) == {"reproduced"}, rerun


VERDICTS = ("reproduced", "differs", "partly here", "other inputs", "not run", "not recorded")


def verdicts(check_output: str) -> dict[str, str]:
    """stage -> verdict, from `python -m pipeline.reproduction check` (last line: counts)."""
    found = {}
    for line in check_output.strip().splitlines()[:-1]:
        stage, rest = line.split(maxsplit=1)
        found[stage] = next(v for v in VERDICTS if rest.startswith(v))
    return found


def test_a_parameter_change_reruns_only_the_stages_that_read_it(clone_of_quick_run):
    ws = clone_of_quick_run()
    assert dvc_changed_stages(ws) == set()
    untouched = outputs_of(ws, "markov_chain") + outputs_of(ws, "cartpole_basics")
    stamps = mtimes(ws, untouched)

    # Snakemake: the MDP's discounts change; only the mdp rule (then the report that shows it, and
    # the aggregate target) reruns.
    edit_params(ws, lambda p: p["mdp"]["q_value_iteration"].update(discounts=[0.9, 0.99]))
    assert dvc_changed_stages(ws) == {"mdp"}
    assert snakemake_planned_jobs(ws) == {"mdp", "report", "all"}
    run(SNAKEMAKE, ws)
    assert json.loads((ws / "reports/mdp/metrics.json").read_text())["q_value_iteration"].keys() == {"0.9", "0.99"}
    assert dvc_changed_stages(ws) == set()

    # DVC: the hard-coded policy's episode count changes; only cartpole_basics reruns.
    edit_params(ws, lambda p: p["cartpole_basics"]["evaluation"].update(episodes=12))
    repro = run([DVC, "repro"], ws).stdout
    assert "Running stage 'cartpole_basics'" in repro
    assert "Running stage 'mdp'" not in repro and "Running stage 'markov_chain'" not in repro
    assert json.loads((ws / "reports/cartpole_basics/metrics.json").read_text())["basic_policy"]["episodes"] == 12
    assert mtimes(ws, outputs_of(ws, "markov_chain")) == {p: stamps[p] for p in outputs_of(ws, "markov_chain")}
    assert dvc_changed_stages(ws) == set()


def test_a_rerun_that_reproduces_leaves_dvc_lock_as_it_was(clone_of_quick_run):
    """Stages keep their timings out of their outputs (logs/timings/): `dvc repro -f -s` of
    markov_chain and a training seed of nn_policy writes the same bytes, so dvc.lock's record of
    every stage stays as it was, and the timings are written apart."""
    ws = clone_of_quick_run()
    stages = ["markov_chain", next(s.name for s in read_dag(ws) if s.name.startswith("nn_policy@"))]
    outputs = sorted(o for stage in read_dag(ws) if stage.name in stages for o in stage.outs)
    before = {path: (ws / path).read_bytes() for path in ("dvc.lock", *outputs) if (ws / path).is_file()}
    for stage in stages:
        run([DVC, "repro", "-f", "-s", stage], ws)
    after = {path: (ws / path).read_bytes() for path in before}
    assert yaml.safe_load(after.pop("dvc.lock")) == yaml.safe_load(before.pop("dvc.lock"))
    assert after == before
    assert not any(b"wall_time_s" in (ws / path).read_bytes() for path in outputs if path.endswith(".json"))
    timings = json.loads((ws / "logs/timings" / f"{stages[1]}.json").read_text())
    assert timings["training"]["wall_time_s"] > 0


@pytest.mark.parametrize("engine", ["snakemake", "dvc"])
def test_a_bad_parameter_fails_cleanly_and_keeps_earlier_outputs(clone_of_quick_run, engine):
    ws = clone_of_quick_run()
    outputs = declared_outputs(ws)
    before = file_digests(ws, outputs)

    edit_params(ws, lambda p: p["markov_chain"].update(runs=-3))
    command = SNAKEMAKE if engine == "snakemake" else [DVC, "repro"]
    result = run(command, ws, check=False)
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "markov_chain.runs = -3 is not allowed: Input should be greater than or equal to 1" in message
    assert file_digests(ws, outputs) == before


@pytest.mark.parametrize("engine", ["snakemake", "dvc"])
def test_a_failing_rerun_keeps_the_previous_results(clone_of_quick_run, engine):
    """A truncated policy in the index makes its evaluation (evaluate_dqn@dqn-42) fail: its previous
    outputs stay, byte for byte, under Snakemake too (which removes a job's outputs unless they are
    flagged update())."""
    ws = clone_of_quick_run()
    stage = "evaluate_dqn@dqn-42"
    outputs = outputs_of(ws, stage)
    before = file_digests(ws, outputs)
    model = ws / "data/policies/dqn_s42/model.keras"
    model.write_bytes(model.read_bytes()[:1000])
    command = ([*SNAKEMAKE, "-f", "reports/evaluate/policies/dqn_s42/summary.json"] if engine == "snakemake"
               else [DVC, "repro", "-f", "-s", stage])
    result = run(command, ws, check=False)
    assert result.returncode != 0 and "policy 'dqn_s42'" in result.stdout + result.stderr
    assert file_digests(ws, outputs) == before


def test_a_profiled_workspace_does_not_inherit_the_projects_dvc_lock(tmp_path):
    from pipeline.workspace import REPO_ROOT, create_workspace

    # The project's dvc.lock records the full profile (five seeds); a quick workspace has other
    # stages and other hashes, and records its own runs.
    quick = create_workspace(tmp_path / "quick", profile="quick")
    assert not (quick / "dvc.lock").exists()
    assert (quick / "dvc.yaml").is_file() and (quick / "params.yaml").is_file()
    as_is = create_workspace(tmp_path / "as-is", profile=None)
    assert (as_is / "dvc.lock").exists() == (REPO_ROOT / "dvc.lock").exists()


def test_dvc_repro_refuses_repeated_seeds_as_snakemake_does(clone_of_quick_run):
    """DVC's matrix would quietly make one stage of the repeated seed; the stages that read the
    seeds list (the consumers of every policy) rerun and refuse it."""
    ws = clone_of_quick_run()
    seeds = yaml.safe_load((ws / "params.yaml").read_text())["seeds"]
    edit_params(ws, lambda p: p.update(seeds=[*seeds, seeds[-1]]))
    for command in (SNAKEMAKE, [DVC, "repro"]):
        result = run(command, ws, check=False)
        assert result.returncode != 0, command
        assert (f"params.yaml: seeds = {[*seeds, seeds[-1]]} is not allowed: seeds must be distinct, "
                f"but {seeds[-1]} repeats") in result.stdout + result.stderr


def test_a_shared_value_reruns_every_stage_that_uses_it_and_only_those(clone_of_quick_run):
    """Variants share the book DQN's values through a YAML anchor: DVC tracks the values as they
    resolve, so changing the anchor's batch size reruns the variants that take it (not the
    prioritized one, which sets its own), their evaluations and Pi conversions, and the gathering
    stages."""
    from ruamel.yaml import YAML

    ws = clone_of_quick_run()
    yaml_rt = YAML()
    document = yaml_rt.load((ws / "params.yaml").read_text())
    assert "<<: *book_dqn" in (ws / "params.yaml").read_text()
    document["dqn"]["variants"]["dqn"]["batch_size"] = 16  # the anchor &book_dqn
    with (ws / "params.yaml").open("w") as handle:
        yaml_rt.dump(document, handle)
    seeds = document["seeds"]
    takers = {f"dqn@{v}-{s}" for v in ("dqn", "double_dqn", "dueling_double_dqn") for s in seeds}
    # DVC names the stages whose params changed; their per-policy stages follow once the policies
    # do (a dry run cannot know that), and Snakemake plans them at once.
    per_policy = {f"{prefix}_{t}" for t in takers for prefix in ("evaluate", "pi")}
    assert dvc_changed_stages(ws) == takers | {"evaluate", "aggregate", "pi_bundle", "report"}
    assert snakemake_planned_jobs(ws) >= {rule_name(t) for t in takers | per_policy}
    assert not any("prioritized" in job for job in snakemake_planned_jobs(ws))
