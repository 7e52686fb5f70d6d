"""Replay memories in preallocated NumPy arrays: O(1) append, one vectorised gather per batch.

A deque of transition tuples (the book's memory) appends fast but indexes a linked list of blocks,
so sampling from a large one is slow, and every batch is rebuilt from Python tuples. Here each
field of a transition (observation, action, reward, next observation, terminated) is one array,
written in a ring: appending overwrites the oldest slot, and sampling a batch is one ``take``
per field. :class:`PrioritizedReplayMemory` adds proportional prioritisation (Schaul et al.,
2016) through a sum tree whose updates and searches are vectorised over the batch too.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

SLOT_BLOCK = 4096  # uniform slots drawn per Generator call once the memory is full


class Batch(NamedTuple):
    """Transitions sampled together; ``weights`` are importance-sampling weights (1 if uniform)."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminated: np.ndarray
    indices: np.ndarray
    weights: np.ndarray


class ReplayMemory:
    """The last ``capacity`` transitions, sampled uniformly with replacement (as the book does)."""

    def __init__(self, capacity: int, observation_shape: tuple[int, ...], *,
                 observation_dtype: np.dtype | type = np.float32,
                 rng: np.random.Generator | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"replay capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.observations = np.zeros((capacity, *observation_shape), dtype=observation_dtype)
        self.next_observations = np.zeros_like(self.observations)
        self.actions = np.zeros(capacity, dtype=np.int64)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.terminated = np.zeros(capacity, dtype=np.float32)  # 1.0: no bootstrapping from next
        self.rng = rng if rng is not None else np.random.default_rng()
        self._next_slot = 0
        self._size = 0
        self._unit_weights: dict[int, np.ndarray] = {}
        self._slot_block = np.empty(0, dtype=np.int64)
        self._block_position = 0

    def __len__(self) -> int:
        return self._size

    def append(self, observation: np.ndarray, action: int, reward: float,
               next_observation: np.ndarray, terminated: bool) -> int:
        """Store one transition over the oldest one; returns the slot it went to."""
        slot = self._next_slot
        self.observations[slot] = observation
        self.actions[slot] = action
        self.rewards[slot] = reward
        self.next_observations[slot] = next_observation
        self.terminated[slot] = terminated
        self._next_slot = (slot + 1) % self.capacity
        self._size = min(self._size + 1, self.capacity)
        return slot

    def sample(self, batch_size: int) -> Batch:
        self._check_not_empty()
        weights = self._unit_weights.get(batch_size)
        if weights is None:
            weights = self._unit_weights[batch_size] = np.ones(batch_size, dtype=np.float32)
            weights.flags.writeable = False
        return self.gather(self._uniform_slots(batch_size), weights)

    def _uniform_slots(self, count: int) -> np.ndarray:
        """Slots drawn uniformly, with replacement, among the stored transitions.

        For a batch of a few items the cost is the Generator call, not the arithmetic, so a full
        memory (the steady state) takes its slots from a block drawn ahead of time.
        """
        if self._size < self.capacity:
            return self.rng.integers(self._size, size=count)
        if self._block_position + count > len(self._slot_block):
            # A new array, not a refill: slots handed out earlier (batch.indices) stay valid.
            self._slot_block = self.rng.integers(self.capacity, size=max(SLOT_BLOCK, count))
            self._block_position = 0
        slots = self._slot_block[self._block_position:self._block_position + count]
        self._block_position += count
        return slots

    def gather(self, indices: np.ndarray, weights: np.ndarray) -> Batch:
        """One ``take`` per field (faster than fancy indexing for the 2-D observation arrays)."""
        return Batch(self.observations.take(indices, axis=0), self.actions.take(indices),
                     self.rewards.take(indices), self.next_observations.take(indices, axis=0),
                     self.terminated.take(indices), indices, weights)

    def _check_not_empty(self) -> None:
        if self._size == 0:
            raise ValueError("cannot sample from an empty replay memory")


class SumTree:
    """A binary tree whose leaves hold priorities and whose nodes hold the sums below them.

    Node 1 is the root, node ``i`` has children ``2i`` and ``2i + 1``, and leaf ``j`` is node
    ``leaves + j``. Updates recompute parents from their children (no running deltas), so the
    sums never drift, and both updates and searches walk all the batch's paths at once.
    """

    def __init__(self, capacity: int) -> None:
        self.leaves = 1 << max(capacity - 1, 0).bit_length()
        self.depth = self.leaves.bit_length() - 1
        self.nodes = np.zeros(2 * self.leaves, dtype=np.float64)

    @property
    def total(self) -> float:
        return float(self.nodes[1])

    def __getitem__(self, indices: np.ndarray) -> np.ndarray:
        return self.nodes[np.asarray(indices) + self.leaves]

    def update(self, indices: np.ndarray, priorities: np.ndarray) -> None:
        nodes = np.asarray(indices) + self.leaves
        self.nodes[nodes] = priorities
        for _ in range(self.depth):
            nodes = nodes // 2  # a repeated parent is written twice with the same sum
            self.nodes[nodes] = self.nodes[2 * nodes] + self.nodes[2 * nodes + 1]

    def find(self, prefix_sums: np.ndarray) -> np.ndarray:
        """For each value ``u`` in [0, total): the leaf where the running sum of priorities passes u."""
        remaining = np.array(prefix_sums, dtype=np.float64)
        nodes = np.ones(len(remaining), dtype=np.int64)
        for _ in range(self.depth):
            left = 2 * nodes
            go_right = remaining >= self.nodes[left]
            remaining = np.where(go_right, remaining - self.nodes[left], remaining)
            nodes = left + go_right
        return nodes - self.leaves


class PrioritizedReplayMemory(ReplayMemory):
    """Proportional prioritised replay: P(i) = p_i^alpha / sum_k p_k^alpha, p_i = |TD error| + offset.

    New transitions get the largest priority seen so far, so each is replayed at least about once.
    Sampling is stratified (one draw in each of ``batch_size`` equal slices of the total), and the
    importance-sampling weights (N * P(i))^-beta are divided by the batch's largest, so they only
    ever scale updates down.
    """

    def __init__(self, capacity: int, observation_shape: tuple[int, ...], *, alpha: float,
                 priority_offset: float, observation_dtype: np.dtype | type = np.float32,
                 rng: np.random.Generator | None = None) -> None:
        super().__init__(capacity, observation_shape, observation_dtype=observation_dtype, rng=rng)
        if alpha < 0 or priority_offset <= 0:
            raise ValueError(f"need alpha >= 0 and priority_offset > 0, got {alpha} and {priority_offset}")
        self.alpha = alpha
        self.priority_offset = priority_offset
        self.tree = SumTree(capacity)
        self.max_priority = 1.0

    def append(self, observation: np.ndarray, action: int, reward: float,
               next_observation: np.ndarray, terminated: bool) -> int:
        slot = super().append(observation, action, reward, next_observation, terminated)
        self.tree.update(np.array([slot]), np.array([self.max_priority ** self.alpha]))
        return slot

    def sample(self, batch_size: int, beta: float = 1.0) -> Batch:
        self._check_not_empty()
        total = self.tree.total
        slices = (np.arange(batch_size) + self.rng.random(batch_size)) * (total / batch_size)
        # Float rounding can put a draw at the very end of the last slice: keep it on a stored slot.
        indices = np.minimum(self.tree.find(slices), self._size - 1)
        probabilities = self.tree[indices] / total
        weights = (self._size * probabilities) ** -beta
        return self.gather(indices, (weights / weights.max()).astype(np.float32))

    def update_priorities(self, indices: np.ndarray, td_errors: np.ndarray) -> None:
        priorities = np.abs(np.asarray(td_errors, dtype=np.float64)) + self.priority_offset
        self.max_priority = max(self.max_priority, float(priorities.max()))
        self.tree.update(indices, priorities ** self.alpha)
