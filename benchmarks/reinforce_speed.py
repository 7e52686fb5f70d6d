"""REINFORCE on CartPole: the book's per-step tapes against the batched update, side by side.

    python -m benchmarks.reinforce_speed [--iterations 5]

Both loops run the same REINFORCE iterations (10 episodes of at most 200 steps, discount 0.95,
Adam 0.01) from the same weights and the same environment seeds, alternating iteration by
iteration so that load from other processes hits both alike. The book's loop plays one episode
after another and takes a gradient per step under its own tape; the batched loop plays the 10
episodes side by side and takes one gradient over all their steps (stages/policy_gradient/training.py).
Two starting points: fresh weights (short episodes) and the trained pg_cartpole policy of the
first training seed (episodes near the 200-step cap, the regime that dominates a full training
run); without it the benchmark stops and says which stage to run, rather than skip the case.
"""

from __future__ import annotations

import argparse
import time

import stages  # noqa: F401  (Keras 2 mode before TensorFlow loads)
import gymnasium as gym
import numpy as np
import tensorflow as tf
import tf_keras

from stages.core.optimizers import make_optimizer
from stages.policies.index import INDEX_DIR, load_index, load_model
from stages.policy_gradient.training import (
    batch_of,
    discount_and_normalize_rewards,
    make_train_step,
    play_episodes,
    policy_network,
    sampling_actor,
)

EPISODES, MAX_STEPS, DISCOUNT, LEARNING_RATE, ENV_ID = 10, 200, 0.95, 0.01, "CartPole-v1"


def book_iteration(env: gym.Env, model: tf_keras.Model, optimizer, seeds: list[int]) -> int:
    """One iteration as the book writes it: a tape and a gradient per step; returns steps played."""
    all_rewards, all_grads = [], []
    for seed in seeds:
        rewards, grads = [], []
        obs, _ = env.reset(seed=seed)
        for _ in range(MAX_STEPS):
            with tf.GradientTape() as tape:
                p_left = model(obs[np.newaxis])
                action = tf.random.uniform([1, 1]) > p_left
                target = tf.constant([[1.0]]) - tf.cast(action, tf.float32)
                loss = tf.reduce_mean(tf_keras.losses.binary_crossentropy(target, p_left))
            grads.append(tape.gradient(loss, model.trainable_variables))
            obs, reward, terminated, truncated, _ = env.step(int(action[0, 0].numpy()))
            rewards.append(reward)
            if terminated or truncated:
                break
        all_rewards.append(rewards)
        all_grads.append(grads)
    weights = discount_and_normalize_rewards(all_rewards, DISCOUNT)
    mean_grads = [tf.reduce_mean([w * all_grads[e][s][i] for e, ws in enumerate(weights)
                                  for s, w in enumerate(ws)], axis=0)
                  for i in range(len(model.trainable_variables))]
    optimizer.apply_gradients(zip(mean_grads, model.trainable_variables))
    return sum(len(r) for r in all_rewards)


def compare(start_weights: list[np.ndarray], iterations: int, label: str) -> None:
    models = []
    for _ in range(2):
        model = policy_network(4, [5], "elu", "p_left", 2)
        model.set_weights(start_weights)
        models.append(model)
    book_model, batched_model = models
    book_optimizer = make_optimizer("adam", LEARNING_RATE)
    train_step = make_train_step(batched_model, make_optimizer("adam", LEARNING_RATE), "p_left")
    act = sampling_actor(batched_model, "p_left", np.random.default_rng(0))
    book_env = gym.make(ENV_ID, max_episode_steps=MAX_STEPS)
    batched_envs = [gym.make(ENV_ID, max_episode_steps=MAX_STEPS) for _ in range(EPISODES)]

    # Compile the batched step and warm both loops up once before timing.
    episodes = play_episodes(batched_envs, act, list(range(EPISODES)))
    weights = discount_and_normalize_rewards([e.rewards for e in episodes], DISCOUNT)
    train_step(**batch_of(episodes, weights))
    batched_model.set_weights(start_weights)

    times = {"book": [], "batched": []}
    steps = {"book": 0, "batched": 0}
    for iteration in range(iterations):
        seeds = [1000 * iteration + i for i in range(EPISODES)]
        start = time.perf_counter()
        steps["book"] += book_iteration(book_env, book_model, book_optimizer, seeds)
        times["book"].append(time.perf_counter() - start)

        start = time.perf_counter()
        episodes = play_episodes(batched_envs, act, seeds)
        weights = discount_and_normalize_rewards([e.rewards for e in episodes], DISCOUNT)
        train_step(**batch_of(episodes, weights))
        times["batched"].append(time.perf_counter() - start)
        steps["batched"] += sum(len(e.rewards) for e in episodes)

    print(f"\n{label}: {iterations} iterations of {EPISODES} episodes each")
    print(f"{'loop':<10}{'s / iteration':>15}{'steps / iteration':>20}{'us / step':>12}")
    per_step = {}
    for loop in ("book", "batched"):
        per_iteration = float(np.mean(times[loop]))
        per_step[loop] = 1e6 * sum(times[loop]) / steps[loop]
        print(f"{loop:<10}{per_iteration:>15.4f}{steps[loop] / iterations:>20.1f}{per_step[loop]:>12.1f}")
    ratio_iteration = np.mean(times["book"]) / np.mean(times["batched"])
    print(f"batched is {ratio_iteration:.1f}x faster per iteration, "
          f"{per_step['book'] / per_step['batched']:.1f}x per environment step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5)
    args = parser.parse_args()
    tf.keras.utils.set_random_seed(42)
    compare(policy_network(4, [5], "elu", "p_left", 2).get_weights(), args.iterations,
            "fresh weights")
    trained = sorted((entry for entry in load_index(INDEX_DIR).values() if entry.algorithm == "pg_cartpole"),
                     key=lambda entry: entry.name)
    if not trained:
        raise SystemExit(f"no pg_cartpole policy in {INDEX_DIR}: run `dvc repro pg_cartpole@42` "
                         "(or snakemake) for the trained case")
    compare(load_model(trained[0]).get_weights(), args.iterations, f"trained weights ({trained[0].name})")


if __name__ == "__main__":
    main()
