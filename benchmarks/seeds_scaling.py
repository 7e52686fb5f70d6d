"""How the per-seed stages scale with parallel jobs: the quick profile's multi-seed part
(every per-seed training stage, for every seed) run with 1 and with 2 parallel Snakemake jobs,
each in a fresh workspace, side by side in one run.

    python -m benchmarks.seeds_scaling [--jobs 1 2]

Prints wall times and the speed-up. The runs are independent per seed, so on N cores (or N
cluster nodes) the ideal is min(N, runs) times faster; process start-up (TensorFlow import) and
the longest single run bound what is reached.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stages.core.dag import read_dag
from pipeline.workspace import create_workspace, engine_env


def per_seed_rules(workspace: Path) -> list[str]:
    """Rules of the stages that dvc.yaml instantiates per training seed (a `seed` matrix dimension)."""
    return [stage.rule_name for stage in read_dag(workspace) if stage.seed is not None]


def timed_run(jobs: int, root: Path) -> tuple[float, int]:
    workspace = create_workspace(root / f"jobs{jobs}" / "repo", profile="quick")
    rules = per_seed_rules(workspace)
    snakemake = Path(sys.executable).parent / "snakemake"
    started = time.perf_counter()
    # Targets go after "--": `--quiet` takes optional values and would swallow them.
    result = subprocess.run([str(snakemake), "--cores", str(jobs), "--quiet", "all", "--", *rules],
                            cwd=workspace, env=engine_env(), capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"snakemake with {jobs} job(s) failed (exit {result.returncode}):\n"
                         f"{result.stderr[-3000:]}")
    return time.perf_counter() - started, len(rules)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="seeds-scaling-") as tmp:
        times = {}
        for jobs in args.jobs:
            times[jobs], count = timed_run(jobs, Path(tmp))
            print(f"{count} per-seed stage runs with {jobs} parallel job(s): {times[jobs]:.1f} s")
    base = times[args.jobs[0]]
    for jobs in args.jobs[1:]:
        print(f"speed-up {args.jobs[0]} -> {jobs} jobs: {base / times[jobs]:.2f}x (ideal {jobs / args.jobs[0]:.0f}x)")


if __name__ == "__main__":
    main()
