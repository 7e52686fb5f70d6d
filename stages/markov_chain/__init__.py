"""A four-state Markov chain: its settings (the experiment is in ``__main__.py``)."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field, model_validator

from stages.core.settings import (
    Count,
    NonNegativeInt,
    Params,
    Probability,
    Seed,
    StageSettings,
    argument_parser,
    parse_arguments,
)


class Settings(StageSettings):
    transition_matrix: list[list[Probability]] = Field(min_length=2)
    """Row s: the probabilities of moving from state s to each state; a row with 1 on its
    diagonal is a terminal (absorbing) state."""
    start_state: NonNegativeInt
    """Every run starts in this state."""
    runs: Count
    """Runs sampled from the start state."""
    max_steps: Count
    """A run still going after this many states is cut (printed with '...')."""
    seed: Seed
    """NumPy's legacy RandomState, drawn in the book's order."""

    @model_validator(mode="after")
    def _chain(self) -> Settings:
        rows = self.transition_matrix
        if not all(len(row) == len(rows) and abs(sum(row) - 1.0) < 1e-9 for row in rows):
            raise ValueError("transition_matrix must be square with rows summing to 1")
        if self.start_state >= len(rows):
            raise ValueError("start_state must index a row of transition_matrix")
        return self


def settings(argv: Sequence[str], params: Params) -> Settings:
    parse_arguments(argument_parser(__doc__), argv)
    return params.read(Settings, "markov_chain")
