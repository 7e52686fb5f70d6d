"""The generated report's one rule for volatile content (the page itself is rendered from the
report stage's Jinja2 templates, stages/report/templates/).

A rerun with the same inputs must give the same bytes, but a report also states facts that change
from run to run: wall-clock times, the date, the machine, the git commit. Those are wrapped in
:func:`volatile`, i.e. between ``<!--volatile-->`` and ``<!--/volatile-->``, and
:func:`strip_volatile` removes exactly those spans: the reproducibility tests compare what is left
byte for byte (pipeline/reproduction.py). The Markdown
summary (reports/summary.md) uses the same spans: an HTML comment is invisible in Markdown too.
"""

from __future__ import annotations

import re

VOLATILE_START = "<!--volatile-->"
VOLATILE_END = "<!--/volatile-->"
_VOLATILE = re.compile(re.escape(VOLATILE_START) + ".*?" + re.escape(VOLATILE_END), flags=re.DOTALL)


def volatile(markup: str) -> str:
    """Mark markup that legitimately differs between identical runs (timings, date, host, commit)."""
    return f"{VOLATILE_START}{markup}{VOLATILE_END}"


def strip_volatile(text: str) -> str:
    """The page less its volatile spans: what must be identical between two runs."""
    return _VOLATILE.sub("", text)
