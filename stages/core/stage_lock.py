"""One run of a stage at a time in a workspace, whichever engine or shell started it.

Snakemake and DVC each lock against themselves, not against each other: ``snakemake -f`` and
``dvc repro -f -s`` of one stage would both run it, writing the same outputs and training logs
twice, and each would record its own run. So every stage, as it starts (``run_stage``), takes an
exclusive lock on ``.locks/<its command>.lock`` in the workspace and keeps it until its process
ends; a second run of the same stage finds it taken and stops at once, naming the run that holds
it (pid, start, and the engine above it with its command line). The operating system releases
the lock when its process ends, however it ends, so a killed run never leaves the stage locked.

The lock is per stage, not per workspace: one engine runs several stages at once (``snakemake
--cores 8``, a cluster), and what corrupts results is two runs writing one stage's outputs. A
stage that reads another's outputs while that one is rerun sees the old or the new complete set,
since every output is replaced atomically.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

LOCK_DIR = Path(".locks")
ENGINES = ("snakemake", "dvc")


class StageBusy(RuntimeError):
    """The stage is already running in this workspace."""

    exit_status = 75  # EX_TEMPFAIL: try again once the other run has ended


def stage_command(module: str, argv: list[str]) -> str:
    """The command that runs the stage, as dvc.yaml writes it (``python -m stages.dqn --seed 42``)."""
    return shlex.join(["python", "-m", module, *argv])


def lock_file(command: str, root: str | Path = ".") -> Path:
    name = re.sub(r"[^\w.@-]+", "_", command.removeprefix("python -m ")).strip("_")
    return Path(root) / LOCK_DIR / f"{name}.lock"


def _command_line(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def _parent(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:")), None)


def engine_of(pid: int) -> str | None:
    """The nearest process above ``pid`` that is Snakemake or DVC, as "name (pid N: command)"."""
    parent = _parent(pid)
    for _ in range(16):
        if not parent:
            return None
        argv = _command_line(parent)
        words = [Path(word).name for word in argv[:3]]
        engine = next((name for name in ENGINES if name in words), None)
        if engine is not None:
            command = shlex.join(argv)  # a cluster job's Snakemake command runs to kilobytes
            return f"{engine} (pid {parent}: {command[:200]}{'...' if len(command) > 200 else ''})"
        parent = _parent(parent)
    return None


def describe_holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return "another process (it has not said which yet)"
    started = f", started {holder['started']}" if holder.get("started") else ""
    by = f", by {holder['engine']}" if holder.get("engine") else ", not by Snakemake or DVC"
    return f"pid {holder.get('pid')}{started}{by}"


@contextmanager
def holding(command: str, root: str | Path = ".") -> Iterator[IO[str]]:
    """Hold the stage's lock for the block; StageBusy names the run that holds it already."""
    path = lock_file(command, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StageBusy(f"stage '{command}' is already running in this workspace: "
                            f"{describe_holder(path)}. Wait for that run to end (or stop it), then "
                            "start this one again; two runs of one stage would write the same "
                            "outputs.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "command": command, "engine": engine_of(os.getpid()),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
        handle.flush()
        yield handle
