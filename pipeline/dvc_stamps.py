"""Snakemake's view of what changed, taken from dvc.lock.

dvc.lock records what each stage last ran from (command, parameter values, the hash of every
dependency), whichever engine ran it: after a Snakemake run,
:func:`stages.core.dag.record_in_dvc_lock` commits the stages to it. Snakemake keeps a record
only of the jobs it ran itself, so outputs made by ``dvc repro`` or brought by ``dvc pull`` carry
none and a parameter change went unseen; and where it has one, it may be older than DVC's.

So every rule has one more input, a *stamp* per stage (``.snakemake/dvc-lock/<stage>.json``)
whose modification time says what dvc.lock says. It holds the stage's command, parameter values
and source files' hashes (the dependencies no stage produces: its code) as they are now and as
dvc.lock records them. When the two agree the stamp is dated 2000-01-01, older than any output:
nothing to redo. When they differ, or dvc.lock does not know the stage, it is dated now, newer
than the outputs, so Snakemake reruns the stage and what reads its outputs, as ``dvc repro``
would. The Snakefile writes the stamps when it is read, before Snakemake compares dates; a file
is rewritten only when its content changes. The rules mark their source files ``ancient()``: a
source file's date (a checkout touches files without changing them) decides nothing, its hash
in the stamp does. Outputs of other stages stay ordinary inputs, so a rerun stage still reruns
its readers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import dpath
import yaml
from dvc.utils.serialize import load_yaml

from stages.core.dag import StageSpec
from pipeline.reproduction import produced_by_a_stage

STAMP_DIR = Path(".snakemake") / "dvc-lock"

# The modification time of an up-to-date stage's stamp: 2000-01-01, older than any output.
UP_TO_DATE_MTIME = 946_684_800


def stamp_path(stage_name: str) -> str:
    return (STAMP_DIR / f"{stage_name}.json").as_posix()


def source_files(stage: StageSpec, stages: list[StageSpec]) -> list[str]:
    """The stage's dependencies that no stage produces (its code, and any other source file).
    A source folder is left out: dvc.lock hashes it as a whole, and Snakemake dates it."""
    produced = {out for other in stages for out in other.outs}
    return [dep for dep in stage.deps
            if not produced_by_a_stage(dep, produced) and not StageSpec.is_directory(dep)]


def _md5(path: Path, cache: dict[Path, str | None]) -> str | None:
    if path not in cache:
        cache[path] = hashlib.md5(path.read_bytes()).hexdigest() if path.is_file() else None
    return cache[path]


def current_state(stage: StageSpec, sources: list[str], root: Path,
                  cache: dict[Path, str | None]) -> dict[str, Any]:
    """What the stage would run from now, in dvc.lock's terms."""
    params = (stage.params if not stage.param_keys else
              {key: dpath.get(stage.params, key, separator=".") for key in stage.param_keys})
    return {"cmd": stage.cmd, "params": params,
            "sources": {path: _md5(root / path, cache) for path in sources}}


def recorded_state(entry: dict[str, Any] | None, sources: list[str]) -> dict[str, Any] | None:
    """What dvc.lock records the stage ran from (None: dvc.lock does not know the stage)."""
    if entry is None:
        return None
    deps = {dep["path"]: dep.get("md5") for dep in entry.get("deps") or []}
    return {"cmd": entry.get("cmd"),
            "params": {key: value for values in (entry.get("params") or {}).values()
                       for key, value in values.items()},
            "sources": {path: deps.get(path) for path in sources}}


class _Yaml12Loader(yaml.CSafeLoader):
    """PyYAML's fast loader, reading exponents without a dot (`1e-05`) as numbers, as YAML 1.2
    (DVC) does; YAML 1.1 reads them as strings."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+(\.[0-9]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _read_lock(lock: Path, exact: bool) -> dict[str, Any]:
    """dvc.lock's stages; ``exact``: parsed by DVC's own YAML reader (several times slower)."""
    if not lock.is_file():
        return {}
    data = load_yaml(lock) if exact else yaml.load(lock.read_text(), Loader=_Yaml12Loader)
    return (data or {}).get("stages") or {}


def write_stamps(stages: list[StageSpec], root: str | Path = ".") -> list[str]:
    """Write each stage's stamp and date it by dvc.lock (see the module docstring); returns the
    names of the stages that differ from what dvc.lock records."""
    root = Path(root)
    lock = root / "dvc.lock"
    entries, exact = _read_lock(lock, exact=False), False
    now, cache, changed = time.time(), {}, []
    for stage in stages:
        sources = source_files(stage, stages)
        state = {"now": current_state(stage, sources, root, cache),
                 "dvc.lock": recorded_state(entries.get(stage.name), sources)}
        if state["now"] != state["dvc.lock"] and not exact:
            # A difference is confirmed as DVC reads the file.
            entries, exact = _read_lock(lock, exact=True), True
            state["dvc.lock"] = recorded_state(entries.get(stage.name), sources)
        path = root / stamp_path(stage.name)
        text = json.dumps(state, sort_keys=True, indent=1) + "\n"
        if not path.is_file() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            temporary.write_text(text)
            temporary.replace(path)
        if state["now"] == state["dvc.lock"]:
            os.utime(path, (UP_TO_DATE_MTIME, UP_TO_DATE_MTIME))
        else:
            os.utime(path, (now, now))
            changed.append(stage.name)
    return changed
