"""Atari training-step time in float32 against mixed bfloat16, at batch 32 and 64, side by side.

    python -m benchmarks.atari_precision [--rounds 5] [--steps 20]

Each configuration is the Atari stage's own agent (stages/atari_dqn: build_agent,
training_batch) on Breakout, from a replay buffer filled with random play: the book's recipe
(TF-Agents' QNetwork and DqnAgent, RMSprop, pairs of steps) in float32, and the data-efficient
recipe (dueling Nature network, double DQN, 10-step targets, Adam, random shifts) in float32 and
in mixed_bfloat16. The configurations take turns, ``--steps`` compiled training steps each per
round, so a machine whose load changes affects all alike; the table gives each one's median
milliseconds per step over the rounds and, per round, the bfloat16 / float32 ratio's median.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import stages  # noqa: F401, I001  (first: selects Keras 2 before TensorFlow is imported)

import tensorflow as tf
from tf_agents.environments.tf_py_environment import TFPyEnvironment
from tf_agents.replay_buffers.tf_uniform_replay_buffer import TFUniformReplayBuffer
from tf_agents.utils import common

from pi.policy_contract import make_atari_env
from stages.atari_dqn import settings
from stages.atari_dqn.agent import build_agent, cpu_flags, select_precision
from stages.atari_dqn.__main__ import (
    augmentation_rng,
    collect_randomly,
    describe_preprocessing,
    training_batch,
)
from stages.core.settings import Params
from stages.tf_agents_kit.environment import GymnasiumPyEnvironment

DRQ = {
    "network": {"dueling": True},
    "agent": {"double": True, "n_step_update": 10, "learning_rate": 1.0e-4, "adam": {"epsilon": 1.5e-4},
              "epsilon_decay_env_steps": 5000, "target_update_period": 1},
    "training": {"collect_steps_per_iteration": 1, "initial_collect_steps": 1600},
    "augmentation": {"pad": 4},
}


def configuration(recipe: dict | None, batch_size: int, precision: str):
    """The run's settings (the book's or DrQ's changes, with this batch size and precision)."""
    data = copy.deepcopy(Params.load().data)
    changes = copy.deepcopy(recipe or {})
    changes.setdefault("training", {})["batch_size"] = batch_size
    changes.setdefault("network", {})["precision"] = precision
    data["atari_dqn"]["recipes"] = {"bench": changes}
    return settings(["--game", "breakout", "--recipe", "bench"], Params(data))


class Trainer:
    def __init__(self, cfg, precision: str, buffer_steps: int) -> None:
        preprocessing = describe_preprocessing(cfg)
        self.tf_env = TFPyEnvironment(GymnasiumPyEnvironment(make_atari_env(cfg.game.env_id, preprocessing),
                                                             seed=cfg.training.seed))
        self.agent, _ = build_agent(self.tf_env, cfg, precision)
        self.buffer = TFUniformReplayBuffer(self.agent.collect_data_spec, batch_size=1,
                                            max_length=buffer_steps)
        collect_randomly(self.tf_env, self.buffer, buffer_steps)
        rng = augmentation_rng(cfg)
        self.step = common.function(lambda: self.agent.train(training_batch(self.buffer, cfg, rng)).loss)
        for _ in range(3):  # trace and warm up
            self.step()

    def seconds_per_step(self, steps: int) -> float:
        started = time.perf_counter()
        for _ in range(steps):
            loss = self.step()
        loss.numpy()
        return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--buffer-steps", type=int, default=400)
    args = parser.parse_args()
    bf16, why = select_precision("mixed_bfloat16", cpu_flags())
    print(why)
    tf.random.set_seed(0)
    trainers = {}
    for batch in (32, 64):
        trainers[("book", batch, "float32")] = Trainer(configuration(None, batch, "float32"), "float32",
                                                       args.buffer_steps)
        for precision in dict.fromkeys(("float32", bf16)):
            trainers[("drq", batch, precision)] = Trainer(configuration(DRQ, batch, precision), precision,
                                                          args.buffer_steps)
    times: dict = {key: [] for key in trainers}
    for round_ in range(args.rounds):
        for key, trainer in trainers.items():
            times[key].append(trainer.seconds_per_step(args.steps))
        print(f"round {round_ + 1}: " + ", ".join(f"{'/'.join(map(str, k))} {t[-1] * 1e3:.1f} ms"
                                                   for k, t in times.items()))
    print("\nrecipe  batch  precision       ms/step (median over rounds)")
    for (recipe, batch, precision), values in times.items():
        print(f"{recipe:6s}  {batch:5d}  {precision:14s}  {statistics.median(values) * 1e3:7.1f}")
    if bf16 != "float32":
        for batch in (32, 64):
            ratios = [b / f for b, f in zip(times[("drq", batch, bf16)], times[("drq", batch, "float32")])]
            print(f"batch {batch}: bfloat16 / float32 = {statistics.median(ratios):.2f} "
                  f"(per round: {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
