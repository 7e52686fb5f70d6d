"""Every per-seed algorithm across its training seeds: the aggregate's settings."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from stages.core.settings import Params, Seed, StageSettings, argument_parser, parse_arguments


class Settings(StageSettings):
    confidence: float = Field(ge=0.5, lt=1.0)
    """Confidence level of every interval."""
    resamples: int = Field(ge=100)
    """Bootstrap resamples per interval."""
    seed: Seed
    """The bootstrap's draws."""
    curve_points: int = Field(ge=2)
    """Learning-curve points (evenly spaced), each with an interval."""
    min_runs_for_claims: int = Field(ge=2)
    """No "X beats Y" from fewer runs per algorithm."""


def settings(argv: Sequence[str], params: Params) -> Settings:
    parse_arguments(argument_parser(__doc__), argv)
    return params.read(Settings, "aggregate")
