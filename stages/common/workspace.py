"""Run the pipeline under a profile in a workspace of its own, never touching params.yaml.

A workspace is a fresh git repository holding the project's files (as the working tree has
them) with ``profiles/<profile>.yaml`` merged over params.yaml. DVC there records the merged
values, i.e. the values actually used, and the outputs land in the workspace's data/ and reports/.

    python -m stages.common.workspace --profile quick --dir preview --engine snakemake
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

REPO_ROOT = Path(__file__).resolve().parents[2]
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


def create_workspace(target: Path, profile: str | None = "quick", source: Path = REPO_ROOT) -> Path:
    """Copy the project into ``target`` (which must not exist) and apply ``profile``.

    Under a profile, dvc.lock is left behind: it records the project's own run (the full profile),
    whose stages and hashes a run with other settings does not share; the workspace's engines
    record its runs in a dvc.lock of its own."""
    target = Path(target)
    if target.exists():
        raise FileExistsError(f"{target} already exists; choose a new directory or remove it")
    for name in project_files(source):
        if profile is not None and name == LOCK_FILE:
            continue
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, destination)
    if profile is not None:
        profile_file = source / "profiles" / f"{profile}.yaml"
        if not profile_file.exists():
            known = sorted(p.stem for p in (source / "profiles").glob("*.yaml"))
            raise FileNotFoundError(f"no profile '{profile}' ({profile_file}); known: {', '.join(known)}")
        text = (source / "params.yaml").read_text()
        params = merge(yaml.safe_load(text), yaml.safe_load(profile_file.read_text()))
        (target / "params.yaml").write_text(profiled_params_text(text, params))
    subprocess.run(["git", "init", "-q"], cwd=target, check=True)
    subprocess.run(["git", "add", "-A"], cwd=target, check=True)
    subprocess.run(["git", *GIT_IDENTITY, "commit", "-q", "-m", f"workspace ({profile or 'as is'})"],
                   cwd=target, check=True)
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
    except (FileExistsError, FileNotFoundError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"workspace with profile '{args.profile}': {workspace}")
    if args.engine == "none":
        return 0
    return subprocess.run(engine_command(args.engine, args.cores), cwd=workspace, env=engine_env()).returncode


if __name__ == "__main__":
    sys.exit(main())
