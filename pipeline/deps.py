"""The dependencies in dvc.yaml that are derived, not declared: regenerate them, or check them.

    python -m pipeline.deps            # rewrite dvc.yaml (comments and layout kept)
    python -m pipeline.deps --check    # exit 1 and list the differences

Three kinds, each owned by this command (edit the rest of dvc.yaml by hand):

- **Code.** A stage's Python dependencies are exactly the project files its module imports,
  directly or through other project modules, at the top of a file or inside a function
  (:func:`import_closure` reads the import statements; nothing is run). Files that hold only a
  docstring are left out: they change no result. A stage package's data files are code too: every
  file under a ``templates/`` folder of a package in the closure (the report's Jinja2 templates)
  is listed, one entry per file (:func:`package_data`), so that editing one reruns the stage in
  DVC and in Snakemake alike (Snakemake judges a folder input by the folder's own time stamp,
  which editing a file inside it does not move).
- **Consumers' folders.** A stage whose ``meta`` says ``derive: [every_report]`` (the report)
  depends on the ``reports/<folder>`` of every other stage; ``derive: [training_logs]`` (the
  aggregate) on the ``data/<folder>`` holding the training logs (DVCLive folders, declared as
  plots and metrics) of every stage that exports a policy, or on each such log's own
  ``.../dvclive`` folder where ``data/<folder>`` also holds resumable training state (a
  ``type: checkpoint`` output: the Atari runs' checkpoints are gigabytes, cached, not committed).
  A new experiment's folders are then added by this command.
- **The lists.** A gathering stage (a dependency on a folder of other stages' outputs:
  ``reports/evaluate/policies``, ``data/policies``) reads what the DAG declares, so it also
  depends on the params that decide which stages exist: the lists ``foreach``/``matrix`` iterate
  over (``seeds``, ``dqn.variants``, ...). Dropping a seed then reruns the gathering stages, which
  leave its results out.

One more check, not a rewrite: each per-policy declaration (``evaluate_<trainer>``,
``pi_<trainer>``) mirrors its training stage: the same ``foreach``/``matrix``, a stage for each of
the trainer's stages, depending on exactly that stage's exported policies among other stages'
outputs; and once one trainer has a declaration of a prefix, every trainer that exports policies
has one (:func:`per_policy_problems`).
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import sys
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from stages.core.dag import (
    POLICY_INDEX,
    StageSpec,
    dimension_params,
    gathered_folders,
    other_outputs_read,
    read_dag,
)

ROOT = Path(__file__).resolve().parents[1]
DVC_YAML = "dvc.yaml"
DERIVE = "derive"
RULES = ("every_report", "training_logs")
# Declarations named <prefix>_<trainer> hold a stage per stage of <trainer>, each for its policies.
PER_POLICY_PREFIXES = ("evaluate", "pi")
PACKAGE_DATA = ("templates",)  # folders of a stage package whose files the package reads at run time


# --- the import closure ------------------------------------------------------------------------


def module_file(name: str, root: Path) -> Path | None:
    """The project file of module ``name`` (``a.b`` -> a/b.py or a/b/__init__.py), if any."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file() and ".venv" not in candidate.relative_to(root).parts:
            return candidate
    return None


def _package_of(file: Path, root: Path) -> list[str]:
    parts = list(file.relative_to(root).with_suffix("").parts)
    return parts[:-1] if parts[-1] != "__init__" else parts[:-1]


def _imported_names(file: Path, root: Path) -> set[str]:
    """Every module name an import statement of ``file`` may load (parents and ``from`` members too)."""
    names: set[str] = set()
    package = _package_of(file, root)
    if file.name == "__init__.py":
        package = list(file.parent.relative_to(root).parts)
    for node in _executed(ast.parse(file.read_text(), filename=str(file))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1] if node.level > 1 else package
                module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    expanded = set()
    for name in names:
        parts = name.split(".")
        expanded.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return expanded


def _executed(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` but those under ``if TYPE_CHECKING:`` (imports for annotations only)."""
    nodes, pending = [], [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            pending.extend(node.orelse)
            continue
        nodes.append(node)
        pending.extend(ast.iter_child_nodes(node))
    return nodes


def has_code(file: Path) -> bool:
    """A file of only a docstring (an empty package marker) changes no result."""
    body = ast.parse(file.read_text()).body
    return not (len(body) <= 1 and all(isinstance(n, ast.Expr) for n in body))


def import_closure(module: str, root: Path = ROOT) -> list[str]:
    """Project files (relative, sorted) that ``python -m module`` imports, with code in them."""
    names = module.split(".")
    start = [".".join(names[:i]) for i in range(1, len(names) + 1)]
    if (root.joinpath(*names) / "__main__.py").is_file():
        start.append(f"{module}.__main__")
    seen: set[Path] = set()
    pending = [f for f in (module_file(name, root) for name in start) if f is not None]
    if not pending:
        raise ValueError(f"module {module} is not a project module under {root}")
    while pending:
        file = pending.pop()
        if file in seen:
            continue
        seen.add(file)
        for name in _imported_names(file, root):
            found = module_file(name, root)
            if found is not None and found not in seen:
                pending.append(found)
    return sorted(str(f.relative_to(root)) for f in seen if has_code(f))


def package_data(files: list[str], root: Path = ROOT) -> list[str]:
    """The data files (relative, sorted) of the packages holding ``files``: everything under a
    ``templates/`` folder beside a package's ``__init__.py``, hidden files and caches left out."""
    found: set[str] = set()
    for package in {(root / f).parent for f in files}:
        if not (package / "__init__.py").is_file():
            continue
        for folder in PACKAGE_DATA:
            for path in (package / folder).rglob("*") if (package / folder).is_dir() else ():
                parts = path.relative_to(package).parts
                if path.is_file() and not any(p.startswith(".") or p == "__pycache__" for p in parts):
                    found.add(str(path.relative_to(root)))
    return sorted(found)


def code_dependencies(module: str, root: Path = ROOT) -> list[str]:
    """What a stage's code is: its import closure and its packages' data files, sorted."""
    closure = import_closure(module, root)
    return sorted({*closure, *package_data(closure, root)})


# --- what dvc.yaml should say ------------------------------------------------------------------


def _is_code(dep: str, closures: set[str]) -> bool:
    """A dependency this command owns: pipeline code and its packages' data (stages/), or a module
    some stage imports. Other files (pi/run_policy.py, which the bundle ships but nothing imports)
    are declared."""
    if dep.startswith("stages/"):
        return dep.endswith(".py") or any(f"/{folder}/" in dep for folder in PACKAGE_DATA)
    return dep.endswith(".py") and dep in closures


def derived_folders(rule: str, stage: StageSpec, stages: list[StageSpec]) -> list[str]:
    """The folder dependencies a ``derive`` rule gives ``stage``."""
    folders: list[str] = []
    if rule == "every_report":
        for other in stages:
            for out in other.outs:
                parts = Path(out).parts
                if other.group != stage.group and parts[0] == "reports" and len(parts) >= 3:
                    folders.append(f"reports/{parts[1]}")
    elif rule == "training_logs":
        with_state = {Path(state).parts[1] for other in stages for state in other.state
                      if Path(state).parts[0] == "data" and len(Path(state).parts) >= 3}
        for other in stages:
            if other.policies:
                for log in map(Path, other.plots):
                    if log.parts[0] != "data" or len(log.parts) < 3:
                        continue
                    # A folder that also holds resumable training state (data/atari_dqn: gigabytes
                    # of checkpoints, cached, and TensorBoard's files beside them) is not read
                    # whole: the log's own DVCLive folder is (<folder>/dvclive/plots/metrics).
                    if log.parts[1] not in with_state:
                        folders.append(f"data/{log.parts[1]}")
                    elif log.parts[-3:] == ("dvclive", "plots", "metrics"):
                        folders.append(log.parent.parent.as_posix())
    else:
        raise ValueError(f"stage {stage.name}: meta.{DERIVE} rule {rule!r} is not one of {', '.join(RULES)}")
    return list(dict.fromkeys(folders))


def _owned_by(rule: str, dep: str) -> bool:
    parts = Path(dep).parts
    if rule == "training_logs" and parts and parts[0] == "data" and parts[-1] == "dvclive":
        return True  # a training log's own folder (see derived_folders)
    top = {"every_report": "reports", "training_logs": "data"}[rule]
    return len(parts) == 2 and parts[0] == top and dep != str(POLICY_INDEX)


def expected_definition(group: str, definition: dict[str, Any], stages: list[StageSpec],
                        dimensions: list[str], closures: dict[str, list[str]]) -> tuple[list[str], list[Any]]:
    """The deps and params a declaration should have: derived entries replaced, the rest kept."""
    body = definition.get("do", definition)
    instances = [s for s in stages if s.group == group]
    if not instances:
        raise ValueError(f"dvc.yaml declares {group}, but DVC resolves no stage from it")
    first = instances[0]
    rules = list((body.get("meta") or {}).get(DERIVE, []))
    declared = [str(d) for d in body.get("deps") or []]
    every_closure = {file for files in closures.values() for file in files}
    kept = [d for d in declared if not _is_code(d, every_closure) and not any(_owned_by(r, d) for r in rules)]
    derived = [f for rule in rules for f in derived_folders(rule, first, stages)]
    code = closures[first.module]
    deps = [*code, *[d for d in kept if d not in code], *sorted(set(derived) - set(kept))]
    params = list(body.get("params") or [])
    if gathered_folders(replace(first, deps=deps), stages):
        own = [p for p in params if not (isinstance(p, str) and p in dimensions)]
        params = [*own, *dimensions]
    return deps, params


def per_policy_problems(document: dict[str, Any], stages: list[StageSpec]) -> list[str]:
    """How the per-policy declarations (``<prefix>_<trainer>``) fail to mirror their trainers."""
    declarations = document["stages"]
    by_group: dict[str, list[StageSpec]] = {}
    for stage in stages:
        by_group.setdefault(stage.group, []).append(stage)
    trainers = [group for group, members in by_group.items() if any(s.policies for s in members)]
    problems = []
    for prefix in PER_POLICY_PREFIXES:
        pattern = re.compile(rf"^{prefix}_(?P<trainer>.+)$")
        mirrors = {m["trainer"]: m[0] for m in map(pattern.match, declarations) if m and m["trainer"] in trainers}
        if mirrors:
            problems += [f"{trainer}: exports policies but has no {prefix}_{trainer} declaration"
                         for trainer in trainers if trainer not in mirrors]
        for trainer, name in mirrors.items():
            iteration = [{k: declarations[d].get(k) for k in ("foreach", "matrix")} for d in (trainer, name)]
            if iteration[0] != iteration[1]:
                problems.append(f"{name}: foreach/matrix {iteration[1]} differs from {trainer}'s {iteration[0]}")
                continue
            own = {s.name.removeprefix(trainer): s for s in by_group[trainer]}
            mine = {s.name.removeprefix(name): s for s in by_group.get(name, [])}
            for suffix, trained in own.items():
                consumer = mine.get(suffix)
                if consumer is None:
                    problems.append(f"{name}: no stage {name}{suffix} for {trained.name}")
                    continue
                read = sorted(other_outputs_read(consumer, stages))
                if read != sorted(trained.policies):
                    problems.append(f"{consumer.name}: reads {read} of other stages' outputs; it must read "
                                    f"exactly {trained.name}'s policies {sorted(trained.policies)}")
    return problems


def differences(root: Path = ROOT, stages: list[StageSpec] | None = None) -> tuple[dict[str, Any], list[str]]:
    """dvc.yaml's round-trip document with the derived entries as they should be, and what changed."""
    from ruamel.yaml import YAML

    document = _yaml().load((root / DVC_YAML).read_text())
    stages = read_dag(root) if stages is None else stages
    dimensions = dimension_params(YAML(typ="safe").load((root / DVC_YAML).read_text()))
    closures = {stage.module: code_dependencies(stage.module, root) for stage in stages}
    changes = []
    for group, definition in document["stages"].items():
        body = definition.get("do", definition)
        deps, params = expected_definition(group, definition, stages, dimensions, closures)
        for what, now, wanted in (("deps", [str(d) for d in body.get("deps") or []], deps),
                                  ("params", list(body.get("params") or []), params)):
            if now != wanted:
                missing = [d for d in wanted if d not in now]
                extra = [d for d in now if d not in wanted]
                changes.append(f"{group}: {what} " + "; ".join(
                    part for part in (f"missing {missing}" if missing else "",
                                      f"extra {extra}" if extra else "",
                                      "order" if not (missing or extra) else "") if part))
                body[what] = wanted
    return document, changes


def _yaml() -> Any:
    from ruamel.yaml import YAML

    yaml_rt = YAML()
    yaml_rt.indent(mapping=2, sequence=4, offset=2)
    yaml_rt.preserve_quotes = True
    yaml_rt.width = 4096  # keep each line as written
    return yaml_rt


def write(document: dict[str, Any], root: Path = ROOT) -> None:
    stream = io.StringIO()
    _yaml().dump(document, stream)
    (root / DVC_YAML).write_text(stream.getvalue())


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report what differs (exit 1 if anything)")
    parser.add_argument("--root", type=Path, default=ROOT)
    args = parser.parse_args(None if argv is None else list(argv))
    stages = read_dag(args.root)
    document, changes = differences(args.root, stages)
    problems = per_policy_problems(document, stages)
    for change in [*changes, *problems]:
        print(change)
    if args.check:
        return 1 if changes or problems else 0
    if changes:
        write(document, args.root)
        print(f"{DVC_YAML}: {len(changes)} derived entries rewritten")
    else:
        print(f"{DVC_YAML}: derived dependencies are current")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
