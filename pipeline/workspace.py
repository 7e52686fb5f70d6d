"""Run the pipeline under a profile in a workspace of its own, never touching params.yaml.

A workspace is a fresh git repository holding the project's files (as the working tree has
them) with ``profiles/<profile>.yaml`` merged over params.yaml. DVC there records the merged
values, i.e. the values actually used, and the outputs land in the workspace's data/ and reports/.

    python -m pipeline.workspace --profile quick --dir preview --engine snakemake
"""

from __future__ import annotations

import argparse
import copy
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCK_FILE = "dvc.lock"
GIT_IDENTITY = ["-c", "user.name=rl-pipeline", "-c", "user.email=rl-pipeline@localhost"]


WILDCARD = "*"  # in a profile: every entry of the mapping (every variant, configuration, game)


def merge(base: dict[str, Any], overlay: dict[str, Any], where: str = "") -> dict[str, Any]:
    """``overlay`` over ``base``, recursively for mappings; an unknown key is an error (a typo).

    A key ``*`` applies its value to every entry of the mapping, before the entries named.
    """
    merged = copy.deepcopy(base)
    for key in sorted(overlay, key=lambda k: k != WILDCARD):
        value = overlay[key]
        if key != WILDCARD and key not in base:
            raise KeyError(f"profile sets {where}{key}, which params.yaml does not have")
        for target in (list(base) if key == WILDCARD else [key]):
            if isinstance(value, dict) and isinstance(merged[target], dict):
                merged[target] = merge(merged[target], value, f"{where}{target}.")
            else:
                merged[target] = copy.deepcopy(value)
    return merged


def profiled_params_text(params_text: str, merged: dict[str, Any]) -> str:
    """params.yaml's text with the merged values written in, comments and anchors kept.

    Values are set where they differ (ruamel.yaml's round trip keeps the rest of the file as it
    is). A value set under an anchor also reaches the entries that merge it; if the result does
    not read back as ``merged``, the merged values are written plainly instead.
    """
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedSeq

    yaml_rt = YAML()
    yaml_rt.indent(mapping=2, sequence=4, offset=2)
    document = yaml_rt.load(params_text)

    def write_into(node: Any, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(node.get(key), dict):
                write_into(node[key], value)
            elif node.get(key) != value:
                if isinstance(value, list):
                    value = CommentedSeq(value)
                    value.fa.set_flow_style()
                node[key] = value

    write_into(document, merged)
    stream = io.StringIO()
    yaml_rt.dump(document, stream)
    if yaml.safe_load(stream.getvalue()) == merged:
        return stream.getvalue()
    return yaml.safe_dump(merged, sort_keys=False, default_flow_style=None)


def project_files(source: Path) -> list[str]:
    """Tracked and new-but-not-ignored files: what the next commit of the working tree would hold."""
    listing = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                             cwd=source, check=True, capture_output=True, text=True).stdout
    return [name for name in listing.split("\0") if name and (source / name).is_file()]


def profiled_params(profile: str, source: Path = REPO_ROOT) -> str:
    """params.yaml's text with ``profiles/<profile>.yaml`` applied; an unknown profile, or one
    that sets a key params.yaml does not have, raises before anything is written."""
    profile_file = source / "profiles" / f"{profile}.yaml"
    if not profile_file.is_file():
        known = sorted(p.stem for p in (source / "profiles").glob("*.yaml"))
        raise FileNotFoundError(f"no profile '{profile}' ({profile_file}); known: {', '.join(known)}")
    text = (source / "params.yaml").read_text()
    try:
        overlay = yaml.safe_load(profile_file.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{profile_file} is not valid YAML: {error}") from None
    if not isinstance(overlay, dict):
        raise ValueError(f"{profile_file} must be a mapping of params.yaml's keys to new values")
    return profiled_params_text(text, merge(yaml.safe_load(text), overlay))


def remove_killed_builds(target: Path) -> None:
    """Remove the temporary folders of builds of ``target`` whose process is gone (killed)."""
    for folder in target.parent.glob(f".{target.name}.tmp-*"):
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process: a build of its own that it abandoned
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_committed_result(name: str) -> bool:
    """A result the pipeline wrote and git keeps (dvc.yaml's ``cache: false`` outputs): everything
    tracked under reports/ or in a folder of data/ (data/'s own files, such as the book's numbers,
    are sources)."""
    return name.startswith("reports/") or (name.startswith("data/") and name.count("/") >= 2)


def create_workspace(target: Path, profile: str | None = "quick", source: Path = REPO_ROOT) -> Path:
    """Copy the project into ``target`` (which must not exist) and apply ``profile``.

    Under a profile, dvc.lock and the results committed with it (under reports/ and data/<stage>/)
    are left behind: they record the project's own run (the full profile), whose stages, hashes and
    numbers a run with other settings does not share; the workspace's engines record its runs in a
    dvc.lock of its own.

    The profile is applied before anything is written, and the workspace is built in a temporary
    sibling folder renamed to ``target`` once complete: a bad profile or a failure midway leaves
    no folder behind, so the corrected command can use the same ``target``."""
    target = Path(target)
    if target.exists():
        raise FileExistsError(f"{target} already exists; choose a new directory or remove it")
    params_text = profiled_params(profile, source) if profile is not None else None
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_killed_builds(target)
    building = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        for name in project_files(source):
            if profile is not None and (name == LOCK_FILE or is_committed_result(name)):
                continue
            destination = building / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, destination)
        if params_text is not None:
            (building / "params.yaml").write_text(params_text)
        subprocess.run(["git", "init", "-q"], cwd=building, check=True)
        subprocess.run(["git", "add", "-A"], cwd=building, check=True)
        subprocess.run(["git", *GIT_IDENTITY, "commit", "-q", "-m", f"workspace ({profile or 'as is'})"],
                       cwd=building, check=True)
        building.rename(target)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return target


def engine_command(engine: str, cores: int) -> list[str]:
    bin_dir = Path(sys.executable).parent
    if engine == "snakemake":
        return [str(bin_dir / "snakemake"), "--cores", str(cores)]
    if engine == "dvc":
        return [str(bin_dir / "dvc"), "repro"]
    raise ValueError(f"unknown engine {engine!r}: choose snakemake or dvc")


def engine_env() -> dict[str, str]:
    """The environment with this interpreter's bin/ first, so stage commands' `python` is ours."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick", help="profiles/<name>.yaml to apply (default: quick)")
    parser.add_argument("--dir", type=Path, default=REPO_ROOT / "preview", help="workspace to create")
    parser.add_argument("--engine", choices=["snakemake", "dvc", "none"], default="snakemake")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        workspace = create_workspace(args.dir, args.profile)
    except (FileExistsError, FileNotFoundError, KeyError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"workspace with profile '{args.profile}': {workspace}")
    if args.engine == "none":
        return 0
    return subprocess.run(engine_command(args.engine, args.cores), cwd=workspace, env=engine_env()).returncode


if __name__ == "__main__":
    sys.exit(main())
