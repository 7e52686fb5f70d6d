"""A parameter sweep the DVC way: experiments queued with ``dvc exp run --queue -S``, run by
``dvc queue start``, compared with ``dvc exp show``. Each experiment runs one stage's pipeline
(REINFORCE on CartPole, seed 42) in DVC's own temporary copy; the workspace is left as it was."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import run

pytestmark = pytest.mark.e2e

DVC = str(Path(sys.executable).parent / "dvc")
STAGE = "pg_cartpole@42"
METRICS = "reports/pg_cartpole/s42/metrics.json"
LEARNING_RATES = (0.005, 0.02)


def wait_for_the_queue(workspace: Path, timeout_s: float = 900) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = run([DVC, "queue", "status"], workspace).stdout
        if not any(state in status for state in ("Queued", "Running")):
            return status
        time.sleep(5)
    raise AssertionError(f"the experiment queue did not finish in {timeout_s} s:\n{status}")


def experiments(workspace: Path) -> dict[str, tuple[float, float]]:
    """Experiment name -> (learning rate, held-out greedy mean return), from dvc exp show."""
    shown = json.loads(run([DVC, "exp", "show", "--json"], workspace).stdout)
    found = {}
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            for rev in experiment["revs"]:
                data = rev["data"]
                rate = data["params"]["params.yaml"]["data"]["pg_cartpole"]["optimizer"]["learning_rate"]
                greedy = data["metrics"][METRICS]["data"]["evaluation"]["greedy"]["mean"]
                found[rev["name"]] = (rate, greedy)
    return found


def test_a_queued_learning_rate_sweep_runs_and_is_compared(quick_workspace):
    ws = quick_workspace("sweep")
    for rate in LEARNING_RATES:
        run([DVC, "exp", "run", "--queue", "-S", f"pg_cartpole.optimizer.learning_rate={rate}", STAGE], ws)
    run([DVC, "queue", "start", "--jobs", "1"], ws)
    status = wait_for_the_queue(ws)
    assert status.count("Success") == len(LEARNING_RATES), status

    results = experiments(ws)
    assert sorted(rate for rate, _ in results.values()) == sorted(LEARNING_RATES)
    assert all(0 < greedy <= 200 for _, greedy in results.values())
    table = run([DVC, "exp", "show", "--csv", "--keep", "pg_cartpole.optimizer.learning_rate", "--drop", ".*"],
                ws).stdout
    assert {str(rate) for rate in LEARNING_RATES} <= set(table.split())
    # The workspace keeps its own parameters; results live in the experiments' refs.
    params = yaml.safe_load((ws / "params.yaml").read_text())
    assert params["pg_cartpole"]["optimizer"]["learning_rate"] == 0.01
    assert not (ws / METRICS).exists()
