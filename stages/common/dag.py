"""dvc.yaml is the one declaration of the DAG; this module reads it for Snakemake.

DVC's own parser resolves the file (``foreach``/``matrix``, ``${...}`` interpolation, params
files), so both engines see the stages exactly as DVC understands them. The Snakefile turns each
:class:`StageSpec` into a rule. What only Snakemake needs (threads, memory, runtime) sits in each
stage's ``meta`` block, which DVC stores but ignores.

A DVC output of ``type: checkpoint`` is a training run's resumable state. DVC keeps it between
runs (``persist: true``); Snakemake deletes a job's outputs before the job runs, and again when it
fails, so for Snakemake it is not an output: :attr:`StageSpec.state` lists it apart and the
Snakefile only passes it along as a parameter. A killed run then resumes under either engine.

A dependency on a folder that holds other stages' outputs (``data/policies``: every exported
policy) is how a stage consumes "all of them" without listing each. DVC links such a folder to
the stages whose outputs lie inside it; Snakemake only links exact paths, so for Snakemake the
folder is replaced by those outputs (:func:`snakemake_inputs`).

Figures and GIFs (:attr:`REPORT_SUFFIXES`) become report items of Snakemake's own report
(``snakemake --report report.html``), filed under their folder.

After Snakemake runs a stage, the stage is recorded in dvc.lock (:func:`record_in_dvc_lock`), so
``dvc status`` is clean after ``snakemake`` and a user can switch engines without rerunning.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

# DVC output type of a training run's resumable state (see the module docstring).
STATE_TYPE = "checkpoint"

# Snakemake rules mark here the stages they completed; the next workflow end records them in DVC.
PENDING_DIR = Path(".snakemake") / "dvc-pending"

# Outputs a reader looks at (figures, GIFs): Snakemake's own report (`snakemake --report`) shows them.
REPORT_SUFFIXES = (".png", ".gif")


def rule_name(stage_name: str) -> str:
    """Snakemake rule names are identifiers; DVC's foreach names look like ``dqn@double``."""
    return re.sub(r"\W", "_", stage_name)


@dataclass(frozen=True)
class StageSpec:
    name: str
    cmd: str
    deps: list[str]
    outs: list[str]
    params: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    # Resumable state: DVC outputs that Snakemake must not manage (never deleted before a run).
    state: list[str] = field(default_factory=list)
    # The deps as Snakemake needs them: folders of other stages' outputs expanded into those.
    inputs: list[str] = field(default_factory=list)

    @property
    def rule_name(self) -> str:
        return rule_name(self.name)

    @staticmethod
    def is_report_item(path: str) -> bool:
        """A figure or GIF: registered with ``report(...)`` so ``snakemake --report`` includes it."""
        return Path(path).suffix in REPORT_SUFFIXES

    @staticmethod
    def is_directory(path: str) -> bool:
        """Convention of this repository's dvc.yaml: an output path without a suffix is a folder."""
        return Path(path).suffix == ""


def read_dag(root: str | Path = ".") -> list[StageSpec]:
    """The pipeline stages of ``root/dvc.yaml`` as DVC resolves them, in declaration order."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        specs = []
        for stage in repo.index.stages:
            if not getattr(stage, "cmd", None) or Path(stage.path).name != "dvc.yaml":
                continue
            if not isinstance(stage.cmd, str):
                raise ValueError(f"stage {stage.name}: cmd must be a single command string")
            params: dict[str, Any] = {}
            for dep in stage.deps:
                if isinstance(dep, ParamsDependency):
                    params.update(dep.read_params(flatten=False))
            specs.append(StageSpec(
                name=stage.name,
                cmd=stage.cmd,
                deps=[dep.def_path for dep in stage.deps if not isinstance(dep, ParamsDependency)],
                outs=[out.def_path for out in stage.outs if out.annot.type != STATE_TYPE],
                params=params,
                meta=dict(stage.meta or {}),
                state=[out.def_path for out in stage.outs if out.annot.type == STATE_TYPE],
            ))
    every_output = [out for spec in specs for out in spec.outs]
    return [replace(spec, inputs=snakemake_inputs(spec.deps, every_output)) for spec in specs]


def snakemake_inputs(deps: list[str], every_output: list[str]) -> list[str]:
    """``deps`` with each folder that contains other stages' outputs replaced by those outputs."""
    inputs = []
    for dep in deps:
        inside = [out for out in every_output if out != dep and Path(dep) in Path(out).parents]
        inputs.extend(inside if dep not in every_output and inside else [dep])
    return inputs


def record_in_dvc_lock(root: str | Path = ".") -> list[str]:
    """``dvc commit`` the stages Snakemake completed since the last record; returns their names."""
    pending_dir = Path(root) / PENDING_DIR
    names = sorted(p.name for p in pending_dir.glob("*")) if pending_dir.is_dir() else []
    if names:
        subprocess.run([sys.executable, "-m", "dvc", "commit", "--force", "--quiet", *names],
                       cwd=root, check=True)
        for name in names:
            (pending_dir / name).unlink()
    return names
