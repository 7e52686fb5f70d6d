"""SPEC 11 (exercise 8): REINFORCE on LunarLander, once per configuration of params.yaml.

``python -m stages.pg_lunarlander <config>`` trains the configuration ``pg_lunarlander.<config>``:
``book`` is the book's solution (200 iterations of 16 episodes, Nadam 0.005), which ends near a
mean return of 134; ``solve`` takes up the exercise's challenge of passing 200, the
environment's "solved" level, with the same algorithm given more and larger batches. dvc.yaml
declares the stage once and instantiates it per configuration (``foreach``).
"""

from __future__ import annotations

import sys

import tensorflow as tf  # noqa: F401  (imported before seeding, so TensorFlow is seeded too)

from stages.common.assessment import assess_policy, record_policy_gif
from stages.common.book import book_value
from stages.common.io import write_json
from stages.common.params import ParamError
from stages.common.policies import INDEX_DIR, export_keras_policy
from stages.common.policy_gradients import train_reinforce, training_env_seeds
from stages.common.seeding import seed_everything
from stages.common.training_log import plot_learning_curve
from stages.settings import load_params, run_stage

NAME = "pg_lunarlander"


def main() -> None:
    configs = load_params(NAME)
    config = sys.argv[1] if len(sys.argv) == 2 else None
    if config not in vars(configs):
        raise ParamError(f"usage: python -m stages.{NAME} <config>, config one of "
                         f"{', '.join(vars(configs))} (sections of {NAME} in params.yaml)")
    cfg = getattr(configs, config)
    book_final_mean_return = book_value("pg_lunarlander_book")  # the book's last iteration
    solved = float(book_value("pg_lunarlander_solve"))  # LunarLander's "solved" level
    policy_name, reports = f"{NAME}_{config}", f"reports/{NAME}/{config}"
    rng = seed_everything(cfg.seed)

    model, log = train_reinforce(cfg, "action_probabilities", rng,
                                 desc=f"REINFORCE on LunarLander ({config})")
    log.write(f"data/{NAME}/{config}/training_log.csv")
    plot_learning_curve(log.frame(), f"{reports}/learning_curve.png",
                        f"REINFORCE on {cfg.env_id} ({config}): "
                        f"{cfg.episodes_per_iteration} episodes per iteration",
                        reference={"book, last iteration": book_final_mean_return, "solved": solved})

    entry = export_keras_policy(
        model, INDEX_DIR / policy_name, stage=f"{NAME}@{config}", env_id=cfg.env_id,
        output="action_probabilities", training_max_steps=cfg.max_steps,
        training_seeds=tuple(training_env_seeds(cfg)),
        details={"algorithm": "REINFORCE", "config": config, "seed": cfg.seed,
                 "iterations": cfg.iterations, "episodes_per_iteration": cfg.episodes_per_iteration,
                 "discount": cfg.discount, "entropy_coefficient": cfg.entropy_coefficient})
    eval_seeds = list(range(cfg.eval_seed_start, cfg.eval_seed_start + cfg.eval_episodes))
    evaluation = assess_policy(entry, eval_seeds, cfg.max_steps)
    gif = record_policy_gif(entry, f"{reports}/policy.gif", cfg.gif_seed, cfg.max_steps, cfg.gif_fps)

    write_json(f"{reports}/metrics.json", {
        "config": config,
        "training": {
            "iterations": cfg.iterations,
            "episodes_per_iteration": cfg.episodes_per_iteration,
            "final_mean_return": float(log.frame()["mean_return"].iloc[-1]),
            "mean_return_last_10_iterations": log.mean_return_over_last(10),
            "book_final_mean_return": book_final_mean_return,
            "wall_time_s": log.wall_time_s,
        },
        "evaluation": evaluation,
        "solved_level": solved,
        "gif_episode": gif,
    })
    print(f"REINFORCE on LunarLander ({config}): last iteration "
          f"{log.frame()['mean_return'].iloc[-1]:.1f}, last 10 {log.mean_return_over_last(10):.1f}; "
          f"held-out greedy {evaluation['greedy']['mean']:.1f} +- {evaluation['greedy']['std']:.1f}, "
          f"sampled {evaluation['sampled']['mean']:.1f} +- {evaluation['sampled']['std']:.1f}")


if __name__ == "__main__":
    run_stage(main)
