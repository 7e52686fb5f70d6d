"""Three replay memories holding a million transitions, timed side by side.

- ``deque``: ``collections.deque(maxlen=N)`` of transition tuples, the book's DQN memory. Appending
  is cheap, but indexing walks a linked list of blocks, so random sampling slows as it grows.
- ``rotating_list``: the book's alternative, a NumPy object array with a moving index.
- ``ring_buffer``: this project's memory (``stages/replay.py``), one preallocated array per
  field; a batch is one fancy-index per field instead of tuples restacked in Python.

Each memory is timed appending one transition, sampling ``sample_size`` transitions (the book's
timing), and sampling a training batch of ``batch_size`` transitions as arrays. Every timing is
the fastest of ``repeats`` timeit runs; the transitions are synthetic, since their values do not
change the cost. Timings vary from run to run, so every timing key and column ends in
``wall_time_s`` (in seconds), the pipeline's marker for values that are not reproducible.
"""

from __future__ import annotations

import sys
import timeit
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from stages.core.io import write_csv, write_json
from stages.replay import ReplayMemory
from stages.core.seeding import seed_everything
from stages.core.settings import Params, run_stage
from stages.replay_benchmark import settings

REPORTS = "reports/replay_benchmark"
OBSERVATION_SIZE = 4  # CartPole's
OPERATIONS = ("append", "sample", "batch")

Transition = tuple  # (observation, action, reward, next observation, terminated)


class RotatingList:
    """The book's rotating list: object references in a NumPy array, overwritten in a circle."""

    def __init__(self, capacity: int, rng: np.random.Generator) -> None:
        self.buffer = np.empty(capacity, dtype=object)
        self.capacity = capacity
        self.rng = rng
        self.index = 0
        self.size = 0

    def append(self, item: Transition) -> None:
        self.buffer[self.index] = item
        self.size = min(self.size + 1, self.capacity)
        self.index = (self.index + 1) % self.capacity

    def sample(self, count: int) -> np.ndarray:
        return self.buffer[self.rng.integers(self.size, size=count)]


def stack_fields(transitions: Sequence[Transition]) -> list[np.ndarray]:
    """A batch as the book builds it: one array per field, gathered from the tuples."""
    return [np.array([transition[field] for transition in transitions]) for field in range(5)]


def synthetic_transitions(count: int, rng: np.random.Generator) -> list[Transition]:
    """Consecutive transitions; each next observation is the following one's observation object."""
    observations = list(rng.normal(size=(count + 1, OBSERVATION_SIZE)).astype(np.float32))
    actions = rng.integers(2, size=count).tolist()
    terminated = (rng.random(count) < 0.05).tolist()
    return [(observations[i], actions[i], 1.0, observations[i + 1], terminated[i]) for i in range(count)]


def fastest_call(call: Callable[[], object], repeats: int) -> float:
    """Seconds per call: timeit's own choice of loop count, the fastest of ``repeats`` runs."""
    timer = timeit.Timer(call)
    number, _ = timer.autorange()
    return min(timer.repeat(repeat=repeats, number=number)) / number


def time_memories(transitions: list[Transition], cfg, rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """{memory: {operation: seconds per call}} with ``len(transitions)`` items stored in each."""
    capacity = len(transitions)
    probe = transitions[capacity // 2]

    book_deque: deque = deque(transitions, maxlen=capacity)
    rotating = RotatingList(capacity, rng)
    ring = ReplayMemory(capacity, (OBSERVATION_SIZE,), rng=rng)
    for transition in transitions:
        rotating.append(transition)
        ring.append(*transition)

    def deque_sample(count: int) -> list[Transition]:
        return [book_deque[i] for i in rng.integers(len(book_deque), size=count)]

    calls = {
        "deque": {"append": lambda: book_deque.append(probe),
                  "sample": lambda: deque_sample(cfg.sample_size),
                  "batch": lambda: stack_fields(deque_sample(cfg.batch_size))},
        "rotating_list": {"append": lambda: rotating.append(probe),
                          "sample": lambda: rotating.sample(cfg.sample_size),
                          "batch": lambda: stack_fields(rotating.sample(cfg.batch_size))},
        "ring_buffer": {"append": lambda: ring.append(*probe),
                        "sample": lambda: ring.sample(cfg.sample_size),
                        "batch": lambda: ring.sample(cfg.batch_size)},
    }
    return {memory: {operation: fastest_call(call, cfg.repeats) for operation, call in ops.items()}
            for memory, ops in calls.items()}


def markdown_table(timings: dict[str, dict[str, float]], cfg) -> str:
    """Microseconds per call, and how many times faster than the deque."""
    headers = ["memory", "append (us)", f"sample {cfg.sample_size} (us)", f"batch of {cfg.batch_size} (us)"]
    rows = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for memory, times in timings.items():
        cells = [f"{times[op] * 1e6:.3f} (x{timings['deque'][op] / times[op]:.1f})" for op in OPERATIONS]
        rows.append("| " + " | ".join([memory, *cells]) + " |")
    return "\n".join(rows)


def main() -> None:
    cfg = settings(sys.argv[1:], Params.load())
    rng = seed_everything(cfg.seed)
    transitions = synthetic_transitions(cfg.items, rng)
    timings = time_memories(transitions, cfg, rng)

    write_csv(f"{REPORTS}/timings.csv", pd.DataFrame(
        [{"memory": memory, **{f"{op}_wall_time_s": times[op] for op in OPERATIONS}}
         for memory, times in timings.items()]))
    write_json(f"{REPORTS}/metrics.json", {
        "items": cfg.items,
        "sample_size": cfg.sample_size,
        "batch_size": cfg.batch_size,
        "repeats": cfg.repeats,
        **{f"{memory}_{op}_wall_time_s": times[op] for memory, times in timings.items() for op in OPERATIONS},
    })
    print(f"{cfg.items:,} transitions stored; time per call, and speed-up over the deque:")
    print(markdown_table(timings, cfg))


if __name__ == "__main__":
    run_stage(main)
