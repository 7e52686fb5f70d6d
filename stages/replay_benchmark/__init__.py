"""Replay memories timed with a million transitions: their settings."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import model_validator

from stages.core.settings import Count, Params, Seed, StageSettings, argument_parser, parse_arguments


class Settings(StageSettings):
    items: Count
    """Transitions stored before timing."""
    sample_size: Count
    """The book's timing: sample this many items ..."""
    batch_size: Count
    """... and a training batch of full transitions."""
    repeats: Count
    """timeit repeats; the fastest is reported."""
    seed: Seed

    @model_validator(mode="after")
    def _fits(self) -> Settings:
        if max(self.sample_size, self.batch_size) > self.items:
            raise ValueError("sample_size and batch_size must not exceed items")
        return self


def settings(argv: Sequence[str], params: Params) -> Settings:
    parse_arguments(argument_parser(__doc__), argv)
    return params.read(Settings, "replay_benchmark")
