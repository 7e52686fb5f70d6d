"""Stand-in for the report branch's ``evaluate`` stage: held-out returns of every per-seed policy.

It exists so that ``aggregate`` runs on this branch; at the merge the real ``evaluate`` stage
(which evaluates every policy of the index and writes the same file) replaces it. It writes
``reports/evaluate/returns.csv`` with the shared columns (policy, algorithm, seed, max_steps,
episode, env_seed, return): each policy of ``data/policies`` that carries a training seed plays
``episodes`` greedy episodes from seeds ``seed_start`` on, at each step cap of its environment
family, from the exported artifact.
"""

from __future__ import annotations

import pandas as pd

from stages.common.evaluation import evaluate_policy
from stages.common.io import write_csv
from stages.common.params import ParamError
from stages.common.policies import load_index, load_policy
from stages.settings import load_params, run_stage

NAME = "evaluate_stand_in"
RETURNS = "reports/evaluate/returns.csv"
COLUMNS = ["policy", "algorithm", "seed", "max_steps", "episode", "env_seed", "return"]


def main() -> None:
    cfg = load_params(NAME)
    seeds = list(range(cfg.seed_start, cfg.seed_start + cfg.episodes))
    rows = []
    for entry in (e for e in load_index().values() if e.seed is not None):
        family = entry.env_id.split("-")[0]
        if family not in cfg.max_steps:
            raise ParamError(f"{NAME}.max_steps has no caps for {family} (policy {entry.name}); "
                             f"known: {', '.join(cfg.max_steps)}")
        if set(seeds) & set(entry.training_seeds):
            raise ParamError(f"{NAME}: evaluation seeds {seeds[0]}..{seeds[-1]} overlap the training "
                             f"seeds of policy {entry.name}; move {NAME}.seed_start")
        policy = load_policy(entry)
        for max_steps in cfg.max_steps[family]:
            result = evaluate_policy(entry.env_id, policy, seeds, max_steps=max_steps,
                                     env_kwargs=entry.env_kwargs, progress=False)
            rows += [(entry.name, entry.algorithm, entry.seed, max_steps, episode, seed, float(ret))
                     for episode, (seed, ret) in enumerate(zip(seeds, result.returns))]
            print(f"{entry.name} at {max_steps} steps: {result.mean:.1f} +- {result.std:.1f}")
    write_csv(RETURNS, pd.DataFrame(rows, columns=COLUMNS))


if __name__ == "__main__":
    run_stage(main)
