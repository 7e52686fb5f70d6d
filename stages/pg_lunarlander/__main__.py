"""REINFORCE on LunarLander, once per configuration and training seed.

    python -m stages.pg_lunarlander --config solve --seed 0

``pg_lunarlander.<config>`` in params.yaml is one configuration: ``book`` is the book's solution
(200 iterations of 16 episodes, Nadam 0.005), which ends near a mean return of 134; ``solve``
takes up the exercise's challenge of passing 200, the environment's "solved" level, with the same
algorithm given more and larger batches. dvc.yaml runs every configuration for every training
seed of params.yaml's ``seeds``; the policy is ``pg_lunarlander_<config>_s<seed>`` and the
outputs go under ``.../<config>/s<seed>/``. The training history is DVCLive's, in
``data/pg_lunarlander/<config>/s<seed>/dvclive``, one step per iteration (``mean_return``, ``loss``).
"""

from __future__ import annotations

import sys

import tensorflow as tf  # noqa: F401  (imported before seeding, so TensorFlow is seeded too)

from stages.policies.assessment import assess_policy, record_policy_gif
from stages.core.book import book_value
from stages.core.io import write_json
from stages.core.plotting import plot_learning_curve
from stages.policies.export import export_keras_policy
from stages.policies.index import INDEX_DIR, seeded_policy_name
from stages.policy_gradient.training import train_reinforce
from stages.core.seeding import seed_everything
from stages.core.settings import Params, run_stage
from stages.core.timings import write_timings
from stages.pg_lunarlander import settings

NAME = "pg_lunarlander"


def main() -> None:
    cfg = settings(sys.argv[1:], Params.load())
    config, training, seed = cfg.config, cfg.training, cfg.training.seed
    algorithm = f"{NAME}_{config}"
    data, reports = f"data/{NAME}/{config}/s{seed}", f"reports/{NAME}/{config}/s{seed}"
    book_final_mean_return = book_value("pg_lunarlander@book")  # the book's last iteration
    solved = float(book_value("pg_lunarlander@solve"))  # LunarLander's "solved" level
    rng = seed_everything(seed)

    model, log = train_reinforce(cfg, "action_probabilities", rng,
                                 desc=f"REINFORCE on LunarLander ({config})", log_folder=f"{data}/dvclive")
    plot_learning_curve(log.frame(), f"{reports}/learning_curve.png",
                        f"REINFORCE on {cfg.env_id} ({config}): "
                        f"{training.episodes_per_iteration} episodes per iteration",
                        reference={"book, last iteration": book_final_mean_return, "solved": solved})

    entry = export_keras_policy(
        model, INDEX_DIR / seeded_policy_name(algorithm, seed), stage=f"{NAME}@{config}-{seed}",
        algorithm=algorithm, seed=seed, env_id=cfg.env_id,
        output="action_probabilities", training_max_steps=cfg.max_steps,
        training_seeds=tuple(training.env_seeds),
        details={"algorithm": "REINFORCE", "config": config, "seed": seed,
                 "iterations": training.iterations,
                 "episodes_per_iteration": training.episodes_per_iteration,
                 "discount": training.discount, "entropy_coefficient": training.entropy_coefficient,
                 "training_log": f"{data}/dvclive"})
    evaluation = assess_policy(entry, list(cfg.evaluation.seeds), cfg.max_steps)
    gif = record_policy_gif(entry, f"{reports}/policy.gif", cfg.gif.seed, cfg.max_steps, cfg.gif.fps)

    write_json(f"{reports}/metrics.json", {
        "config": config,
        "seed": seed,
        "training": {
            "iterations": training.iterations,
            "episodes_per_iteration": training.episodes_per_iteration,
            "final_mean_return": float(log.frame()["mean_return"].iloc[-1]),
            "mean_return_last_10_iterations": log.mean_return_over_last(10),
            "book_final_mean_return": book_final_mean_return,
        },
        "evaluation": evaluation,
        "solved_level": solved,
        "gif_episode": gif,
    })
    write_timings(f"{NAME}@{config}-{seed}", {"training": {"wall_time_s": log.wall_time_s}})
    print(f"REINFORCE on LunarLander ({config}): last iteration "
          f"{log.frame()['mean_return'].iloc[-1]:.1f}, last 10 {log.mean_return_over_last(10):.1f}; "
          f"held-out greedy {evaluation['greedy']['mean']:.1f} +- {evaluation['greedy']['std']:.1f}, "
          f"sampled {evaluation['sampled']['mean']:.1f} +- {evaluation['sampled']['std']:.1f}")


if __name__ == "__main__":
    run_stage(main)
