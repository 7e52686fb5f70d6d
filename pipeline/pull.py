"""Pull the recorded outputs from the DVC remote, naming every one that could not be had.

    python -m pipeline.pull              # the default remote (.dvc/config, docs/remote.md)
    python -m pipeline.pull -r NAME      # another remote

``dvc pull`` from an empty or unreachable remote fails with the hashes it misses or a count
("N files failed to download"), not with the outputs a user asked for. This command fetches
what the remote has into DVC's cache (``dvc fetch``), then checks out only the outputs that are
absent from the workspace and now complete in the cache. An output already in the workspace is
never replaced, even when it differs from what dvc.lock records. It ends with one line per
output that is still not what dvc.lock records, saying why, and exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Outcome:
    fetch_error: str | None = None
    checked_out: list[str] = field(default_factory=list)
    lacking: dict[str, str] = field(default_factory=dict)  # output -> why it is not as recorded


def pull(root: Path, remote: str | None = None) -> Outcome:
    """Fetch from ``remote`` (the default one when None) and check out the outputs that are absent
    and now complete in the cache; report what is still not as dvc.lock records."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    outcome = Outcome()
    with Repo(str(root)) as repo:
        try:
            repo.fetch(remote=remote)
        except DvcException as error:  # keeps what it did get; the outputs say what is missing
            outcome.fetch_error = str(error)
        outs = [out for stage in repo.index.stages for out in stage.outs]

        def where(out) -> str:
            return os.path.relpath(out.fs_path, root)

        complete = [out for out in outs if not out.exists and out.use_cache and out.hash_info
                    and not out.changed_cache()]
        with repo.lock:  # one output at a time: `repo.checkout(targets)` rereads dvc.lock per target
            for out in complete:
                try:
                    out.checkout()
                except DvcException as error:
                    print(f"checkout {where(out)}: {error}", file=sys.stderr)
        outcome.checked_out = [where(out) for out in complete if out.exists]
        for out in outs:
            if not out.workspace_status():
                continue
            if out.exists:
                why = "kept as it is here, though it differs from dvc.lock"
            elif not out.use_cache:
                why = "not here, and DVC does not cache it (cache: false): it comes from git"
            elif outcome.fetch_error:
                why = "not in the cache, and the fetch failed (above)"
            else:
                why = "not on the remote"
            outcome.lacking[where(out)] = why
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="\n\n".join(__doc__.split("\n\n")[:3]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-r", "--remote", help="the DVC remote (default: the configured default)")
    parser.add_argument("--dir", type=Path, default=Path("."),
                        help="the workspace (default: the current folder)")
    args = parser.parse_args(argv)
    # DVC's own warnings list missing hashes one per line; the summary below names the outputs.
    logging.getLogger("dvc").setLevel(logging.ERROR)
    outcome = pull(args.dir.resolve(), args.remote)
    if outcome.fetch_error:
        print(f"fetch: {outcome.fetch_error}", file=sys.stderr)
    print(f"{len(outcome.checked_out)} outputs checked out from the remote")
    if outcome.lacking:
        print(f"{len(outcome.lacking)} outputs are not what dvc.lock records (outputs already here "
              "were left as they were):", file=sys.stderr)
        for path, why in sorted(outcome.lacking.items()):
            print(f"  {path}: {why}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
