"""Small HTML building blocks for the generated report, and its one rule for volatile content.

A rerun with the same inputs must give the same bytes, but a report also states facts that change
from run to run: wall-clock times, the date, the machine, the git commit. Those are wrapped in
:func:`volatile`, i.e. between ``<!--volatile-->`` and ``<!--/volatile-->``, and
:func:`strip_volatile` removes exactly those spans: the reproducibility tests compare what is left
byte for byte, as they drop JSON keys and CSV columns ending in ``wall_time_s``.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence

VOLATILE_START = "<!--volatile-->"
VOLATILE_END = "<!--/volatile-->"
_VOLATILE = re.compile(re.escape(VOLATILE_START) + ".*?" + re.escape(VOLATILE_END), flags=re.DOTALL)


def volatile(markup: str) -> str:
    """Mark markup that legitimately differs between identical runs (timings, date, host, commit)."""
    return f"{VOLATILE_START}{markup}{VOLATILE_END}"


def strip_volatile(text: str) -> str:
    """The page less its volatile spans: what must be identical between two runs."""
    return _VOLATILE.sub("", text)


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def table(header: Sequence[str], rows: Iterable[Sequence[str]], *, css_class: str = "",
          raw: bool = False) -> str:
    """A table; cells are escaped unless ``raw`` (cells already built as markup)."""
    cell = (lambda v: v) if raw else esc
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>\n" for row in rows)
    attribute = f' class="{esc(css_class)}"' if css_class else ""
    return f"<table{attribute}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n"


def image(src: str, alt: str) -> str:
    return f'<figure><img src="{esc(src)}" alt="{esc(alt)}"><figcaption>{esc(alt)}</figcaption></figure>'


def link(href: str, text: str) -> str:
    return f'<a href="{esc(href)}">{esc(text)}</a>'
