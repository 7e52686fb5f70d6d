"""An experiment grows through params.yaml alone: a fifth DQN variant, a third LunarLander
configuration and a third Atari game reach both engines' DAGs, the evaluation, the aggregate (the
per-seed ones), the Pi bundle and the report, with no line of code or of dvc.yaml changed."""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest
import yaml

from tests.conftest import DVC, run
from tests.test_dag import disagreements, dvc_view, snakemake_view

pytestmark = pytest.mark.e2e

VARIANT, CONFIG, GAME, GAME_ID = "huber_dqn", "short", "pong", "PongNoFrameskip-v4"


def add_a_variant_a_configuration_and_a_game(params: dict) -> None:
    variants = params["dqn"]["variants"]
    variants[VARIANT] = {**variants["dqn"], "loss": "huber"}          # the book's DQN, Huber loss
    configurations = params["pg_lunarlander"]
    configurations[CONFIG] = {**configurations["book"],
                              "training": {**configurations["book"]["training"], "iterations": 1}}
    # Pong serves at once: no forced steps. The bundle's per-environment settings name its id too.
    params["atari_dqn"]["games"][GAME] = {"env_id": GAME_ID, "after_reset": {"action": "NOOP", "steps": 0},
                                          "after_life_loss": {"action": "NOOP", "steps": 0}}
    bundle = params["pi_bundle"]["evaluation"]
    bundle[GAME_ID] = dict(bundle["BreakoutNoFrameskip-v4"])


def test_a_new_variant_configuration_and_game_need_only_params_yaml(clone_of_quick_run):
    ws = clone_of_quick_run()
    existing = set(dvc_view(ws))
    path = ws / "params.yaml"
    params = yaml.safe_load(path.read_text())
    add_a_variant_a_configuration_and_a_game(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    seeds = params["seeds"]

    view = dvc_view(ws)
    new_stages = {f"dqn@{VARIANT}-{s}" for s in seeds} | {f"pg_lunarlander@{CONFIG}-{s}" for s in seeds} \
        | {f"atari_dqn@{GAME}"}
    assert new_stages <= set(view)
    assert disagreements(snakemake_view(ws), view, ws) == []

    ran = {line.split("'")[1] for line in run([DVC, "repro"], ws).stdout.splitlines()
           if line.startswith("Running stage '")}
    evaluations = {f"evaluate_{stage}" for stage in new_stages}  # evaluate_dqn@<variant>-<seed>, ...
    assert new_stages | evaluations | {"evaluate", "aggregate", "pi_bundle", "report"} <= ran
    # Of the stages there before, none reruns: no training, no evaluation, no Pi conversion (each
    # pi_<trainer> declares only its own environment's row of pi_bundle.evaluation, not the new game's).
    rerun = sorted(name for name in ran & existing if "@" in name)
    assert rerun == [], rerun

    new_policies = {f"{VARIANT}_s{s}" for s in seeds} | {f"{VARIANT}_final_s{s}" for s in seeds} \
        | {f"pg_lunarlander_{CONFIG}_s{s}" for s in seeds} | {f"{GAME}_dqn"}
    evaluated = set(pd.read_csv(ws / "reports/evaluate/summary.csv")["policy"])
    assert new_policies <= evaluated
    aggregated = set(pd.read_csv(ws / "reports/aggregate/summary.csv")["algorithm"])
    assert {VARIANT, f"{VARIANT}_final", f"pg_lunarlander_{CONFIG}"} <= aggregated
    manifest = json.loads((ws / "data/pi_bundle/manifest.json").read_text())
    assert new_policies <= set(manifest["policies"])
    page = (ws / "reports/index.html").read_text()
    for section in (f"dqn@{VARIANT}", f"pg_lunarlander@{CONFIG}", f"atari_dqn@{GAME}"):
        assert f'<section id="{section}">' in page
    assert f"reports/dqn/{VARIANT}/s{seeds[0]}/{VARIANT}_rewards_plot.png".removeprefix("reports/") in page

    changed = subprocess.run(["git", "status", "--porcelain"], cwd=ws, capture_output=True, text=True,
                             check=True).stdout.split("\n")
    # Besides the results git keeps (under data/ and reports/), only the lock and the params moved.
    assert sorted(line[3:] for line in changed if line and not line[3:].startswith(("data/", "reports/"))) \
        == ["dvc.lock", "params.yaml"]
