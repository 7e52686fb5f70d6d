"""Did a run reproduce the recorded one? Stage by stage, bit for bit, measured timings aside.

    python -m pipeline.reproduction record   # after a run you commit: write dvc.digests.yaml
    python -m pipeline.reproduction check    # after a rerun: one line per stage

A stage keeps how long it took out of its outputs (logs/timings/, stages/core/timings.py), so a
rerun that reproduces writes the same bytes and leaves dvc.lock as it was. A few outputs still
carry facts that differ between two identical runs, and DVC, which hashes whole files, cannot
tell such a rerun from one that did not reproduce:

- the stages whose result is a measurement of time (:data:`MEASURES_TIME`: the replay benchmark,
  the Pi conversions' and the bundle's latencies): their JSON keys and CSV or TSV columns ending in ``wall_time_s``;
- the report's volatile spans (timings, date, host, commit: see stages/core/html.py);
- outputs known to depend on the machine (:data:`MACHINE_DEPENDENT`: LunarLander's GIFs, see
  docs/reproducibility.md). These are compared all the same; when they are the only files that
  differ, the verdict says so (``differs (known)``) and does not fail the check.

This module records, beside dvc.lock, a digest of every output file with the first two left out,
and compares a workspace against it. Neither DVC nor Snakemake has a notion of volatile fields
inside an output, which is why this is written here.

A stage's record also holds a fingerprint of what it was run from: its command, its params and
its source dependencies (files that are not another stage's output), as dvc.lock records them.
When the fingerprint in the workspace's dvc.lock differs, the stage ran from other code or values,
and the check says so instead of reporting a difference in results. Outputs of upstream stages
are left out of the fingerprint: they are checked as those stages' own outputs.

A training run's resumable state (outputs of ``type: checkpoint``) may be absent where its run is
finished: deleted to free the disk, or left out of a partial pull. An absent resumable state is
left out of the comparison and named; a present one is compared.

Each stage's record names the CPU it was taken on (:func:`this_machine`: the model and its vector
instruction sets). TensorFlow's CPU kernels pick their code paths and blocking by CPU, so a
training stage rerun on another CPU type rounds differently in its first updates, and training
carries the difference on: a bit-for-bit comparison then says nothing about the code. When a
stage differs and its record was taken on another CPU, the verdict is ``differs (other CPU)``
with both CPUs named, and it does not fail the check.

Verdicts: ``reproduced`` (every file as recorded), ``differs`` (with the files), ``differs (known)``
(only machine-dependent files differ), ``differs (other CPU)``, ``partly here`` (the files present
are as recorded, others are absent: a clone's results from git before ``dvc pull``), ``other
inputs`` (code or params changed since the record), ``not run`` (no output present), ``not
recorded``. ``check`` exits 1 when a stage differs (known differences and other CPUs aside), so it
can gate a script.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stages.core.html import strip_volatile

LOCK = "dvc.lock"
DIGESTS = "dvc.digests.yaml"
TIMING_SUFFIX = "wall_time_s"
# Stages whose results are measured times: their ``wall_time_s`` values are left out of digests.
MEASURES_TIME = ("replay_benchmark", "pi_bundle")
PER_POLICY_PI = "pi_"  # the Pi conversion of each training stage's policies: they time the models too
# Outputs known to differ between machines (docs/reproducibility.md), as glob patterns.
MACHINE_DEPENDENT = ("reports/pg_lunarlander/*/policy.gif",)
SEPARATORS = {".csv": ",", ".tsv": "\t"}  # tables whose timing columns are dropped
# Snakemake marks each directory output with this empty file; DVC ignores it (.dvcignore).
SNAKEMAKE_DIRECTORY_MARKER = ".snakemake_timestamp"
HEADER = ("# Timing-free digests of every stage's outputs, beside dvc.lock. Written by\n"
          "# `python -m pipeline.reproduction record`; compare a rerun with `... check`.\n")


# Vector instruction sets that decide which code paths TensorFlow's and NumPy's kernels take.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")


def this_machine(cpuinfo: Path = CPUINFO) -> str:
    """``"<CPU model> (<instruction sets>)"`` from /proc/cpuinfo's first processor."""
    fields: dict[str, str] = {}
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    present = ", ".join(flag for flag in ISA_FLAGS if flag in flags) or "none of " + ", ".join(ISA_FLAGS)
    return f"{fields.get('model name', 'unknown CPU')} ({present})"


# --- what two identical runs share --------------------------------------------------------------


def _without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if not k.endswith(TIMING_SUFFIX)}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def measures_time(stage: str) -> bool:
    group = stage.split("@")[0]
    return group in MEASURES_TIME or group.startswith(PER_POLICY_PI)


def machine_dependent(path: str) -> bool:
    return any(fnmatch.fnmatch(path, pattern) for pattern in MACHINE_DEPENDENT)


def reproducible_bytes(file: Path, timings: bool = False) -> bytes:
    """A file's bytes as compared: the volatile spans of the report's page and Markdown summary
    are dropped and JSON is compared by content (keys sorted). ``timings``: the file holds measured
    times (a stage of :data:`MEASURES_TIME`), whose JSON keys and CSV/TSV columns ending in
    ``wall_time_s`` are dropped too. Every other file is taken as it is: a stage's own metrics and
    DVCLive's files hold no wall time, so one there is a difference."""
    if file.suffix in (".html", ".md"):
        return strip_volatile(file.read_text()).encode()
    if file.suffix == ".json":
        data = json.loads(file.read_text())
        return json.dumps(_without_timings(data) if timings else data, sort_keys=True).encode()
    if timings and file.suffix in SEPARATORS:
        separator = SEPARATORS[file.suffix]
        lines = file.read_text().splitlines()
        header = lines[0].split(separator) if lines else []
        keep = [i for i, name in enumerate(header) if not name.endswith(TIMING_SUFFIX)]
        if len(keep) < len(header):
            return "\n".join(separator.join(row.split(separator)[i] for i in keep) for row in lines).encode()
    return file.read_bytes()


def files_of(root: Path, path: str) -> list[Path]:
    """The files an output path names: itself, or every file inside it (less Snakemake's marker)."""
    target = root / path
    if target.is_dir():
        return sorted(f for f in target.rglob("*")
                      if f.is_file() and f.name != SNAKEMAKE_DIRECTORY_MARKER)
    return [target] if target.is_file() else []


def file_digests(root: Path, paths: Iterable[str], timings: bool = False) -> dict[str, str]:
    """sha256 of the reproducible bytes of every file named by ``paths``, keyed by relative path
    (``timings``: see :func:`reproducible_bytes`)."""
    return {str(file.relative_to(root)): hashlib.sha256(reproducible_bytes(file, timings)).hexdigest()
            for path in paths for file in files_of(root, path)}


def stage_digests(root: Path, stage: str, outputs: list[str], state: set[str]) -> dict[str, str]:
    """A stage's output digests: measured times left out where the stage measures time, and in
    its resumable state (a checkpoint's log rows carry the wall time of the run that wrote them)."""
    timed = measures_time(stage)
    return {**file_digests(root, [o for o in outputs if o not in state], timed),
            **file_digests(root, [o for o in outputs if o in state], True)}


# --- dvc.lock -------------------------------------------------------------------------------------


def read_lock(root: Path) -> dict[str, dict]:
    """The stages dvc.lock records (name -> entry); empty when there is no lock."""
    lock = root / LOCK
    if not lock.is_file():
        return {}
    return (yaml.safe_load(lock.read_text()) or {}).get("stages", {}) or {}


def _outputs(entry: dict) -> list[str]:
    return [out["path"] for out in entry.get("outs", [])]


def produced_by_a_stage(path: str, outputs: set[str]) -> bool:
    """``path`` is an output, lies inside one, or is a folder holding outputs (``reports/dqn``)."""
    return any(path == o or path.startswith(o.rstrip("/") + "/") or o.startswith(path.rstrip("/") + "/")
               for o in outputs)


def fingerprint(entry: dict, produced: set[str]) -> str:
    """What a stage ran from: command, params and the dependencies no stage produces."""
    sources = sorted((d["path"], d.get("md5")) for d in entry.get("deps", [])
                     if not produced_by_a_stage(d["path"], produced))
    text = json.dumps({"cmd": entry.get("cmd"), "params": entry.get("params", {}),
                       "deps": sources}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _produced(lock: dict[str, dict]) -> set[str]:
    return {path for entry in lock.values() for path in _outputs(entry)}


# --- record and check -----------------------------------------------------------------------------


def dvc_changed_stages(root: Path) -> set[str]:
    """Stages whose outputs in ``root`` are not the ones dvc.lock records (DVC's own status)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        status = repo.status()
    return {name.split(":")[-1] for name in status}


def record(root: Path, earlier: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[str], list[str]]:
    """Digests of every stage whose outputs are exactly what dvc.lock records.

    A stage whose outputs are not here (a workspace that reran part of the pipeline) keeps its
    ``earlier`` record when that record was taken from the same dvc.lock entry (the same
    fingerprint): the digests belong to the entry, not to this folder.

    Returns the record, the stages kept from ``earlier`` and the stages left out (outputs missing
    or not matching dvc.lock, and no earlier record of the same entry).
    """
    lock = read_lock(root)
    if not lock:
        raise SystemExit(f"{root / LOCK}: no recorded run to take digests of; run the pipeline first")
    before = (earlier or {}).get("stages") or {}
    changed = dvc_changed_stages(root)
    produced = _produced(lock)
    state = resumable_state(root)
    machine = this_machine()
    stages, kept, skipped = {}, [], []
    for name, entry in sorted(lock.items()):
        outputs = _outputs(entry)
        inputs = fingerprint(entry, produced)
        if name in changed or not all(files_of(root, p) for p in outputs):
            if (before.get(name) or {}).get("inputs") == inputs:
                stages[name] = before[name]
                kept.append(name)
            else:
                skipped.append(name)
            continue
        stages[name] = {"inputs": inputs, "machine": machine,
                        "files": stage_digests(root, name, outputs, state)}
    return {"stages": stages}, kept, skipped


@dataclass
class Verdict:
    stage: str
    result: str
    files: list[str] = field(default_factory=list)

    def line(self, width: int) -> str:
        detail = ", ".join(self.files[:4]) + (f" (+{len(self.files) - 4} more)"
                                               if len(self.files) > 4 else "")
        return f"{self.stage:<{width}}  {self.result:<15}  {detail}".rstrip()


def resumable_state(root: Path) -> set[str]:
    """The outputs of ``type: checkpoint`` that ``root``'s dvc.yaml declares (none without one)."""
    if not (root / "dvc.yaml").is_file() or not (root / ".dvc").is_dir():
        return set()
    from stages.core.dag import read_dag

    return {path for stage in read_dag(root) for path in stage.state}


def check(root: Path, recorded: dict[str, Any], resumable: Iterable[str] = (),
          machine: str | None = None) -> list[Verdict]:
    """Compare the workspace at ``root`` with ``recorded`` (what :func:`record` wrote). Outputs
    in ``resumable`` (:func:`resumable_state`) that are absent are left out and named. ``machine``
    is this one (default :func:`this_machine`): a difference in a stage recorded elsewhere says so."""
    machine = this_machine() if machine is None else machine
    lock = read_lock(root)
    produced = _produced(lock)
    digests = recorded.get("stages", {})
    verdicts = []
    for name in sorted(set(digests) | set(lock)):
        if name not in digests:
            verdicts.append(Verdict(name, "not recorded"))
            continue
        want = digests[name]["files"]
        outputs = _outputs(lock[name]) if name in lock else sorted(want)
        absent_state = {path for path in outputs if path in resumable and not files_of(root, path)}
        if absent_state:
            outputs = [path for path in outputs if path not in absent_state]
            want = {path: digest for path, digest in want.items()
                    if not produced_by_a_stage(path, absent_state)}
        have = stage_digests(root, name, outputs, set(resumable))
        if not have:
            verdicts.append(Verdict(name, "not run"))
        elif name in lock and fingerprint(lock[name], produced) != digests[name]["inputs"]:
            verdicts.append(Verdict(name, "other inputs"))
        elif have == want:
            verdicts.append(Verdict(name, "reproduced", [f"{len(have)} files", *(
                f"resumable state not here: {path}" for path in sorted(absent_state))]))
        elif all(want.get(path) == digest for path, digest in have.items()):
            # What is here matches; the rest is absent (a clone with its results from git and
            # no model pulled yet): nothing to tell against the record.
            absent = sorted(set(want) - set(have))
            verdicts.append(Verdict(name, "partly here", [f"{len(have)} files as recorded",
                                                          f"{len(absent)} absent", *absent]))
        else:
            different = sorted(p for p in set(have) | set(want) if have.get(p) != want.get(p))
            known = all(machine_dependent(p) and p in have and p in want for p in different)
            elsewhere = digests[name].get("machine")
            if known:
                verdicts.append(Verdict(name, "differs (known)", different))
            elif elsewhere and elsewhere != machine:
                verdicts.append(Verdict(name, "differs (other CPU)", [f"recorded on {elsewhere}", *different]))
            else:
                verdicts.append(Verdict(name, "differs", different))
    return verdicts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="\n\n".join(__doc__.split("\n\n")[:2]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["record", "check"])
    parser.add_argument("--dir", type=Path, default=Path("."),
                        help="the workspace (default: the current folder)")
    args = parser.parse_args(argv)
    root = args.dir.resolve()
    target = root / DIGESTS
    if args.action == "record":
        earlier = yaml.safe_load(target.read_text()) if target.is_file() else None
        result, kept, skipped = record(root, earlier)
        text = HEADER + yaml.safe_dump(result, sort_keys=True, width=1000)
        partial = target.with_suffix(".yaml.partial")
        partial.write_text(text)
        partial.replace(target)
        print(f"{target}: {len(result['stages'])} stages recorded")
        for name in kept:
            print(f"  kept from the earlier record (its dvc.lock entry is unchanged; outputs not here): {name}")
        for name in skipped:
            print(f"  not recorded (outputs missing or not what dvc.lock records): {name}")
        return 0
    if not target.is_file():
        print(f"{target} is missing: record a run first "
              "(python -m pipeline.reproduction record)", file=sys.stderr)
        return 2
    machine = this_machine()
    verdicts = check(root, yaml.safe_load(target.read_text()) or {}, resumable_state(root), machine)
    width = max((len(v.stage) for v in verdicts), default=5)
    for verdict in verdicts:
        print(verdict.line(width))
    counts: dict[str, int] = {}
    for verdict in verdicts:
        counts[verdict.result] = counts.get(verdict.result, 0) + 1
    print("; ".join(f"{n} {result}" for result, n in sorted(counts.items())))
    if counts.get("differs (other CPU)"):
        print(f"differs (other CPU): recorded on another CPU than this one, {machine}; "
              "TensorFlow's kernels round differently there (see docs/reproducibility.md)")
    if counts.get("differs (known)"):
        print("differs (known): only outputs known to depend on the machine differ "
              f"({', '.join(MACHINE_DEPENDENT)}; see docs/reproducibility.md)")
    return 1 if counts.get("differs") else 0


if __name__ == "__main__":
    sys.exit(main())
