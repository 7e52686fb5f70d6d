"""A folder written as a whole, and a byte-reproducible .tar.gz of it.

A deployment bundle is copied to another machine and checked there by its checksums, so the same
contents must give the same archive: entries sorted, owners and times fixed, and a gzip header
without a date or a file name.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

from stages.core.io import atomic_path, staged

EXECUTABLE = 0o755
REGULAR = 0o644


def size_of(path: str | os.PathLike) -> int:
    """Bytes in a file, or in every file under a folder."""
    path = Path(path)
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def _entry(name: str, *, directory: bool = False, size: int = 0, executable: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = EXECUTABLE if (directory or executable) else REGULAR
    info.size = size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def write_reproducible_tar_gz(folder: str | os.PathLike, path: str | os.PathLike,
                              executables: frozenset[str] = frozenset()) -> None:
    """Archive ``folder`` as ``<folder name>/...``: same contents, same bytes.

    ``executables`` are paths (relative to the folder) archived with mode 755.
    """
    folder = Path(folder)
    source = staged(folder)  # where the folder is while it waits in this stage's output set
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        archive.addfile(_entry(folder.name, directory=True))
        for item in sorted(source.rglob("*"), key=lambda p: p.relative_to(source).as_posix()):
            relative = item.relative_to(source).as_posix()
            name = f"{folder.name}/{relative}"
            if item.is_dir():
                archive.addfile(_entry(name, directory=True))
            else:
                data = item.read_bytes()
                archive.addfile(_entry(name, size=len(data), executable=relative in executables),
                                io.BytesIO(data))
    with atomic_path(path) as temporary, open(temporary, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as compressed:
            compressed.write(buffer.getvalue())
