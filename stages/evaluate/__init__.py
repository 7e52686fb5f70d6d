"""Held-out evaluation of every exported policy: its settings."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from stages.core.settings import (
    Block,
    Bootstrap,
    Count,
    Params,
    Seed,
    StageSettings,
    argument_parser,
    parse_arguments,
)


class AtariEpisodes(Block):
    """Atari episodes are long: fewer of them."""

    episodes: Count
    """Episodes per Atari policy."""
    max_steps: Count
    """Agent steps (4 ALE frames each), as in training."""


class Settings(StageSettings):
    episodes: Count
    """Per policy and step cap, one seed each, greedy."""
    seed_start: Seed
    """Episode i is played from seed seed_start + i; checked disjoint from every training seed."""
    cartpole_max_steps: list[Count] = Field(min_length=1)
    """CartPole's caps (the book's 200 and CartPole-v1's own 500); other environments play to
    their own limit."""
    atari: AtariEpisodes
    """Atari policies' own episodes and cap."""
    bootstrap: Bootstrap
    """The 95% interval of each policy's mean return."""

    @property
    def seeds(self) -> range:
        """Every seed some policy is evaluated on."""
        return range(self.seed_start, self.seed_start + max(self.episodes, self.atari.episodes))


def settings(argv: Sequence[str], params: Params) -> Settings:
    parse_arguments(argument_parser(__doc__), argv)
    return params.read(Settings, "evaluate")


# --- where the per-policy stages (evaluate_<trainer>) put their results --------------------------

RESULTS = "reports/evaluate/policies"
"""One folder per policy: its episodes (returns.csv) and their summary (summary.json). Small,
committed to git (dvc.yaml: ``cache: false``); what the gathering stages read."""
RETURN_COLUMNS = ["policy", "algorithm", "seed", "max_steps", "episode", "env_seed", "return"]


def returns_path(policy: str) -> str:
    return f"{RESULTS}/{policy}/returns.csv"


def summary_path(policy: str) -> str:
    return f"{RESULTS}/{policy}/summary.json"


def timings_name(policy: str) -> str:
    """A per-policy evaluation's entry in logs/timings/ (stages/core/timings.py): its wall time
    is machine-dependent, so declared nowhere and committed nowhere; the report shows it as volatile."""
    return f"evaluate/{policy}"
