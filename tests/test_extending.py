"""An experiment grows through params.yaml alone: a fifth DQN variant and a third LunarLander
configuration reach both engines' DAGs, the evaluation, the aggregate, the Pi bundle and the
report, with no line of code or of dvc.yaml changed."""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest
import yaml

from tests.conftest import DVC, run
from tests.test_dag import disagreements, dvc_view, snakemake_view

pytestmark = pytest.mark.e2e

VARIANT, CONFIG = "huber_dqn", "short"


def add_a_variant_and_a_configuration(params: dict) -> None:
    variants = params["dqn"]["variants"]
    variants[VARIANT] = {**variants["dqn"], "loss": "huber"}          # the book's DQN, Huber loss
    configurations = params["pg_lunarlander"]
    configurations[CONFIG] = {**configurations["book"],
                              "training": {**configurations["book"]["training"], "iterations": 1}}


def test_a_new_variant_and_configuration_need_only_params_yaml(clone_of_quick_run):
    ws = clone_of_quick_run()
    path = ws / "params.yaml"
    params = yaml.safe_load(path.read_text())
    add_a_variant_and_a_configuration(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    seeds = params["seeds"]

    view = dvc_view(ws)
    new_stages = {f"dqn@{VARIANT}-{s}" for s in seeds} | {f"pg_lunarlander@{CONFIG}-{s}" for s in seeds}
    assert new_stages <= set(view)
    assert disagreements(snakemake_view(ws), view) == []

    ran = {line.split("'")[1] for line in run([DVC, "repro"], ws).stdout.splitlines()
           if line.startswith("Running stage '")}
    assert new_stages | {"evaluate", "aggregate", "pi_bundle", "report"} <= ran

    new_policies = {f"{VARIANT}_s{s}" for s in seeds} | {f"{VARIANT}_final_s{s}" for s in seeds} \
        | {f"pg_lunarlander_{CONFIG}_s{s}" for s in seeds}
    evaluated = set(pd.read_csv(ws / "reports/evaluate/summary.csv")["policy"])
    assert new_policies <= evaluated
    aggregated = set(pd.read_csv(ws / "reports/aggregate/summary.csv")["algorithm"])
    assert {VARIANT, f"{VARIANT}_final", f"pg_lunarlander_{CONFIG}"} <= aggregated
    manifest = json.loads((ws / "data/pi_bundle/manifest.json").read_text())
    assert new_policies <= set(manifest["policies"])
    page = (ws / "reports/index.html").read_text()
    for section in (f"dqn@{VARIANT}", f"pg_lunarlander@{CONFIG}"):
        assert f'<section id="{section}">' in page
    assert f"reports/dqn/{VARIANT}/s{seeds[0]}/{VARIANT}_rewards_plot.png".removeprefix("reports/") in page

    changed = subprocess.run(["git", "status", "--porcelain"], cwd=ws, capture_output=True, text=True,
                             check=True).stdout.split("\n")
    assert sorted(line[3:] for line in changed if line) == ["dvc.lock", "params.yaml"]
