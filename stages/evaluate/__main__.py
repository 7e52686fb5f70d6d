"""Held-out evaluation of every exported policy, all of them alike.

Every policy in the index (``data/policies``) is loaded from its exported artifact and played
greedily (its documented action rule without sampling: most likely action, or highest Q-value),
one episode per seed, on seeds no training stage uses (checked before any job by the Snakefile, and again
here against the seeds each policy records). CartPole policies are played at each step cap of
``cartpole_max_steps`` (the book's 200 and CartPole-v1's own 500); others to their environment's
own limit; Atari policies, slow to play, for fewer episodes. The episodes of one policy run side by
side with one batched policy call per step (stages/common/evaluation.py).

Outputs: every episode's return (returns.csv), and per policy and step cap the mean, spread,
median, interquartile mean and a 95% bootstrap interval of the mean (summary.csv, metrics.json),
and a figure of the means with their intervals.
"""

from __future__ import annotations

import sys
import time
from functools import partial

import gymnasium as gym
import numpy as np
import pandas as pd
from tqdm import tqdm

from stages.common.dag import declared_policies
from stages.common.evaluation import evaluate_policy
from stages.common.io import write_csv, write_json
from stages.common.plotting import new_figure, save_figure
from stages.common.policies import INDEX_DIR, PolicyEntry, load_index, load_policy, make_policy_env
from stages.common.seeding import seed_everything
from stages.common.settings import InputError, ParamError, Params, run_stage
from stages.common.statistics import summarize_returns
from stages.common.timings import write_timings
from stages.evaluate import Settings, settings

NAME = "evaluate"
REPORTS = f"reports/{NAME}"
SUMMARY_COLUMNS = ["policy", "algorithm", "seed", "env_id", "max_steps", "episodes", "mean", "std",
                   "min", "max", "median", "iqm", "ci95_low", "ci95_high"]


def is_atari(entry: PolicyEntry) -> bool:
    return entry.preprocessing.get("kind") == "atari"


def algorithm_of(entry: PolicyEntry) -> str:
    """The training algorithm's name; per-seed policies (``dqn_s0``) carry it, others are named by it."""
    return getattr(entry, "algorithm", None) or entry.name


def step_caps(entry: PolicyEntry, cfg: Settings) -> list[int]:
    """The step limits to evaluate at: CartPole's two caps, Atari's, or the environment's own."""
    if entry.env_id.startswith("CartPole-"):
        return list(cfg.cartpole_max_steps)
    if is_atari(entry):
        return [cfg.atari.max_steps]
    own_limit = gym.spec(entry.env_id).max_episode_steps
    if own_limit is None:
        raise InputError(f"policy {entry.name!r}: {entry.env_id} has no step limit of its own")
    return [own_limit]


def check_held_out(entries: dict[str, PolicyEntry], seeds: range) -> None:
    """No policy may be evaluated on a seed it was trained on."""
    for entry in entries.values():
        shared = sorted(set(entry.training_seeds) & set(seeds))
        if shared:
            raise ParamError(f"evaluate.seed_start = {seeds.start}: evaluation seeds {seeds.start}.."
                             f"{seeds.stop - 1} include seeds policy {entry.name!r} was trained on "
                             f"({shared[:5]}); choose a range above every training seed")


def evaluate_entry(entry: PolicyEntry, seeds: list[int], max_steps: int) -> tuple[np.ndarray, float]:
    """Greedy returns of one exported policy, one episode per seed, and the seconds it took."""
    policy = load_policy(entry)
    play = (dict(make_env=partial(make_policy_env, entry)) if entry.preprocessing
            else dict(env_kwargs=entry.env_kwargs))
    start = time.perf_counter()
    result = evaluate_policy(entry.env_id, policy, seeds, max_steps=max_steps, batch_size=len(seeds),
                             progress=False, **play)
    return result.returns, time.perf_counter() - start


def plot_intervals(summary: pd.DataFrame, path: str) -> None:
    """Each policy's mean return with its 95% interval, one panel per environment."""
    envs = list(dict.fromkeys(summary["env_id"]))
    heights = [max(2.0, 0.45 * (summary["env_id"] == env).sum() + 1.0) for env in envs]
    fig, axes = new_figure(len(envs), 1, figsize=(7, sum(heights)), squeeze=False,
                           gridspec_kw={"height_ratios": heights})
    for ax, env in zip(axes[:, 0], envs):
        rows = summary[summary["env_id"] == env].iloc[::-1]
        labels = [f"{p} ({m} steps)" for p, m in zip(rows["policy"], rows["max_steps"])]
        y = np.arange(len(rows))
        errors = np.vstack([rows["mean"] - rows["ci95_low"], rows["ci95_high"] - rows["mean"]])
        ax.errorbar(rows["mean"], y, xerr=errors, fmt="o", capsize=3)
        ax.set_yticks(y, labels)
        ax.set_title(env)
        ax.set_xlabel("held-out mean return (95% bootstrap interval)")
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    cfg = settings(sys.argv[1:], Params.load())
    seed_everything(cfg.bootstrap.seed)
    entries = load_index(INDEX_DIR, declared_policies())
    if not entries:
        raise InputError(f"no stage of dvc.yaml exports a policy to {INDEX_DIR}: nothing to evaluate")

    episodes_of = {name: cfg.atari.episodes if is_atari(e) else cfg.episodes for name, e in entries.items()}
    check_held_out(entries, range(cfg.seed_start, cfg.seed_start + max(episodes_of.values())))
    jobs = [(entry, cap) for entry in entries.values() for cap in step_caps(entry, cfg)]

    episode_rows, summary_rows, seconds_of = [], [], {}
    with tqdm(jobs, desc="held-out evaluation", unit="policy") as bar:
        for entry, cap in bar:
            bar.set_postfix(policy=entry.name, max_steps=cap, refresh=True)
            seeds = list(range(cfg.seed_start, cfg.seed_start + episodes_of[entry.name]))
            returns, seconds = evaluate_entry(entry, seeds, cap)
            identity = {"policy": entry.name, "algorithm": algorithm_of(entry),
                        "seed": getattr(entry, "seed", None), "max_steps": cap}
            episode_rows += [{**identity, "episode": i, "env_seed": s, "return": r}
                             for i, (s, r) in enumerate(zip(seeds, returns))]
            stats = summarize_returns(returns, resamples=cfg.bootstrap.resamples, seed=cfg.bootstrap.seed)
            summary_rows.append({**identity, "env_id": entry.env_id, **stats})
            seconds_of.setdefault(entry.name, {})[f"max_steps_{cap}"] = {"wall_time_s": seconds}
            bar.set_postfix(policy=entry.name, max_steps=cap, mean_return=f"{stats['mean']:.1f}")

    returns = pd.DataFrame(episode_rows, columns=["policy", "algorithm", "seed", "max_steps", "episode",
                                                  "env_seed", "return"])
    returns["seed"] = returns["seed"].astype("Int64")
    summary = pd.DataFrame(summary_rows, columns=SUMMARY_COLUMNS)
    summary["seed"] = summary["seed"].astype("Int64")
    write_csv(f"{REPORTS}/returns.csv", returns)
    write_csv(f"{REPORTS}/summary.csv", summary)
    plot_intervals(summary, f"{REPORTS}/intervals.png")
    metrics = {}
    for row in summary_rows:
        stats = {k: row[k] for k in SUMMARY_COLUMNS[5:]}
        metrics.setdefault(row["policy"], {})[f"max_steps_{row['max_steps']}"] = stats
    write_json(f"{REPORTS}/metrics.json", {
        "action_rule": "greedy",
        "seeds": {"first": cfg.seed_start, "episodes": cfg.episodes, "atari_episodes": cfg.atari.episodes},
        "bootstrap": {"resamples": cfg.bootstrap.resamples, "seed": cfg.bootstrap.seed,
                      "confidence_level": 0.95, "method": "percentile"},
        "policies": metrics,
    })
    write_timings(NAME, {"policies": seconds_of,
                         "wall_time_s": sum(s["wall_time_s"] for p in seconds_of.values() for s in p.values())})
    for row in summary_rows:
        print(f"{row['policy']:>34} @ {row['max_steps']:>5}: {row['mean']:8.1f} "
              f"[{row['ci95_low']:.1f}, {row['ci95_high']:.1f}] over {row['episodes']} episodes")


if __name__ == "__main__":
    run_stage(main)
