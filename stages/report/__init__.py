"""The report (reports/index.html): what it reads of params.yaml. It has no section of its own:
the profile and seeds say what kind of run it shows, and it computes the intervals of pooled
returns as the evaluate stage does."""

from __future__ import annotations

from collections.abc import Sequence

from stages.common.settings import (
    Bootstrap,
    Params,
    Pipeline,
    StageSettings,
    argument_parser,
    parse_arguments,
)

SECTION = None


class Settings(StageSettings):
    pipeline: Pipeline
    """The profile and the training seeds (the first seed's figures are shown)."""
    bootstrap: Bootstrap
    """As the evaluate stage's: the interval of pooled returns."""


def settings(argv: Sequence[str], params: Params) -> Settings:
    parse_arguments(argument_parser(__doc__), argv)
    return Settings(pipeline=params.pipeline(record=True),
                    bootstrap=params.read(Bootstrap, "evaluate.bootstrap"))
