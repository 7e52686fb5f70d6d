"""SPEC 11 (exercise 8): REINFORCE on LunarLander, once per configuration of params.yaml.

``python -m stages.pg_lunarlander <config>`` trains the configuration ``pg_lunarlander.<config>``:
``book`` is the book's solution (200 iterations of 16 episodes, Nadam 0.005), which ends near a
mean return of 134; ``solve`` takes up the exercise's challenge of passing 200, the
environment's "solved" level, with the same algorithm given more and larger batches.

``solve`` runs once per training seed of params.yaml's ``seeds`` (``python -m
stages.pg_lunarlander solve --seed S``; policy ``pg_lunarlander_solve_s<S>``, outputs under
``.../solve/s<S>/``); ``book`` is the book's single run. dvc.yaml declares each once.
"""

from __future__ import annotations

import argparse
import sys

import tensorflow as tf  # noqa: F401  (imported before seeding, so TensorFlow is seeded too)

from stages.common.assessment import assess_policy, record_policy_gif
from stages.common.book import book_value
from stages.common.io import write_json
from stages.common.params import ParamError
from stages.common.policies import INDEX_DIR, export_keras_policy, seeded_policy_name
from stages.common.policy_gradients import train_reinforce, training_env_seeds
from stages.common.seeding import seed_everything
from stages.common.training_log import plot_learning_curve
from stages.settings import PER_SEED_SECTIONS, for_training_seed, load_params, run_stage

NAME = "pg_lunarlander"


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help=f"a configuration: a sub-section of {NAME} in params.yaml")
    parser.add_argument("--seed", type=int, default=None,
                        help="training seed of a per-seed configuration (default: its own seed)")
    return parser.parse_args(argv)


def main() -> None:
    configs = load_params(NAME)
    args = parse_arguments(sys.argv[1:])
    config = args.config
    if config not in vars(configs):
        raise ParamError(f"usage: python -m stages.{NAME} <config>, config one of "
                         f"{', '.join(vars(configs))} (sections of {NAME} in params.yaml)")
    cfg, section_name = getattr(configs, config), f"{NAME}.{config}"
    policy_name, data, reports = f"{NAME}_{config}", f"data/{NAME}/{config}", f"reports/{NAME}/{config}"
    stage, per_seed = f"{NAME}@{config}", {}
    if section_name in PER_SEED_SECTIONS:
        cfg = for_training_seed(cfg, section_name, cfg.seed if args.seed is None else args.seed)
        policy_name = seeded_policy_name(policy_name, cfg.seed)
        data, reports = f"{data}/s{cfg.seed}", f"{reports}/s{cfg.seed}"
        stage, per_seed = f"{NAME}_{config}@{cfg.seed}", {"algorithm": f"{NAME}_{config}", "seed": cfg.seed}
    elif args.seed is not None:
        raise ParamError(f"{section_name} is a single run (not in seeds' per-seed stages): "
                         f"its seed is {section_name}.seed, not --seed")
    book_final_mean_return = book_value("pg_lunarlander_book")  # the book's last iteration
    solved = float(book_value("pg_lunarlander_solve"))  # LunarLander's "solved" level
    rng = seed_everything(cfg.seed)

    model, log = train_reinforce(cfg, "action_probabilities", rng,
                                 desc=f"REINFORCE on LunarLander ({config})")
    log.write(f"{data}/training_log.csv")
    plot_learning_curve(log.frame(), f"{reports}/learning_curve.png",
                        f"REINFORCE on {cfg.env_id} ({config}): "
                        f"{cfg.episodes_per_iteration} episodes per iteration",
                        reference={"book, last iteration": book_final_mean_return, "solved": solved})

    entry = export_keras_policy(
        model, INDEX_DIR / policy_name, stage=stage, **per_seed, env_id=cfg.env_id,
        output="action_probabilities", training_max_steps=cfg.max_steps,
        training_seeds=tuple(training_env_seeds(cfg)),
        details={"algorithm": "REINFORCE", "config": config, "seed": cfg.seed,
                 "iterations": cfg.iterations, "episodes_per_iteration": cfg.episodes_per_iteration,
                 "discount": cfg.discount, "entropy_coefficient": cfg.entropy_coefficient,
                 "training_log": f"{data}/training_log.csv"})
    eval_seeds = list(range(cfg.eval_seed_start, cfg.eval_seed_start + cfg.eval_episodes))
    evaluation = assess_policy(entry, eval_seeds, cfg.max_steps)
    gif = record_policy_gif(entry, f"{reports}/policy.gif", cfg.gif_seed, cfg.max_steps, cfg.gif_fps)

    write_json(f"{reports}/metrics.json", {
        "config": config,
        "seed": cfg.seed,
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
