"""Held-out evaluation of the policies one training stage exports: a stage per training stage.

    python -m stages.evaluate.policy dqn_s42 dqn_final_s42

dvc.yaml declares ``evaluate_<trainer>`` beside each training stage that exports policies, with
the trainer's own ``foreach``/``matrix``, so a policy is evaluated again only when it (or this
code, or the ``evaluate`` settings) changes. Each named policy is loaded from the index
(``data/policies/<name>``) and played greedily (its documented action rule without sampling: most
likely action, or highest Q-value), one episode per seed, on seeds no training stage uses (checked
against the seeds the policy records). CartPole policies are played at each step cap of
``cartpole_max_steps`` (the book's 200 and CartPole-v1's own 500); others to their environment's
own limit; Atari policies, slow to play, for fewer episodes. The episodes of one policy run side
by side with one batched policy call per step (stages/policies/evaluation.py).

Per policy, in ``reports/evaluate/policies/<name>/`` (small, committed to git): every episode's
return (returns.csv), and summary.json: what the gathering stages need of the policy's index entry
(stage, algorithm, seed, environment, training seeds and log, the DVC hash of the folder
evaluated) and, per step cap, the mean, spread, median, interquartile mean and a 95% bootstrap
interval of the mean. The wall time goes to logs/timings/evaluate/<name>.json, declared nowhere:
the results stay byte-identical when a rerun reproduces them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import gymnasium as gym
import numpy as np
import pandas as pd

from stages.policies.evaluation import evaluate_policy
from stages.core.io import write_csv, write_json
from stages.core.timings import write_timings
from stages.policies.index import INDEX_DIR, PolicyEntry, load_policy, make_policy_env, read_entry
from stages.core.seeding import seed_everything
from stages.core.settings import InputError, ParamError, Params, parse_arguments, run_stage
from stages.policies.statistics import summarize_returns
from stages.evaluate import RETURN_COLUMNS, Settings, returns_path, summary_path, timings_name

SECTION = "evaluate"  # the settings of the evaluate section, as the gathering stage reads them


def arguments(argv: Sequence[str]) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policies", nargs="+", help="policy names of the index (data/policies/<name>)")
    return parse_arguments(parser, argv).policies


def settings(argv: Sequence[str], params: Params) -> Settings:
    arguments(argv)
    return params.read(Settings, "evaluate")


def is_atari(entry: PolicyEntry) -> bool:
    return entry.preprocessing.get("kind") == "atari"


def algorithm_of(entry: PolicyEntry) -> str:
    """The training algorithm's name; per-seed policies (``dqn_s0``) carry it, others are named by it."""
    return entry.algorithm or entry.name


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


def evaluation_seeds(entry: PolicyEntry, cfg: Settings) -> list[int]:
    episodes = cfg.atari.episodes if is_atari(entry) else cfg.episodes
    return list(range(cfg.seed_start, cfg.seed_start + episodes))


def check_held_out(name: str, training_seeds: Sequence[int], seeds: Sequence[int], seed_start: int) -> None:
    """No policy may be evaluated on a seed it was trained on."""
    shared = sorted(set(training_seeds) & set(seeds))
    if shared:
        raise ParamError(f"evaluate.seed_start = {seed_start}: evaluation seeds {min(seeds)}.."
                         f"{max(seeds)} include seeds policy {name!r} was trained on "
                         f"({shared[:5]}); choose a range above every training seed")


def dvc_md5(folder: Path) -> str:
    """The hash DVC records for a folder output (``<md5 of its manifest>.dir``), files it ignores left out."""
    manifest = [{"md5": hashlib.md5(f.read_bytes()).hexdigest(), "relpath": f.relative_to(folder).as_posix()}
                for f in sorted(folder.rglob("*")) if f.is_file() and f.name != ".snakemake_timestamp"]
    manifest.sort(key=lambda entry: entry["relpath"])
    return hashlib.md5(json.dumps(manifest, sort_keys=True).encode()).hexdigest() + ".dir"


def evaluate_entry(entry: PolicyEntry, seeds: list[int], max_steps: int) -> np.ndarray:
    """Greedy returns of one exported policy, one episode per seed."""
    policy = load_policy(entry)
    play = (dict(make_env=partial(make_policy_env, entry)) if entry.preprocessing
            else dict(env_kwargs=entry.env_kwargs))
    result = evaluate_policy(entry.env_id, policy, seeds, max_steps=max_steps, batch_size=len(seeds),
                             progress=False, **play)
    return result.returns


def evaluate_one(entry: PolicyEntry, cfg: Settings) -> None:
    """Play one policy at each of its step caps and write its results and its wall time."""
    seeds = evaluation_seeds(entry, cfg)
    check_held_out(entry.name, entry.training_seeds, seeds, cfg.seed_start)
    identity = {"policy": entry.name, "algorithm": algorithm_of(entry), "seed": entry.seed}
    episodes, caps, wall = [], {}, {}
    for cap in step_caps(entry, cfg):
        started = time.perf_counter()
        returns = evaluate_entry(entry, seeds, cap)
        wall[f"max_steps_{cap}"] = round(time.perf_counter() - started, 3)
        episodes += [{**identity, "max_steps": cap, "episode": i, "env_seed": s, "return": r}
                     for i, (s, r) in enumerate(zip(seeds, returns))]
        caps[f"max_steps_{cap}"] = summarize_returns(returns, resamples=cfg.bootstrap.resamples,
                                                      seed=cfg.bootstrap.seed)
        stats = caps[f"max_steps_{cap}"]
        print(f"{entry.name:>34} @ {cap:>5}: {stats['mean']:8.1f} "
              f"[{stats['ci95_low']:.1f}, {stats['ci95_high']:.1f}] over {stats['episodes']} episodes")
    frame = pd.DataFrame(episodes, columns=RETURN_COLUMNS)
    frame["seed"] = frame["seed"].astype("Int64")
    write_csv(returns_path(entry.name), frame)
    write_json(summary_path(entry.name), {
        **identity, "stage": entry.stage, "env_id": entry.env_id,
        "training_seeds": list(entry.training_seeds),
        "training_log": entry.details.get("training_log"),
        "policy_md5": dvc_md5(entry.folder),
        "action_rule": "greedy",
        "seeds": {"first": seeds[0], "episodes": len(seeds)},
        "bootstrap": {"resamples": cfg.bootstrap.resamples, "seed": cfg.bootstrap.seed,
                      "confidence_level": 0.95, "method": "percentile"},
        "max_steps": caps,
    })
    write_timings(timings_name(entry.name), {"wall_time_s": wall})


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    cfg = settings(argv, Params.load())
    names = arguments(argv)
    entries = [read_entry(INDEX_DIR / name) for name in names]  # every policy checked before any plays
    for entry in entries:
        seed_everything(cfg.bootstrap.seed)
        evaluate_one(entry, cfg)


if __name__ == "__main__":
    run_stage(main)
