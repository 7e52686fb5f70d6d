"""dvc.yaml is the one declaration of the DAG; this module reads it for Snakemake and for the stages
that consume other stages' outputs.

DVC's own parser resolves the file (``foreach``/``matrix``, ``${...}`` interpolation, params
files), so both engines see the stages exactly as DVC understands them. The Snakefile turns each
:class:`StageSpec` into a rule. What only Snakemake needs (threads, memory, runtime) sits in each
stage's ``meta`` block, which DVC stores but ignores.

Every stage of a ``foreach``/``matrix`` declaration knows its place in it: its ``group`` (the
declaration's name) and ``item`` (the values it was made for, ``{"variant": "dqn", "seed": 42}``).
An *experiment* is a group less its training-seed dimension (``dqn@double_dqn``: one variant over
every seed); the report has a section per experiment, and the consumers of the policy index know
from :func:`policy_producers` which stage made which policy.

A DVC output of ``type: checkpoint`` is a training run's resumable state. DVC keeps it between
runs (``persist: true``); Snakemake deletes a job's outputs before the job runs, or copies them
aside if they are flagged ``update()`` as the Snakefile flags every output (gigabytes, for a
replay buffer), so for Snakemake it is not an output: :attr:`StageSpec.state` lists it apart and
the Snakefile only passes it along as a parameter. A killed run then resumes under either engine.

A dependency on a folder that holds other stages' outputs (``data/policies``: every exported
policy) is how a stage consumes "all of them" without listing each. DVC links such a folder to
the stages whose outputs lie inside it; Snakemake only links exact paths, so for Snakemake the
folder is replaced by those outputs (:func:`snakemake_inputs`).

After Snakemake runs a stage, the stage is recorded in dvc.lock (:func:`record_in_dvc_lock`), so
``dvc status`` is clean after ``snakemake`` and a user can switch engines without rerunning.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

# DVC output type of a training run's resumable state (see the module docstring).
STATE_TYPE = "checkpoint"

# Snakemake rules mark here the stages they completed; the next workflow end records them in DVC.
PENDING_DIR = Path(".snakemake") / "dvc-pending"

# Where Snakemake copies a job's previous outputs (flag update()) while the job runs, and the
# locks of the Snakemake processes working in the folder.
BACKUP_DIR = Path(".snakemake") / "backups"
SNAKEMAKE_LOCKS = Path(".snakemake") / "locks"

# Outputs a reader looks at (figures, GIFs): Snakemake's own report (`snakemake --report`) shows them.
REPORT_SUFFIXES = (".png", ".gif")

POLICY_INDEX = Path("data/policies")
SEED = "seed"  # the matrix dimension of training seeds
_COMMAND = re.compile(r"^python -m (?P<module>[\w.]+)(?P<args>.*)$")
_INTERPOLATION = re.compile(r"^\$\{\s*([\w.]+)\s*\}$")


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
    # The declaration this stage comes from, and the foreach/matrix values it was made for.
    group: str = ""
    item: Any = None
    key: str | None = None
    desc: str = ""
    # Outputs declared as DVC plots (figures and training logs).
    plots: list[str] = field(default_factory=list)
    # The params.yaml keys the stage declares (``dqn.variants.dqn``); ``params`` holds their values.
    param_keys: list[str] = field(default_factory=list)

    @property
    def rule_name(self) -> str:
        return rule_name(self.name)

    @property
    def module(self) -> str:
        """The stage's Python module: its command is ``python -m <module> [arguments]``."""
        return _parse_command(self.name, self.cmd)[0]

    @property
    def argv(self) -> list[str]:
        return _parse_command(self.name, self.cmd)[1]

    @property
    def seed(self) -> int | None:
        """The training seed of a per-seed stage (a ``seed`` matrix dimension), else None."""
        return self.item.get(SEED) if isinstance(self.item, dict) and self.key is not None else None

    @property
    def experiment(self) -> str:
        """The stage's experiment: its group, less the seed (``dqn@double_dqn``, ``nn_policy``)."""
        if self.key is None:
            return self.group
        if isinstance(self.item, dict) and SEED in self.item:  # a matrix over seeds (and more)
            members = [str(v) for k, v in self.item.items() if k != SEED]
            return f"{self.group}@{'-'.join(members)}" if members else self.group
        return self.name

    @property
    def policies(self) -> list[str]:
        """The policy folders (``data/policies/<name>``) this stage exports."""
        return [out for out in self.outs if Path(out).parent == POLICY_INDEX]

    @staticmethod
    def is_report_item(path: str) -> bool:
        """A figure or GIF: registered with ``report(...)`` so ``snakemake --report`` includes it."""
        return Path(path).suffix in REPORT_SUFFIXES

    @staticmethod
    def is_directory(path: str) -> bool:
        """Convention of this repository's dvc.yaml: an output path without a suffix is a folder."""
        return Path(path).suffix == ""


def _parse_command(name: str, cmd: str) -> tuple[str, list[str]]:
    match = _COMMAND.match(cmd)
    if match is None:
        raise ValueError(f"stage {name}: cmd must read 'python -m <module> [arguments]', got {cmd!r}")
    return match["module"], shlex.split(match["args"])


def read_dag(root: str | Path = ".") -> list[StageSpec]:
    """The pipeline stages of ``root/dvc.yaml`` as DVC resolves them, in declaration order."""
    root = str(Path(root).resolve())
    from dvc.dependency.param import ParamsDependency
    from dvc.dvcfile import load_file
    from dvc.repo import Repo

    with Repo(root) as repo:
        places: dict[str, tuple[str, Any, str | None]] = {}
        for group, definition in load_file(repo, str(Path(root) / "dvc.yaml")).resolver.definitions.items():
            iterable = getattr(definition, "normalized_iterable", None)
            if iterable is None:
                places[group] = (group, None, None)
            else:
                places.update({f"{group}@{key}": (group, item, key) for key, item in iterable.items()})
        specs, configs = [], {}
        for stage in repo.index.stages:
            if not getattr(stage, "cmd", None) or Path(stage.path).name != "dvc.yaml":
                continue
            if not isinstance(stage.cmd, str):
                raise ValueError(f"stage {stage.name}: cmd must be a single command string")
            params: dict[str, Any] = {}
            for dep in stage.deps:
                if isinstance(dep, ParamsDependency):
                    params.update(_read_params(dep, configs))
            group, item, key = places.get(stage.name, (stage.name, None, None))
            specs.append(StageSpec(
                name=stage.name,
                cmd=stage.cmd,
                deps=[dep.def_path for dep in stage.deps if not isinstance(dep, ParamsDependency)],
                outs=[out.def_path for out in stage.outs if out.annot.type != STATE_TYPE],
                params=params,
                meta=dict(stage.meta or {}),
                state=[out.def_path for out in stage.outs if out.annot.type == STATE_TYPE],
                group=group, item=_plain(item), key=key, desc=stage.desc or "",
                plots=[out.def_path for out in stage.outs if out.plot],
                param_keys=[key for dep in stage.deps if isinstance(dep, ParamsDependency)
                            for key in dep.params],
            ))
    every_output = [out for spec in specs for out in spec.outs]
    return [replace(spec, inputs=snakemake_inputs(spec.deps, every_output)) for spec in specs]


def _read_params(dep: Any, configs: dict[str, Any]) -> dict[str, Any]:
    """``dep.read_params(flatten=False)``, with each params file parsed once for the whole DAG
    (DVC parses it again for every stage: 51 times, seconds of pure-Python YAML)."""
    from copy import deepcopy

    import dpath
    from dvc.utils.serialize import load_path

    if dep.fs_path not in configs:
        configs[dep.fs_path] = load_path(dep.fs_path, dep.repo.fs) if dep.exists else {}
    config = configs[dep.fs_path]
    if not dep.params:
        return deepcopy(config)
    found: dict[str, Any] = {}
    for key in dict.fromkeys(dep.params):
        dpath.merge(found, deepcopy(dpath.search(config, key, separator=".")), separator=".")
    return found


def _plain(value: Any) -> Any:
    """DVC's context values (CtxDict, Value) as plain Python values."""
    if hasattr(value, "value") and not isinstance(value, (dict, list)):
        value = value.value
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or (hasattr(value, "__iter__") and not isinstance(value, str)):
        return [_plain(v) for v in value]
    return value


def snakemake_inputs(deps: list[str], every_output: list[str]) -> list[str]:
    """``deps`` with each folder that contains other stages' outputs replaced by those outputs."""
    inputs = []
    for dep in deps:
        prefix = dep.rstrip("/") + "/"
        inside = [out for out in every_output if out.startswith(prefix)]
        inputs.extend(inside if dep not in every_output and inside else [dep])
    return inputs


def policy_producers(stages: list[StageSpec]) -> dict[str, StageSpec]:
    """Policy name -> the stage that exports it (the policy index as the DAG declares it)."""
    return {Path(folder).name: stage for stage in stages for folder in stage.policies}


def declared_policies(root: str | Path = ".") -> dict[str, str]:
    """Policy name -> the name of the stage that exports it, as dvc.yaml declares them."""
    return {name: stage.name for name, stage in policy_producers(read_dag(root)).items()}


def experiments(stages: list[StageSpec]) -> dict[str, list[StageSpec]]:
    """Experiment -> its stages (one per training seed, or one), in declaration order."""
    grouped: dict[str, list[StageSpec]] = {}
    for stage in stages:
        grouped.setdefault(stage.experiment, []).append(stage)
    return grouped


def dimension_params(dvc_yaml: dict[str, Any]) -> list[str]:
    """The params.yaml keys that ``foreach``/``matrix`` iterate over (``seeds``, ``dqn.variants``):
    the lists that decide which stages exist."""
    keys: list[str] = []
    for definition in dvc_yaml.get("stages", {}).values():
        iterables = [definition.get("foreach"), *(definition.get("matrix") or {}).values()]
        for iterable in iterables:
            match = _INTERPOLATION.match(iterable) if isinstance(iterable, str) else None
            if match and match[1] not in keys:
                keys.append(match[1])
    return keys


def record_in_dvc_lock(root: str | Path = ".") -> list[str]:
    """``dvc commit`` the stages Snakemake completed since the last record; returns their names.

    A stage whose command succeeded but whose outputs are incomplete (Snakemake then fails the
    job) cannot be committed: the others are, one by one, and it is named and left unrecorded.
    """
    pending_dir = Path(root) / PENDING_DIR
    names = sorted(p.name for p in pending_dir.glob("*")) if pending_dir.is_dir() else []
    if not names:
        return []
    commit = [sys.executable, "-m", "dvc", "commit", "--force", "--quiet"]
    recorded = names
    if subprocess.run([*commit, *names], cwd=root).returncode != 0:
        recorded = [name for name in names if subprocess.run([*commit, name], cwd=root).returncode == 0]
        print(f"not recorded in dvc.lock (incomplete outputs): {', '.join(sorted(set(names) - set(recorded)))}",
              file=sys.stderr)
    for name in names:
        (pending_dir / name).unlink()
    return recorded


def clear_stale_backups(root: str | Path = ".") -> bool:
    """Remove the backups a killed Snakemake left, when no Snakemake process holds the folder.

    Snakemake copies each output flagged ``update()`` before its job and removes the copy when the
    job ends; a copy left by a killed run would make the next run of that job fail (Snakemake
    does not copy a folder over an existing backup). The outputs themselves were never removed.
    """
    backups, locks = Path(root) / BACKUP_DIR, Path(root) / SNAKEMAKE_LOCKS
    if not backups.is_dir() or (locks.is_dir() and any(locks.iterdir())):
        return False
    shutil.rmtree(backups)
    return True


def other_outputs_read(stage: StageSpec, stages: list[StageSpec]) -> list[str]:
    """``stage``'s dependencies that are other stages' outputs or folders holding some."""
    every_output = {out for other in stages if other.name != stage.name for out in other.outs}
    return [dep for dep in stage.deps if dep in every_output
            or any(out.startswith(dep.rstrip("/") + "/") for out in every_output)]


def gathered_folders(stage: StageSpec, stages: list[StageSpec]) -> list[str]:
    """``stage``'s dependencies on folders holding other stages' outputs (``reports/evaluate/policies``:
    every per-policy result): how a gathering stage reads "all of them"."""
    every_output = {out for other in stages if other.name != stage.name for out in other.outs}
    return [dep for dep in other_outputs_read(stage, stages) if dep not in every_output]


def consumes_outputs(stage: StageSpec, stages: list[StageSpec]) -> bool:
    """Whether ``stage`` reads other stages' outputs (a per-policy or a gathering stage), as opposed
    to an experiment, which reads only code, parameters and data files."""
    return bool(other_outputs_read(stage, stages))
