"""Atomic outputs: each written under a temporary name in its own folder, and a stage's outputs
replaced together, as one set.

A file or folder is written under a temporary sibling name that keeps the extension (so libraries
that pick a format from it, matplotlib, Pillow, NumPy, still do): ``.<stem>.tmp-<pid><suffix>``
for a file, ``.<name>.tmp-<pid>`` for a folder. Outside an output set a finished output replaces
the old one at once, in one rename.

Inside :func:`output_set` (every stage runs in one: :func:`stages.core.settings.run_stage`) a
finished output waits under its temporary name, and the set's outputs are renamed into place one
after another when the stage has done all its work, the training log (stages/core/live_log.py)
included. A stage that fails or is killed before then replaces nothing: the previous run's set
stays whole. (Only a kill within the renames themselves, after all the work, can leave part of the
new set in place.) Code that reads back an output its own stage has just written finds it where
it waits with :func:`staged`.

A kill leaves its temporary files and folders behind. When a set is committed, the temporary
names of its outputs that belong to processes no longer running are removed
(:func:`remove_leftovers`), so the next successful run of a stage clears what its killed runs left.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np


class OutputSet:
    """Finished outputs waiting to be renamed into place: final path -> temporary path."""

    def __init__(self) -> None:
        self.pending: dict[Path, Path] = {}
        self.folders: set[Path] = set()  # temporary folders being filled (absolute)

    def holds(self, path: Path) -> bool:
        """``path`` lies in a temporary folder of this set: it moves with that folder."""
        path = path.absolute()
        return any(folder in path.parents for folder in self.folders)

    def add(self, temporary: Path, final: Path) -> None:
        earlier = self.pending.pop(final.absolute(), None)
        if earlier is not None and earlier != temporary:
            _remove(earlier)
        self.pending[final.absolute()] = temporary

    def commit(self) -> None:
        """Rename every waiting output into place (a folder: the old one aside, then removed),
        then remove the leftovers of killed runs next to each output."""
        previous = []
        for final, temporary in self.pending.items():
            if temporary.is_dir() and final.exists():
                aside = final.with_name(f".{final.name}.old-{os.getpid()}")
                _remove(aside)
                os.replace(final, aside)
                previous.append(aside)
            os.replace(temporary, final)
        for aside in previous:
            _remove(aside)
        for final in self.pending:
            remove_leftovers(final)
        self.pending.clear()

    def discard(self) -> None:
        """Remove what was written and not committed (a folder still being filled included)."""
        for temporary in [*self.pending.values(), *self.folders]:
            _remove(temporary)
        self.pending.clear()
        self.folders.clear()


_ACTIVE: ContextVar[OutputSet | None] = ContextVar("output_set", default=None)


@contextmanager
def output_set() -> Iterator[OutputSet]:
    """Outputs finished inside the block replace the old ones together, when the block ends
    without an error; on an error (or a kill) none does."""
    outputs = OutputSet()
    token = _ACTIVE.set(outputs)
    try:
        yield outputs
        outputs.commit()
    finally:
        _ACTIVE.reset(token)
        outputs.discard()


def _set_for(final: Path) -> OutputSet | None:
    """The output set a write to ``final`` waits in: none outside a set, or inside a folder that
    is itself being written (the file is part of that folder, written at once)."""
    outputs = _ACTIVE.get()
    return None if outputs is None or outputs.holds(final) else outputs


def staged(path: str | os.PathLike) -> Path:
    """Where the output ``path`` is now: its temporary name while it waits in the current output
    set, ``path`` itself otherwise."""
    outputs = _ACTIVE.get()
    if outputs is not None:
        waiting = outputs.pending.get(Path(path).absolute())
        if waiting is not None:
            return waiting
    return Path(path)


def adopt(temporary: str | os.PathLike, path: str | os.PathLike) -> None:
    """An output that another process finished under the temporary name ``temporary`` (see
    :func:`temporary_name`): it joins the current output set, or replaces ``path`` now."""
    outputs = _ACTIVE.get() or OutputSet()
    outputs.add(Path(temporary), Path(path))
    if outputs is not _ACTIVE.get():
        outputs.commit()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def temporary_name(final: Path, pid: int | None = None, *, folder: bool = False) -> Path:
    pid = os.getpid() if pid is None else pid
    if folder:
        return final.with_name(f".{final.name}.tmp-{pid}")
    return final.with_name(f".{final.stem}.tmp-{pid}{final.suffix}")


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_leftovers(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary names of output ``path`` (a file or a folder) that processes no longer
    running left behind (a killed run's); returns what was removed. A running process's are kept."""
    final = Path(path)
    if not final.parent.is_dir():
        return []
    # A folder exported by a child process is written as the parent's temporary name's own
    # temporary name (``..<name>.tmp-<parent>.tmp-<child>``): both processes must be gone.
    patterns = [re.compile(rf"\.{re.escape(final.stem)}\.tmp-(\d+){re.escape(final.suffix)}"),
                re.compile(rf"\.{{1,2}}{re.escape(final.name)}\.(?:tmp|old)-(\d+)(?:\.tmp-(\d+))?")]
    removed = []
    for candidate in final.parent.iterdir():
        match = next((m for p in patterns if (m := p.fullmatch(candidate.name))), None)
        if match and not any(_running(int(pid)) for pid in match.groups() if pid):
            _remove(candidate)
            removed.append(candidate)
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` (in an output set: when
    the set is committed)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(final)
    outputs = _set_for(final)
    try:
        yield temporary
        if outputs is not None:
            outputs.add(temporary, final)
            return
        os.replace(temporary, final)
        remove_leftovers(final)
    finally:
        if outputs is None or outputs.pending.get(final.absolute()) != temporary:
            temporary.unlink(missing_ok=True)


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Fill a temporary sibling folder, then swap it in: readers see the old or the new folder
    (in an output set: swapped when the set is committed)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(final, folder=True)
    outputs = _set_for(final)
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    if outputs is not None:
        outputs.folders.add(temporary.absolute())
    try:
        yield temporary
        if outputs is not None:
            outputs.add(temporary, final)
            return
        single = OutputSet()
        single.add(temporary, final)
        single.commit()
    finally:
        if outputs is None or outputs.pending.get(final.absolute()) != temporary:
            shutil.rmtree(temporary, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _to_builtin(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Stable JSON (fixed key order and float repr) so a deterministic stage is byte-identical."""
    write_text(path, json.dumps(data, indent=2, default=_to_builtin, allow_nan=False) + "\n")


def write_csv(path: str | os.PathLike, frame: "pandas.DataFrame") -> None:  # noqa: F821
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.save(tmp, array)
