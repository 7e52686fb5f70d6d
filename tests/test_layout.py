"""The code's shape: files short enough to read, and tooling apart from the stages."""

from __future__ import annotations

import ast

LIMIT = 450  # lines: a module longer than this is split by what it does


def test_no_module_under_stages_or_pi_is_longer_than_the_limit(repo_root):
    long = {str(path.relative_to(repo_root)): n for folder in ("stages", "pi")
            for path in (repo_root / folder).rglob("*.py")
            if (n := len(path.read_text().splitlines())) > LIMIT}
    assert long == {}, f"split these by what they do: {long}"


def test_no_stage_code_imports_the_tooling(repo_root):
    """pipeline/ (derived deps, validation, workspaces, the reproduction check) is run around the
    stages, never by them: editing it must rerun nothing."""
    importers = []
    for path in (repo_root / "stages").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            if any(name == "pipeline" or name.startswith("pipeline.") for name in names):
                importers.append(str(path.relative_to(repo_root)))
    assert importers == []
