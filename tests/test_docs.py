"""The documentation holds together: README.md and docs/ link only to files in the repository (or to
the report's generated pages), the README stays short, no page cites the external specification,
and the README's test command (command 2) is the one CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_LIMIT_BYTES = 12_288
# Written by the report stage, so absent from a fresh clone; links to them are allowed.
GENERATED = {"reports/index.html", "reports/summary.md"}

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def pages() -> list[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def prose(text: str) -> str:
    """The text without code blocks and inline code, where link-like text is not a link."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    body = prose(text)
    return INLINE_LINK.findall(body) + REFERENCE_LINK.findall(body)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|<[^>]+>", "", heading).strip().lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: dict[str, int] = {}
    result = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = found.get(base, 0)
        found[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def broken_links(page: Path, text: str | None = None) -> list[str]:
    """Relative links of ``page`` (its text, unless given) that lead nowhere."""
    problems = []
    for target in links(page.read_text(encoding="utf-8") if text is None else text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):   # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        try:
            relative = resolved.relative_to(ROOT).as_posix()
        except ValueError:
            problems.append(f"{target}: outside the repository")
            continue
        if relative in GENERATED:
            continue
        if not resolved.is_file():
            problems.append(f"{target}: no such file")
            continue
        if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{target}: no heading with anchor #{anchor} in {relative}")
    return problems


def command_2() -> str:
    """The line after the `# 2.` comment in the README's set-up block."""
    lines = README.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# 2. "):
            return lines[i + 1]
    raise AssertionError("README.md has no '# 2. ' line introducing command 2")


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


def test_the_checker_notices_broken_links_and_ignores_code():
    text = ("[a](design.md) [b](missing.md) [c](design.md#no-such-heading) [d](#experiments)\n"
            "[e](../reports/index.html#dqn) [f](https://example.org) `[g](gone.md)`\n"
            "```\n[h](gone-too.md)\n```\n")
    assert broken_links(ROOT / "docs" / "index.md", text) == [
        "missing.md: no such file",
        "design.md#no-such-heading: no heading with anchor #no-such-heading in docs/design.md",
    ]


def test_the_readme_stays_short():
    size = len(README.read_bytes())
    assert size <= README_LIMIT_BYTES, f"README.md is {size} bytes; move detail into docs/"


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_page_cites_the_specification(page):
    hits = [f"line {n}: {line.strip()}"
            for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
            if "SPEC" in line]
    assert hits == [], "the specification is not in the repository; link a docs page instead"


def test_no_code_or_data_cites_the_specification():
    """Docstrings, templates, the book's numbers and the figures' labels say where in the chapter a
    result comes from, never a section of a document the repository does not hold."""
    files = [path for folder in ("stages", "pipeline", "pi", "data", "benchmarks", "tests")
             for path in sorted((ROOT / folder).rglob("*"))
             if path.suffix in {".py", ".yaml", ".html", ".md", ".j2"} and path.name != "test_docs.py"]
    assert len(files) > 50, "the code tree was not found"
    hits = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}" for path in files
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if re.search(r"\bSPEC\b", line)]
    assert hits == [], "the specification is not in the repository:\n" + "\n".join(hits)


def test_command_2_is_what_ci_runs():
    command = command_2()
    assert command.startswith("python3 -m pip install uv==") and command.endswith(" uv run pytest")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert command in ci, ".ci/run must run the README's command 2, byte for byte"
