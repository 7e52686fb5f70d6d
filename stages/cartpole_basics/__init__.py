"""CartPole's first frame and the hard-coded policy: its settings."""

from __future__ import annotations

from collections.abc import Sequence

from stages.core.settings import (
    Count,
    Episodes,
    Gif,
    Params,
    Seed,
    StageSettings,
    argument_parser,
    env_family,
    parse_arguments,
)


class Settings(StageSettings):
    env_id: env_family("CartPole", "the hard-coded policy reads the pole angle")
    seed: Seed
    """The first observation and the cart_pole_plot frame."""
    max_steps: Count
    """Episode cap (the book's 200)."""
    evaluation: Episodes
    """The hard-coded policy's episodes, one seed each."""
    gif: Gif
    """The hard-coded policy's GIF."""


def settings(argv: Sequence[str], params: Params) -> Settings:
    parse_arguments(argument_parser(__doc__), argv)
    return params.read(Settings, "cartpole_basics")
