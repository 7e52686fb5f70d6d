"""Snakemake and DVC see one DAG: same stages, commands, inputs, outputs and parameters."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import dpath
import pytest
import yaml
from dvc.dependency.param import ParamsDependency
from dvc.repo import Repo

from stages.core.dag import read_dag, rule_name, snakemake_inputs
from pipeline.deps import (
    code_dependencies,
    differences,
    has_code,
    import_closure,
    main,
    package_data,
    per_policy_problems,
)
from pipeline.dvc_stamps import stamp_path
from tests.conftest import edited_params, repo_stages

# Snakemake parses the Snakefile in a separate process (it changes directory and logging).
SNAKEMAKE_VIEW = r"""
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import OutputSettings, ResourceSettings
root = Path(sys.argv[1])
with SnakemakeApi(OutputSettings()) as api:
    workflow = api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=root / "Snakefile",
                            workdir=root)._workflow
    print(json.dumps({rule.name: {"input": [str(f) for f in rule.input],
                                  "output": [str(f) for f in rule.output],
                                  "params": dict(rule.params.items()),
                                  "shell": rule.shellcmd}
                      for rule in workflow.rules}))
"""


def snakemake_view(root: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", SNAKEMAKE_VIEW, str(root)], capture_output=True,
                            text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def dvc_view(root: Path) -> dict:
    with Repo(str(root)) as repo:
        view = {}
        for stage in repo.index.stages:
            params = {}
            for dep in stage.deps:
                if isinstance(dep, ParamsDependency):
                    params.update(dep.read_params(flatten=False))
            view[stage.name] = {
                "cmd": stage.cmd,
                "deps": [d.def_path for d in stage.deps if not isinstance(d, ParamsDependency)],
                "outs": [o.def_path for o in stage.outs],
                "params": params,
                "param_keys": [key for d in stage.deps if isinstance(d, ParamsDependency) for key in d.params],
                # Resumable training state: kept by DVC, passed to Snakemake but not as an output.
                "state": [o.def_path for o in stage.outs if o.annot.type == "checkpoint"],
            }
        return view


def disagreements(snakemake: dict, dvc: dict, root: Path) -> list[str]:
    problems = []
    stamps = {rule_name(name): stamp_path(name) for name in dvc}
    rules = {name: rule for name, rule in snakemake.items() if name != "all"}
    dvc = {rule_name(name): stage for name, stage in dvc.items()}  # dqn@dqn is rule dqn_dqn
    every_output = [out for stage in dvc.values() for out in stage["outs"]]
    if set(rules) != set(dvc):
        problems.append(f"stages differ: only Snakemake {sorted(set(rules) - set(dvc))}, "
                        f"only DVC {sorted(set(dvc) - set(rules))}")
    for name in sorted(set(rules) & set(dvc)):
        rule, stage = rules[name], dvc[name]
        # A folder of other stages' outputs (data/policies) is, for Snakemake, those outputs.
        # Plus the stage's stamp, holding the values it reads (pipeline/dvc_stamps.py).
        stamp = stamps.get(name)
        expected_inputs = [*snakemake_inputs(stage["deps"], every_output), stamp]
        if sorted(rule["input"]) != sorted(expected_inputs):
            problems.append(f"{name}: inputs {rule['input']} != deps {expected_inputs}")
        products = sorted(set(stage["outs"]) - set(stage["state"]))
        if sorted(rule["output"]) != products:
            problems.append(f"{name}: outputs {rule['output']} != outs {products}")
        if rule["params"].get("state", []) != stage["state"]:
            problems.append(f"{name}: Snakemake's state {rule['params'].get('state')} != {stage['state']}")
        recorded = json.loads((root / stamp).read_text())["now"]["params"] if stamp else {}
        if set(recorded) != set(stage["param_keys"]) or \
                recorded != {key: dpath.get(stage["params"], key, separator=".") for key in recorded}:
            problems.append(f"{name}: params differ")
        if not rule["shell"].startswith(f"({stage['cmd']})"):
            problems.append(f"{name}: shell {rule['shell']!r} does not run cmd {stage['cmd']!r}")
    every_output = sorted(o for stage in dvc.values() for o in stage["outs"] if o not in stage["state"])
    if sorted(snakemake.get("all", {}).get("input", [])) != every_output:
        problems.append("rule all does not request every DVC output")
    return problems


def test_snakemake_and_dvc_declare_the_same_dag(repo_root):
    snakemake, dvc = snakemake_view(repo_root), dvc_view(repo_root)
    assert {"markov_chain", "mdp", "cartpole_basics"} <= set(dvc)
    assert disagreements(snakemake, dvc, repo_root) == []


def test_the_agreement_check_catches_drift(repo_root, quick_workspace):
    workspace = quick_workspace("drift")
    snakefile = workspace / "Snakefile"
    snakefile.write_text(snakefile.read_text() + '\n\nrule extra:\n    output: "reports/extra.txt"\n'
                         '    shell: "touch {output}"\n')
    # The drifted Snakefile also loses an output of mdp: derived rules no longer match dvc.yaml.
    snakefile.write_text(snakefile.read_text().replace(
        "[_output(out) for out in stage.outs]",
        "[_output(out) for out in stage.outs if not out.endswith('q_learning_curve.csv')]"))
    problems = disagreements(snakemake_view(workspace), dvc_view(workspace), workspace)
    assert any("only Snakemake ['extra']" in p for p in problems)
    assert any(p.startswith("mdp: outputs") for p in problems)


def test_every_derived_dependency_in_dvc_yaml_is_current(repo_root):
    """Code deps are exactly each stage's import closure; consumers' folders and list params are
    as the DAG derives them (python -m pipeline.deps rewrites them)."""
    _, changes = differences(repo_root)
    assert changes == [], "run `python -m pipeline.deps`:\n" + "\n".join(changes)


def test_the_check_catches_a_missing_and_an_extra_code_dependency(quick_workspace):
    workspace = quick_workspace("deps")
    text = (workspace / "dvc.yaml").read_text()
    text = text.replace("      - stages/core/io.py\n", "", 1)  # markov_chain's first
    text = text.replace("      - stages/markov_chain/__main__.py\n",
                        "      - stages/markov_chain/__main__.py\n      - stages/replay.py\n", 1)
    (workspace / "dvc.yaml").write_text(text)
    _, changes = differences(workspace)
    assert any(c.startswith("markov_chain: deps missing ['stages/core/io.py']") for c in changes), changes
    assert any("markov_chain: deps" in c and "extra ['stages/replay.py']" in c for c in changes), changes
    assert main(["--root", str(workspace), "--check"]) == 1
    assert main(["--root", str(workspace)]) == 0 and differences(workspace)[1] == []


def test_a_stage_packages_templates_are_derived_dependencies_one_per_file(repo_root, quick_workspace):
    templates = sorted(str(p.relative_to(repo_root)) for p in (repo_root / "stages/report/templates").rglob("*")
                       if p.is_file())
    assert "stages/report/templates/index.html" in templates
    assert package_data(import_closure("stages.report", repo_root), repo_root) == templates
    assert set(templates) <= set(code_dependencies("stages.report", repo_root))
    assert package_data(import_closure("stages.mdp", repo_root), repo_root) == []  # no templates there

    # Both ways: a new template is missing from dvc.yaml, a removed one is extra; the write mode fixes both.
    workspace = quick_workspace("templates")
    (workspace / "stages/report/templates/new.html").write_text("<p>{{ profile }}</p>\n")
    (workspace / "stages/report/templates/macros.html").unlink()
    _, changes = differences(workspace)
    (report,) = [c for c in changes if c.startswith("report: deps")]
    assert "missing ['stages/report/templates/new.html']" in report
    assert "extra ['stages/report/templates/macros.html']" in report
    assert main(["--root", str(workspace)]) == 0 and differences(workspace)[1] == []


def test_no_stage_imports_another_stages_package(repo_root):
    """Stages share code through the role packages under stages/ that are no stage's package
    (stages/core, stages/policies, ...), never through another stage's package; and none imports
    the tooling (pipeline/) or the Pi runner's own code (pi/policy_runtime.py)."""
    stages = repo_stages()
    stage_packages = {f"stages/{stage.module.split('.')[1]}/" for stage in stages}
    for stage in stages:
        own = f"stages/{stage.module.split('.')[1]}/"
        closure = import_closure(stage.module, repo_root)
        others = [f for f in closure if f.startswith(tuple(stage_packages - {own}))]
        assert others == [], f"{stage.name} imports {others}"
        assert not [f for f in closure if f.startswith("pipeline/")], stage.name
        if not stage.name.startswith("pi_"):
            assert "pi/policy_runtime.py" not in closure, f"{stage.name} depends on the Pi runner's code"


@pytest.mark.parametrize("module", ["stages.markov_chain", "stages.atari_dqn"])
def test_the_import_closure_covers_what_python_imports(repo_root, module):
    """What importing the stage loads at run time is inside the closure read from the source
    (which also holds what functions import when they run)."""
    code = (f"import sys, {module}.__main__; print('\\n'.join(m.__file__ for m in list(sys.modules.values()) "
            "if getattr(m, '__file__', None)))")
    listing = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True,
                             check=True).stdout.split()
    loaded = {str(Path(f).resolve().relative_to(repo_root)) for f in listing
              if Path(f).resolve().is_relative_to(repo_root) and ".venv" not in f}
    closure = set(import_closure(module, repo_root))
    assert {f for f in loaded if has_code(repo_root / f)} <= closure


def test_a_folder_dependency_means_every_output_inside_it():
    outputs = ["data/policies/a", "data/policies/b", "reports/a/metrics.json"]
    assert snakemake_inputs(["data/policies", "stages/x.py"], outputs) == [
        "data/policies/a", "data/policies/b", "stages/x.py"]
    # A folder that is itself an output, or holds none, stays as it is.
    assert snakemake_inputs(["data/policies/a", "data/raw"], outputs) == ["data/policies/a", "data/raw"]


def test_each_training_stage_has_a_per_policy_evaluation_that_mirrors_it(repo_root):
    """evaluate_<trainer>: the trainer's foreach/matrix, a stage per trainer stage, reading exactly
    that stage's exported policies (pi_<trainer> declarations are held to the same rule)."""
    stages = repo_stages()
    document = yaml.safe_load((repo_root / "dvc.yaml").read_text())
    assert per_policy_problems(document, stages) == []
    trainers = {stage.group for stage in stages if stage.policies}
    assert {"nn_policy", "pg_cartpole", "pg_lunarlander", "dqn", "atari_dqn", "a2c", "ppo", "sac"} <= trainers
    by_name = {stage.name: stage for stage in stages}
    for trainer in (s for s in stages if s.policies):
        evaluation = by_name[f"evaluate_{trainer.name}"]
        assert [d for d in evaluation.deps if d.startswith("data/")] == trainer.policies
        assert evaluation.argv == [Path(p).name for p in trainer.policies]


def test_the_mirror_check_catches_every_kind_of_drift(tmp_path):
    edited_params(tmp_path, lambda params: None)  # the repository's dvc.yaml and params.yaml
    document = yaml.safe_load((tmp_path / "dvc.yaml").read_text())
    declared = document["stages"]
    del declared["evaluate_nn_policy"]
    del declared["pi_pg_cartpole"]
    declared["evaluate_dqn"]["deps"].remove("data/policies/${item.variant}_final_s${item.seed}")
    declared["evaluate_pg_cartpole"]["deps"].append("data/policies/nn_policy_s${item.seed}")
    declared["evaluate_pg_lunarlander"]["matrix"]["seed"] = [42]
    declared["pi_dqn"]["deps"].remove("data/policies/${item.variant}_final_s${item.seed}")  # a second prefix
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    problems = per_policy_problems(document, read_dag(tmp_path))
    assert "nn_policy: exports policies but has no evaluate_nn_policy declaration" in problems
    assert "pg_cartpole: exports policies but has no pi_pg_cartpole declaration" in problems
    assert any(p.startswith("evaluate_pg_lunarlander: foreach/matrix") for p in problems)
    assert any(p.startswith("evaluate_dqn@dqn-42: reads ['data/policies/dqn_s42']") for p in problems)
    assert any(p.startswith("pi_dqn@dqn-42: reads ['data/policies/dqn_s42']") for p in problems)
    assert any(p.startswith("evaluate_pg_cartpole@42: reads ['data/policies/nn_policy_s42', "
                            "'data/policies/pg_cartpole_s42']") for p in problems)


def _definitions(stages) -> dict:
    """Each stage's resolved definition: what DVC compares to decide it is out of date."""
    return {s.name: (s.cmd, tuple(s.deps), tuple(s.outs), json.dumps(s.params, sort_keys=True, default=str))
            for s in stages}


@pytest.mark.parametrize("growth", ["a training seed", "a DQN variant"])
def test_growing_the_pipeline_changes_only_the_gathering_stages(tmp_path, growth):
    """A new seed or DQN variant adds stages; of the existing ones only those that gather every
    policy's results change (seconds of work): no training, evaluation or Pi conversion."""
    def grow(params):
        if growth == "a training seed":
            params["seeds"] = [*params["seeds"], 7]
        else:
            params["dqn"]["variants"]["double_dqn_copy"] = copy.deepcopy(params["dqn"]["variants"]["double_dqn"])

    before = _definitions(repo_stages())
    edited_params(tmp_path, grow)
    after = _definitions(read_dag(tmp_path))
    assert set(after) > set(before)
    changed = {name for name in before if after[name] != before[name]}
    assert changed == {"evaluate", "aggregate", "pi_bundle", "report"}


def test_the_aggregate_reads_training_logs_and_no_resumable_state(repo_root):
    """The aggregate's derived folders hold training logs: where a stage folder also holds
    checkpoints (data/atari_dqn: gigabytes, cached, not in git), each log's own DVCLive folder is
    read instead, the book's single Atari runs' too (their curves are drawn beside the recipes')."""
    stages = repo_stages()
    aggregate = next(stage for stage in stages if stage.name == "aggregate")
    states = [state for stage in stages for state in stage.state]
    assert not [(dep, state) for dep in aggregate.deps for state in states
                if state == dep or state.startswith(dep.rstrip("/") + "/")]
    runs = yaml.safe_load((repo_root / "params.yaml").read_text())["atari_dqn"]["runs"]
    assert {f"data/atari_dqn/{run}/dvclive" for run in [*runs, "breakout", "space_invaders"]} <= set(aggregate.deps)
    assert "data/dqn" in aggregate.deps and "data/atari_dqn" not in aggregate.deps
