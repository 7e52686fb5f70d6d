"""The report (reports/index.html): what it reads of params.yaml. It has no section of its own:
the profile and seeds say what kind of run it shows, and it computes the intervals of pooled
returns as the evaluate stage does.

The pipeline's command checks the report's inputs (its deps in dvc.yaml) before it writes anything:
a missing one is an error naming it. ``python -m stages.report --partial`` renders a workspace
whose pipeline has not run to the end, with what is missing shown as "not run yet"."""

from __future__ import annotations

from collections.abc import Sequence

from stages.core.settings import (
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
    partial: bool = False
    """``--partial``: render what exists instead of refusing a workspace with inputs missing."""


def settings(argv: Sequence[str], params: Params) -> Settings:
    parser = argument_parser(__doc__)
    parser.add_argument("--partial", action="store_true",
                        help="render what exists, missing inputs shown as not run yet")
    args = parse_arguments(parser, argv)
    return Settings(pipeline=params.pipeline(record=True),
                    bootstrap=params.read(Bootstrap, "evaluate.bootstrap"), partial=args.partial)
