"""Replay memories: the ring buffer, the sum tree and prioritised sampling; the book's memories."""

from collections import deque

import numpy as np
import pytest

from stages.replay import PrioritizedReplayMemory, ReplayMemory, SumTree
from stages.replay_benchmark.__main__ import RotatingList, stack_fields, synthetic_transitions


def fill(memory: ReplayMemory, count: int) -> None:
    """Transition i has observation [i, i, i, i], action i % 2, reward i, next observation i + 1."""
    for i in range(count):
        memory.append(np.full(4, i, np.float32), i % 2, float(i), np.full(4, i + 1, np.float32), i % 7 == 0)


def test_ring_overwrites_the_oldest_and_keeps_fields_together():
    memory = ReplayMemory(5, (4,), rng=np.random.default_rng(0))
    fill(memory, 8)
    assert len(memory) == 5
    assert sorted(memory.rewards.tolist()) == [3, 4, 5, 6, 7]  # 0, 1, 2 were overwritten
    batch = memory.sample(200)
    assert set(batch.rewards.tolist()) == {3, 4, 5, 6, 7}
    np.testing.assert_array_equal(batch.observations[:, 0], batch.rewards)
    np.testing.assert_array_equal(batch.next_observations[:, 0], batch.rewards + 1)
    np.testing.assert_array_equal(batch.actions, batch.rewards.astype(int) % 2)
    np.testing.assert_array_equal(batch.terminated, (batch.rewards.astype(int) % 7 == 0).astype(np.float32))
    assert batch.weights.tolist() == [1.0] * 200


def test_sampling_before_the_ring_is_full_uses_stored_slots_only():
    memory = ReplayMemory(100, (4,), rng=np.random.default_rng(1))
    fill(memory, 3)
    assert set(memory.sample(100).indices.tolist()) == {0, 1, 2}
    with pytest.raises(ValueError, match="empty"):
        ReplayMemory(4, (4,)).sample(1)


@pytest.mark.parametrize("capacity", [1, 5, 8, 13])
def test_sum_tree_finds_what_a_cumulative_sum_finds(capacity):
    rng = np.random.default_rng(capacity)
    tree = SumTree(capacity)
    priorities = rng.uniform(0.1, 2.0, size=capacity)
    tree.update(np.arange(capacity), priorities)
    # A repeated index in one update: the last value wins, and the sums stay exact.
    tree.update(np.array([0, 0]), np.array([5.0, 0.5]))
    priorities[0] = 0.5
    assert tree.total == pytest.approx(priorities.sum())
    draws = rng.uniform(0, priorities.sum(), size=1000)
    expected = np.searchsorted(np.cumsum(priorities), draws, side="right")
    np.testing.assert_array_equal(tree.find(draws), expected)
    np.testing.assert_array_equal(tree[np.arange(capacity)], priorities)


def test_prioritized_sampling_follows_priorities_and_weights_correct_for_it():
    memory = PrioritizedReplayMemory(4, (4,), alpha=0.5, priority_offset=1e-6, rng=np.random.default_rng(2))
    fill(memory, 4)
    td_errors = np.array([1.0, 4.0, 9.0, 16.0])
    memory.update_priorities(np.arange(4), td_errors)
    expected = np.sqrt(td_errors + 1e-6) / np.sqrt(td_errors + 1e-6).sum()
    counts = np.zeros(4)
    for _ in range(2000):
        batch = memory.sample(8, beta=0.7)
        counts += np.bincount(batch.indices, minlength=4)
    np.testing.assert_allclose(counts / counts.sum(), expected, atol=0.01)
    # Weights (N * P(i)) ** -beta, divided by the batch's largest.
    raw = (4 * expected[batch.indices]) ** -0.7
    np.testing.assert_allclose(batch.weights, raw / raw.max(), rtol=1e-5)


def test_new_transitions_get_the_largest_priority_seen():
    memory = PrioritizedReplayMemory(8, (4,), alpha=1.0, priority_offset=0.01, rng=np.random.default_rng(3))
    fill(memory, 2)
    memory.update_priorities(np.array([0, 1]), np.array([3.0, 0.5]))
    fill(memory, 1)  # slot 2
    assert memory.tree[np.array([2])][0] == pytest.approx(3.01)
    assert memory.max_priority == pytest.approx(3.01)


def test_uniform_priorities_give_unit_weights():
    memory = PrioritizedReplayMemory(16, (4,), alpha=0.6, priority_offset=0.1, rng=np.random.default_rng(4))
    fill(memory, 16)
    np.testing.assert_allclose(memory.sample(32, beta=1.0).weights, 1.0)


def test_the_books_memories_hold_the_same_transitions():
    rng = np.random.default_rng(5)
    transitions = synthetic_transitions(50, rng)
    assert transitions[0][3] is transitions[1][0]  # consecutive steps share the observation object
    rotating = RotatingList(20, rng)
    for transition in transitions:
        rotating.append(transition)
    assert rotating.size == 20 and rotating.index == 10
    kept = {id(t) for t in deque(transitions, maxlen=20)}
    assert {id(t) for t in rotating.sample(100)} <= kept
    observations, actions, rewards, next_observations, terminated = stack_fields(transitions[:3])
    assert observations.shape == (3, 4) and next_observations.shape == (3, 4)
    assert actions.shape == rewards.shape == terminated.shape == (3,)



def test_a_full_memory_samples_uniformly_from_blocks_drawn_ahead():
    memory = ReplayMemory(10, (4,), rng=np.random.default_rng(6))
    fill(memory, 10)
    batches = [memory.sample(7) for _ in range(3000)]  # several blocks of 4096 slots
    counts = np.bincount(np.concatenate([b.indices for b in batches]), minlength=10)
    np.testing.assert_allclose(counts / counts.sum(), 0.1, atol=0.01)
    first = batches[0]
    np.testing.assert_array_equal(first.rewards, memory.rewards[first.indices])  # still valid
    assert memory.sample(5000).indices.shape == (5000,)  # larger than a block
