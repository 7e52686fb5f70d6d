"""Held-out evaluation of every exported policy, gathered: the per-policy stages' results in one place.

Each policy is evaluated by the stage declared beside its training stage (``evaluate_<trainer>``,
stages/evaluate/policy.py), which writes ``reports/evaluate/policies/<name>/``. This stage reads
the results of every policy the DAG declares (a folder left by a seed or variant since removed is
left out), checks again that no policy was evaluated on a seed it was trained on, and writes every
episode's return (returns.csv), per policy and step cap the mean, spread, median, interquartile
mean and a 95% bootstrap interval of the mean with what the aggregate and the report need of the
policy's index entry (summary.csv, metrics.json), and a figure of the means with their intervals.
It reads no model: seconds, whatever the number of policies.

What an index entry leaves out is taken from the DAG (:func:`completed`): the training log of the
run that made a policy and its training seed. The Atari stage's entries carry neither, so the
runs of atari_dqn.runs get their seed and an algorithm shared across their seeds, the name before
``_s<seed>`` as for every per-seed policy (``breakout_drq_eps_s0_dqn`` -> ``breakout_drq_eps``),
and the book's single Atari runs their one training seed: the aggregate sets a recipe's seeds
beside the book's run.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from stages.core.dag import StageSpec, policy_producers, read_dag
from stages.core.io import write_csv, write_json
from stages.core.plotting import new_figure, save_figure
from stages.core.settings import InputError, ParamError, Params, run_stage
from stages.evaluate import RESULTS, RETURN_COLUMNS, returns_path, settings, summary_path

NAME = "evaluate"
REPORTS = f"reports/{NAME}"
STATISTICS = ["episodes", "mean", "std", "min", "max", "median", "iqm", "ci95_low", "ci95_high"]
SUMMARY_COLUMNS = ["policy", "algorithm", "seed", "env_id", "max_steps", *STATISTICS, "stage",
                   "training_log", "policy_md5"]


def read_results(declared: dict[str, str]) -> tuple[list[dict], pd.DataFrame]:
    """Every declared policy's summary and episodes (policy name order); a missing one names the
    stage that writes it."""
    results = Path(RESULTS)
    for folder in sorted(p for p in results.iterdir() if p.is_dir()) if results.is_dir() else []:
        if folder.name not in declared:
            print(f"note: {folder} is left out: no stage of dvc.yaml exports policy {folder.name}",
                  file=sys.stderr)
    summaries, frames = [], []
    for name, stage in sorted(declared.items()):
        if not (Path(summary_path(name)).is_file() and Path(returns_path(name)).is_file()):
            raise InputError(f"policy {name!r} (made by stage {stage}) has no held-out evaluation in "
                             f"{RESULTS}/{name}: run `dvc repro evaluate_{stage}` (or snakemake)")
        summary = json.loads(Path(summary_path(name)).read_text())
        if summary.get("policy") != name or summary.get("stage") != stage:
            raise InputError(f"{summary_path(name)} is not the evaluation of policy {name!r} made by "
                             f"stage {stage}: run `dvc repro evaluate_{stage}` (or snakemake)")
        summaries.append(summary)
        frames.append(pd.read_csv(returns_path(name)))
    return summaries, pd.concat(frames, ignore_index=True)[RETURN_COLUMNS]


def training_log_of(stage: StageSpec) -> str | None:
    """The stage's DVCLive folder (the folder of its ``dvclive/metrics.json`` output), if it has one."""
    logs = [Path(out).parent.as_posix() for out in stage.outs
            if Path(out).parts[-2:] == ("dvclive", "metrics.json")]
    return logs[0] if len(logs) == 1 else None


def completed(summary: dict, stage: StageSpec) -> dict:
    """``summary`` (a per-policy evaluation) with what the policy's index entry left out taken from
    its stage in the DAG: its training log, and the seed of the run that made it: a per-seed
    stage's seed (the algorithm then the name before ``_s<seed>``), or a single run's one training seed."""
    summary = dict(summary)
    if summary.get("training_log") is None:
        summary["training_log"] = training_log_of(stage)
    if summary.get("seed") is not None or summary.get("algorithm") not in (None, summary["policy"]):
        return summary
    if stage.seed is not None:
        summary["seed"] = int(stage.seed)
        summary["algorithm"] = re.sub(rf"_s{stage.seed}(_.*)?$", "", summary["policy"])
    elif len(summary.get("training_seeds") or []) == 1:
        summary["seed"] = int(summary["training_seeds"][0])
    return summary


def check_held_out(summaries: list[dict], returns: pd.DataFrame, seed_start: int) -> None:
    """No policy was evaluated on a seed it was trained on (each per-policy stage checked its own)."""
    for summary in summaries:
        played = returns.loc[returns["policy"] == summary["policy"], "env_seed"].astype(int)
        shared = sorted(set(summary["training_seeds"]) & set(played))
        if shared:
            raise ParamError(f"evaluate.seed_start = {seed_start}: policy {summary['policy']!r} was "
                             f"evaluated on seeds it was trained on ({shared[:5]}); choose a range above "
                             "every training seed")


def summary_rows(summaries: list[dict]) -> pd.DataFrame:
    rows = [{**{k: s[k] for k in ("policy", "algorithm", "seed", "env_id", "stage", "training_log",
                                 "policy_md5")},
             "max_steps": int(cap.removeprefix("max_steps_")), **stats}
            for s in summaries for cap, stats in s["max_steps"].items()]
    frame = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    frame["seed"] = frame["seed"].astype("Int64")
    return frame


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
    producers = policy_producers(read_dag())
    declared = {name: stage.name for name, stage in producers.items()}
    if not declared:
        raise InputError("no stage of dvc.yaml exports a policy to data/policies: nothing to evaluate")
    summaries, returns = read_results(declared)
    check_held_out(summaries, returns, cfg.seed_start)
    summaries = [completed(s, producers[s["policy"]]) for s in summaries]
    identity = {s["policy"]: (s["algorithm"], s["seed"]) for s in summaries}
    returns["algorithm"] = returns["policy"].map(lambda p: identity[p][0])
    returns["seed"] = returns["policy"].map(lambda p: identity[p][1]).astype("Int64")
    summary = summary_rows(summaries)
    write_csv(f"{REPORTS}/returns.csv", returns)
    write_csv(f"{REPORTS}/summary.csv", summary)
    plot_intervals(summary, f"{REPORTS}/intervals.png")
    write_json(f"{REPORTS}/metrics.json", {
        "action_rule": "greedy",
        "seeds": {"first": cfg.seed_start, "episodes": cfg.episodes, "atari_episodes": cfg.atari.episodes},
        "bootstrap": {"resamples": cfg.bootstrap.resamples, "seed": cfg.bootstrap.seed,
                      "confidence_level": 0.95, "method": "percentile"},
        "policies": {s["policy"]: s["max_steps"] for s in summaries},
    })
    print(f"gathered the held-out evaluation of {len(summaries)} policies ({len(summary)} policy-cap rows)")


if __name__ == "__main__":
    run_stage(main)
