"""Sample runs of a four-state Markov chain whose last state is terminal.

Sampling uses NumPy's legacy ``RandomState`` on purpose: with seed 42 and the same draw order as
the book, it reproduces the book's printed runs exactly. Beside the samples, the expected run
length is computed exactly from the chain (fundamental matrix of the absorbing chain), so the
sampled mean can be judged against the truth rather than eyeballed.
"""

from __future__ import annotations

import sys

import numpy as np

from stages.core.io import write_json, write_text
from stages.core.settings import Params, run_stage
from stages.markov_chain import settings

OUT = "reports/markov_chain"


def absorbing_states(transitions: np.ndarray) -> list[int]:
    return [s for s in range(len(transitions)) if transitions[s, s] == 1.0]


def sample_run(transitions: np.ndarray, start: int, max_steps: int,
               rng: np.random.RandomState) -> tuple[list[int], bool]:
    """States visited from ``start`` until an absorbing state; True if cut at ``max_steps``."""
    terminal = set(absorbing_states(transitions))
    states, state = [], start
    for _ in range(max_steps):
        states.append(state)
        if state in terminal:
            return states, False
        state = int(rng.choice(len(transitions), p=transitions[state]))
    return states, True


def expected_steps_to_absorption(transitions: np.ndarray, start: int) -> float:
    """Expected number of transitions before absorption: row ``start`` of (I - Q)^-1 summed."""
    transient = [s for s in range(len(transitions)) if s not in absorbing_states(transitions)]
    if start not in transient:
        return 0.0
    q = transitions[np.ix_(transient, transient)]
    fundamental = np.linalg.inv(np.eye(len(transient)) - q)
    return float(fundamental[transient.index(start)].sum())


def main() -> None:
    cfg = settings(sys.argv[1:], Params.load())
    transitions = np.array(cfg.transition_matrix, dtype=np.float64)
    rng = np.random.RandomState(cfg.seed)
    runs = [sample_run(transitions, cfg.start_state, cfg.max_steps, rng) for _ in range(cfg.runs)]

    lines = [f"States: {' '.join(map(str, states))}{' ...' if cut else ''}" for states, cut in runs]
    write_text(f"{OUT}/runs.txt", "\n".join(lines) + "\n")
    finished = [len(states) - 1 for states, cut in runs if not cut]
    write_json(f"{OUT}/metrics.json", {
        "runs": [{"states": states, "cut_at_max_steps": cut} for states, cut in runs],
        "terminal_states": absorbing_states(transitions),
        "runs_cut_at_max_steps": sum(cut for _, cut in runs),
        "mean_steps_of_finished_runs": float(np.mean(finished)) if finished else None,
        "expected_steps_to_termination": expected_steps_to_absorption(transitions, cfg.start_state),
    })
    print("\n".join(lines))


if __name__ == "__main__":
    run_stage(main)
