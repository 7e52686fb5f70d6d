"""CartPole steps per second: a book-style DQN loop against the pipeline's, side by side.

    python -m benchmarks.dqn_speed [--steps 500]

Both loops train the book's DQN (32-32 ELU network, Adam 1e-2, MSE, discount 0.95, batch 32) with
a fixed epsilon and one gradient step after every environment step, on the same seeded
environment, for exactly ``--steps`` steps each after a short untimed warm-up.

- book style: ``model.predict`` for each greedy action, a deque of transition tuples, batches
  restacked from the tuples, targets from ``model.predict`` in NumPy, an eager gradient step;
- pipeline: ``play_episode`` of the dqn stage (stages/dqn/__main__.py) with the compiled learner and the ring buffer.
"""

from __future__ import annotations

import argparse
import time
from collections import deque

import stages  # noqa: F401, I001  (first: selects Keras 2 before TensorFlow is imported)

import gymnasium as gym
import numpy as np
import tensorflow as tf
import tf_keras

from stages.dqn.deep_q import DeepQLearner, build_q_network
from stages.replay import ReplayMemory
from stages.dqn.__main__ import play_episode

ENV_ID = "CartPole-v1"
EPSILON = 0.1
BATCH_SIZE = 32
DISCOUNT = 0.95
LEARNING_RATE = 1e-2
WARMUP_STEPS = 50


class StepBudget(gym.Wrapper):
    """Truncates the running episode once ``steps`` steps have been taken in total."""

    def __init__(self, env: gym.Env, steps: int) -> None:
        super().__init__(env)
        self.remaining = steps

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        self.remaining -= 1
        return observation, reward, terminated, truncated or self.remaining <= 0, info


def fresh_network(seed: int) -> tf_keras.Model:
    tf_keras.backend.clear_session()
    tf.keras.utils.set_random_seed(seed)
    return build_q_network(4, 2, [32, 32], activation="elu", dueling=False)


def book_style_steps(steps: int, seed: int) -> int:
    """The notebook's way, with learning at every step: returns the steps actually played."""
    model = fresh_network(seed)
    optimizer = tf_keras.optimizers.Adam(learning_rate=LEARNING_RATE)
    memory: deque = deque(maxlen=2000)
    rng = np.random.default_rng(seed)
    env = StepBudget(gym.make(ENV_ID, max_episode_steps=200), steps)
    observation, _ = env.reset(seed=seed)
    while env.remaining > 0:
        if rng.random() < EPSILON:
            action = int(rng.integers(2))
        else:
            action = int(np.argmax(model.predict(observation[np.newaxis], verbose=0)[0]))
        next_observation, reward, terminated, truncated, _ = env.step(action)
        memory.append((observation, action, reward, next_observation, terminated))
        observation = env.reset()[0] if terminated or truncated else next_observation

        batch = [memory[i] for i in rng.integers(len(memory), size=BATCH_SIZE)]
        states, actions, rewards, next_states, dones = (
            np.array([transition[field] for transition in batch]) for field in range(5))
        next_q = model.predict(next_states, verbose=0)
        targets = rewards + (1.0 - dones) * DISCOUNT * next_q.max(axis=1)
        with tf.GradientTape() as tape:
            q_taken = tf.reduce_sum(model(states) * tf.one_hot(actions, 2), axis=1)
            loss = tf.reduce_mean(tf.square(targets - q_taken))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                      model.trainable_variables))
    return steps


def pipeline_steps(steps: int, seed: int) -> int:
    """The stage's own episode loop, compiled learner and ring buffer."""
    learner = DeepQLearner(fresh_network(seed), optimizer="adam", learning_rate=LEARNING_RATE, loss="mse",
                           discount=DISCOUNT, target_network=False, double=False)
    rng = np.random.default_rng(seed)
    memory = ReplayMemory(2000, (4,), rng=rng)
    env = StepBudget(gym.make(ENV_ID, max_episode_steps=200), steps)
    episode_seed = seed
    while env.remaining > 0:
        play_episode(env, learner, memory, rng, epsilon=EPSILON, learn=True, batch_size=BATCH_SIZE,
                     beta=1.0, seed=episode_seed)
        episode_seed = None
    return steps


def steps_per_second(loop, steps: int, seed: int) -> float:
    loop(WARMUP_STEPS, seed)  # tracing, compilation and first-call costs stay out of the timing
    start = time.perf_counter()
    played = loop(steps, seed)
    return played / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="CartPole steps timed per loop")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    book = steps_per_second(book_style_steps, args.steps, args.seed)
    ours = steps_per_second(pipeline_steps, args.steps, args.seed)
    print(f"{args.steps} CartPole steps each, a gradient step after every step, epsilon {EPSILON}:")
    print(f"  book style (predict per step, deque): {book:8.1f} steps/s")
    print(f"  pipeline (compiled calls, ring):      {ours:8.1f} steps/s")
    print(f"  ratio: {ours / book:.1f}x")


if __name__ == "__main__":
    main()
