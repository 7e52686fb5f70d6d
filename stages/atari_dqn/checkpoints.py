"""Resumable training: a folder of checkpoints that lets a killed run continue where it stopped.

Each checkpoint is a folder ``iteration-<n>/`` holding a TensorFlow checkpoint (whatever
trackables the stage hands over: agent, policy, replay buffer, train step, metrics) and a
manifest, ``checkpoint.json``: the iteration, the settings that shaped the run, the training log
up to the iteration, and the size and sha256 of each TensorFlow file. A checkpoint is complete or
absent: it is written into ``iteration-<n>.writing/``, flushed to disk, and published by one
rename; only then are older checkpoints deleted, so the folder always keeps the newest complete
one (and, for a moment, the one before it).

On opening the folder, the newest checkpoint is verified before anything is restored: the
manifest must parse, every file must be there with its size and digest, TensorFlow must read the
index, and its train step must be the manifest's iteration. Whatever fails (an unfinished
``.writing`` folder left by a kill, a damaged checkpoint, files of another layout) is named in a
message and moved into ``damaged/``, and the next checkpoint is tried; with none left, training
starts over and says why. ``damaged/`` keeps only what the latest opening set aside: what an
earlier one set aside is deleted then (the message says so).

A run whose settings differ, or that asks for fewer iterations than the checkpoint already has,
starts over; a run at its last iteration has nothing to train.

Both engines keep the folder between runs: it is a ``persist: true`` output in dvc.yaml, and
the Snakefile leaves it out of the rule's outputs (Snakemake deletes outputs before a job runs),
see ``StageSpec.state`` in stages/core/dag.py. Nothing in a checkpoint holds a time stamp, and
the manifest's only wall-clock values are the log's ``*wall_time_s`` columns, which
pipeline/reproduction.py leaves out: two identical runs write the same checkpoints.

Test hook: with ``CHECKPOINT_TEST_HOLD_AT=<iteration>`` in the environment, writing that
iteration's checkpoint stops after the TensorFlow files, before the manifest and the rename,
prints ``holding the checkpoint ...`` and sleeps until the process is killed, so a test can kill
a real run in the middle of a checkpoint write. Unset (always, outside tests) it does nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from stages.core.settings import InputError

MANIFEST = "checkpoint.json"
TF_PREFIX = "ckpt"  # TensorFlow writes ckpt.index and ckpt.data-00000-of-00001
DAMAGED = "damaged"
WRITING = ".writing"
FORMAT = 1
HOLD_ENV = "CHECKPOINT_TEST_HOLD_AT"
_PUBLISHED = re.compile(r"iteration-(\d+)")
_STEP_KEY = "global_step/.ATTRIBUTES/VARIABLE_VALUE"


class CheckpointError(InputError):
    """No usable checkpoint where one is needed (export), or one that verified but did not load."""


# --- files on disk ------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's entry to disk: a published checkpoint survives a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _iteration_of(path: Path) -> int | None:
    match = _PUBLISHED.fullmatch(path.name)
    return int(match.group(1)) if match and path.is_dir() else None


@dataclass(frozen=True)
class Checkpoint:
    """A published checkpoint that passed verification."""

    path: Path
    iteration: int
    settings: dict[str, Any]
    log: pd.DataFrame

    @property
    def prefix(self) -> str:
        return str(self.path / TF_PREFIX)


def verify(path: Path) -> Checkpoint | str:
    """The checkpoint in ``path``, or what is wrong with it (one phrase)."""
    import tensorflow as tf

    manifest_file = path / MANIFEST
    if not manifest_file.is_file():
        return f"its manifest {MANIFEST} is missing"
    try:
        manifest = json.loads(manifest_file.read_text())
        iteration, settings, log = manifest["iteration"], dict(manifest["settings"]), manifest["log"]
        files = {name: (int(entry["bytes"]), str(entry["sha256"])) for name, entry in manifest["files"].items()}
        log = pd.DataFrame(log)
    except (ValueError, KeyError, TypeError, AttributeError) as error:  # JSONDecodeError is a ValueError
        return f"its manifest {MANIFEST} is unreadable ({type(error).__name__}: {error})"
    if manifest.get("format") != FORMAT or iteration != _iteration_of(path):
        return f"its manifest {MANIFEST} does not describe {path.name} (format {manifest.get('format')})"
    for name, (size_expected, sha256) in sorted(files.items()):
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != size_expected:
            return f"{name} has {size} bytes where the manifest says {size_expected}"
        if _sha256(file) != sha256:
            return f"{name} does not match the sha256 in the manifest"
    try:
        reader = tf.train.load_checkpoint(str(path / TF_PREFIX))
        step = int(reader.get_tensor(_STEP_KEY))
    except (tf.errors.OpError, ValueError) as error:
        return f"TensorFlow cannot read it ({type(error).__name__}: {str(error).splitlines()[0]})"
    if step != iteration:
        return f"its train step is {step}, not the manifest's {iteration}"
    return Checkpoint(path, iteration, settings, log)


def _restore(checkpoint: Checkpoint, folder: Path, partial: bool, **trackables: Any) -> None:
    """Load the checkpoint into ``trackables`` (every one of them must be in it); ``partial``:
    the checkpoint may hold more (the export restores the policy alone)."""
    import tensorflow as tf

    try:
        # restore() rather than read(): it creates the checkpoint's save counter, as the export's
        # restore always has, so the exported SavedModel's function names stay as they were.
        status = tf.train.Checkpoint(**trackables).restore(checkpoint.prefix)
        (status.expect_partial() if partial else status).assert_existing_objects_matched()
    except (tf.errors.OpError, ValueError, AssertionError) as error:
        raise CheckpointError(
            f"the checkpoint {checkpoint.path} is intact but does not fit what the stage restores "
            f"({type(error).__name__}: "
            f"{error}); delete {folder} to retrain from scratch") from error


def restore_trackables(folder: str | os.PathLike, **trackables: Any) -> None:
    """Restore some objects (say, a policy) from the folder's newest checkpoint, ignoring the rest."""
    folder = Path(folder)
    candidates = sorted((p for p in folder.iterdir() if _iteration_of(p) is not None),
                        key=_iteration_of, reverse=True) if folder.is_dir() else []
    if not candidates:
        raise CheckpointError(f"no checkpoint in {folder}: run the training stage first")
    checkpoint = verify(candidates[0])
    if isinstance(checkpoint, str):
        raise CheckpointError(f"the checkpoint {candidates[0]} is damaged: {checkpoint}; "
                              f"run the training stage again (it sets it aside and resumes or starts over)")
    _restore(checkpoint, folder, True, **trackables)


# --- the folder a training run keeps --------------------------------------------------------------


class TrainingCheckpoint:
    """Open ``folder`` (set aside what is unfinished or damaged, drop what is stale); then
    :meth:`restore` and :meth:`save` by iteration. :attr:`notes` says what opening did."""

    def __init__(self, folder: str | os.PathLike, settings: dict[str, Any], iterations: int) -> None:
        self.folder = Path(folder)
        self.damaged = self.folder / DAMAGED
        self._settings = json.loads(json.dumps(settings))  # the form it takes in the manifest
        self.notes: list[str] = []
        self.reset_reason: str | None = None
        self.folder.mkdir(parents=True, exist_ok=True)
        self.current = self._newest_good()
        if self.current is not None:
            self.reset_reason = self._stale_reason(self.current, iterations)
            if self.reset_reason:
                shutil.rmtree(self.current.path)
                self.current = None
        elif self.notes:
            self.reset_reason = f"no complete checkpoint is left in {self.folder}"
        self._trackables: dict[str, Any] | None = None

    def _newest_good(self) -> Checkpoint | None:
        """Verify the published checkpoints newest first; set aside everything that is not a
        good one; delete the good ones older than the newest (a kill between publishing and
        pruning leaves two)."""
        aside: list[tuple[Path, str]] = []
        published = []
        for path in sorted(self.folder.iterdir()):
            if path.name == DAMAGED:
                continue
            if _iteration_of(path) is not None:
                published.append(path)
            elif path.name.endswith(WRITING):
                aside.append((path, "an unfinished checkpoint (the run was stopped while writing it)"))
            else:
                aside.append((path, "not part of a checkpoint of this layout"))
        newest = None
        for path in sorted(published, key=_iteration_of, reverse=True):
            if newest is not None:
                shutil.rmtree(path)
                continue
            checkpoint = verify(path)
            if isinstance(checkpoint, str):
                aside.append((path, f"a damaged checkpoint: {checkpoint}"))
            else:
                newest = checkpoint
        if aside:
            self._set_aside(aside)
        return newest

    def _set_aside(self, aside: list[tuple[Path, str]]) -> None:
        if self.damaged.is_dir() or self.damaged.is_file():
            shutil.rmtree(self.damaged) if self.damaged.is_dir() else self.damaged.unlink()
            self.notes.append(f"deleted what an earlier run set aside in {self.damaged} "
                              "(only the latest set-aside checkpoints are kept)")
        self.damaged.mkdir()
        for path, why in aside:
            os.replace(path, self.damaged / path.name)
            self.notes.append(f"set aside {path}: {why}; moved to {self.damaged / path.name}")

    def _stale_reason(self, checkpoint: Checkpoint, iterations: int) -> str | None:
        if checkpoint.settings != self._settings:
            changed = sorted(k for k in set(self._settings) | set(checkpoint.settings)
                             if checkpoint.settings.get(k) != self._settings.get(k))
            return f"the checkpoint in {self.folder} was made with other settings ({', '.join(changed)})"
        if checkpoint.iteration > iterations:
            return (f"the checkpoint in {self.folder} is at iteration {checkpoint.iteration}, "
                    f"beyond the {iterations} asked for")
        return None

    def restore(self, global_step: Any, **trackables: Any) -> tuple[int, pd.DataFrame | None]:
        """Restore the trackables if a checkpoint is there; return (iteration, log rows up to it)."""
        self._trackables = {"global_step": global_step, **trackables}
        if self.current is None:
            return 0, None
        _restore(self.current, self.folder, False, **self._trackables)
        # The resumed run's DVCLive history logs these rows again (stages/core/live_log.py);
        # JSON gives the floats back exactly as they were logged.
        return self.current.iteration, self.current.log

    def save(self, log: pd.DataFrame) -> None:
        """Checkpoint the current state (at ``global_step``) with the log rows so far."""
        import tensorflow as tf

        iteration = int(self._trackables["global_step"].numpy())
        final = self.folder / f"iteration-{iteration}"
        writing = self.folder / f"{final.name}{WRITING}"
        shutil.rmtree(writing, ignore_errors=True)
        writing.mkdir()
        state = tf.train.Checkpoint(**self._trackables)
        state.save_counter  # noqa: B018 (created, at 0, so that restore() finds it in the file)
        state.write(str(writing / TF_PREFIX))
        files = sorted(p for p in writing.iterdir() if p.is_file())
        _hold_if_asked(iteration, writing)
        manifest = {"format": FORMAT, "iteration": iteration, "settings": self._settings,
                    "files": {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files},
                    "log": log.to_dict("records")}
        (writing / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        for path in [*files, writing / MANIFEST, writing]:
            _fsync(path)
        if final.exists():  # the same iteration saved again: the new one replaces it
            shutil.rmtree(final)
        os.replace(writing, final)
        _fsync(self.folder)
        for path in self.folder.iterdir():
            if path != final and _iteration_of(path) is not None:
                shutil.rmtree(path)
        self.current = None  # restore() is for the start of a run only


def _hold_if_asked(iteration: int, writing: Path) -> None:
    """The test hook (see the module's docstring): inert unless CHECKPOINT_TEST_HOLD_AT is set."""
    if os.environ.get(HOLD_ENV) == str(iteration):
        print(f"holding the checkpoint {writing} ({HOLD_ENV}={iteration}) until killed", flush=True)
        while True:
            time.sleep(60)
