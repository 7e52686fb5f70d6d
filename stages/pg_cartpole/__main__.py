"""REINFORCE on CartPole with the book's settings.

Each iteration plays a batch of episodes with the current policy, weights every step's
cross-entropy toward the action it took by the step's discounted return (standardised over the
whole batch), and makes one update. The episodes are played side by side and the update is one
batched gradient (stages/policy_gradient/training.py), the same update as the book's per-step
tapes; benchmarks/reinforce_speed.py measures the difference in time.

``python -m stages.pg_cartpole --seed S`` trains with training seed S (dvc.yaml: one run per
seed of params.yaml's ``seeds``); the policy is ``pg_cartpole_s<S>``. The training history is
DVCLive's, in ``data/pg_cartpole/s<S>/dvclive``, one step per iteration (``mean_return``, ``loss``).
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
from stages.pg_cartpole import settings

NAME = "pg_cartpole"


def main() -> None:
    cfg = settings(sys.argv[1:], Params.load())
    training, seed = cfg.training, cfg.training.seed
    data, reports = f"data/{NAME}/s{seed}", f"reports/{NAME}/s{seed}"
    book_final_mean_return = book_value(NAME)  # the book's last iteration (of at most 200)
    rng = seed_everything(seed)

    model, log = train_reinforce(cfg, "p_left", rng, desc="REINFORCE on CartPole",
                                 log_folder=f"{data}/dvclive")
    plot_learning_curve(log.frame(), f"{reports}/learning_curve.png",
                        f"REINFORCE on {cfg.env_id}: {training.episodes_per_iteration} episodes per iteration",
                        reference={"book, last iteration": book_final_mean_return,
                                   "step cap": cfg.max_steps})

    entry = export_keras_policy(
        model, INDEX_DIR / seeded_policy_name(NAME, seed), stage=f"{NAME}@{seed}",
        algorithm=NAME, seed=seed, env_id=cfg.env_id, output="p_left",
        training_max_steps=cfg.max_steps, training_seeds=tuple(training.env_seeds),
        details={"algorithm": "REINFORCE", "iterations": training.iterations,
                 "episodes_per_iteration": training.episodes_per_iteration, "discount": training.discount,
                 "training_log": f"{data}/dvclive"})
    evaluation = assess_policy(entry, list(cfg.evaluation.seeds), cfg.max_steps)
    gif = record_policy_gif(entry, f"{reports}/policy.gif", cfg.gif.seed, cfg.max_steps, cfg.gif.fps)

    write_json(f"{reports}/metrics.json", {
        "seed": seed,
        "training": {
            "iterations": training.iterations,
            "final_mean_return": float(log.frame()["mean_return"].iloc[-1]),
            "mean_return_last_10_iterations": log.mean_return_over_last(10),
            "book_final_mean_return": book_final_mean_return,
        },
        "evaluation": evaluation,
        "gif_episode": gif,
    })
    write_timings(f"{NAME}@{seed}", {"training": {"wall_time_s": log.wall_time_s}})
    print(f"REINFORCE on CartPole: last 10 iterations {log.mean_return_over_last(10):.1f}; "
          f"held-out greedy {evaluation['greedy']['mean']:.1f} +- {evaluation['greedy']['std']:.1f}, "
          f"sampled {evaluation['sampled']['mean']:.1f} +- {evaluation['sampled']['std']:.1f}")


if __name__ == "__main__":
    run_stage(main)
