"""What the actor-critic stages (A2C, PPO, SAC) share after training: the learning curve, the
exported greedy policy, its held-out assessment and GIF, and the stage's metrics.json."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from stages.policies.assessment import assess_policy, record_policy_gif
from stages.core.io import write_json
from stages.core.live_log import TrainingLive
from stages.core.plotting import new_figure, save_figure
from stages.core.timings import write_timings
from stages.policies.export import export_keras_policy
from stages.policies.index import INDEX_DIR, seeded_policy_name

STEP = "environment_steps"  # the training logs' step: comparable across algorithms


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def plot_returns(log: pd.DataFrame, path: str, title: str) -> None:
    """Mean return of recent training episodes against environment steps."""
    fig, ax = new_figure(figsize=(6, 4))
    ax.plot(log[STEP], log["mean_return"], label="mean return, last 20 training episodes")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("mean return")
    ax.set_title(title)
    ax.legend(loc="lower right")
    save_figure(fig, path)


def export_and_report(model: Any, cfg: Any, *, stage: str, algorithm: str, config: str, seed: int,
                      output: str, log: TrainingLive, details: dict[str, Any], data: str, reports: str,
                      title: str, n_actions: int | None = None) -> dict[str, Any]:
    """Export ``model`` (greedy) as ``<algorithm>_s<seed>`` in the index, assess it on the held-out
    seeds, record its GIF, plot the curve, write ``<reports>/metrics.json`` and the training's wall time
    (stages/core/timings.py); returns the metrics."""
    plot_returns(log.frame(), f"{reports}/learning_curve.png", title)
    extra = {} if n_actions is None else {"n_actions": n_actions}
    entry = export_keras_policy(
        model, INDEX_DIR / seeded_policy_name(algorithm, seed), stage=stage, algorithm=algorithm,
        seed=seed, env_id=cfg.env_id, output=output, training_max_steps=cfg.max_steps,
        training_seeds=tuple(cfg.training.env_seeds),
        details={**details, "config": config, "seed": seed, "training_log": f"{data}/dvclive"}, **extra)
    evaluation = assess_policy(entry, list(cfg.evaluation.seeds), cfg.max_steps)
    gif = record_policy_gif(entry, f"{reports}/policy.gif", cfg.gif.seed, cfg.max_steps, cfg.gif.fps)
    frame = log.frame()
    metrics = {
        "config": config,
        "seed": seed,
        "training": {
            "environment_steps": int(frame[STEP].iloc[-1]),
            # None while no training episode has ended (a short run on long episodes)
            "final_mean_return": _finite_or_none(frame["mean_return"].iloc[-1]),
            "mean_return_last_10_rows": _finite_or_none(log.mean_return_over_last(10)),
        },
        "evaluation": evaluation,
        "gif_episode": gif,
    }
    write_json(f"{reports}/metrics.json", metrics)
    write_timings(stage, {"training": {"wall_time_s": log.wall_time_s}})  # kept out of the results
    return metrics
