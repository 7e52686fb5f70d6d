"""The whole of params.yaml, checked before any job: every stage's own settings, read exactly as
that stage reads them, and what one stage's seeds mean for another's.

    python -m pipeline.validation                 # check params.yaml against dvc.yaml's stages
    python -m pipeline.validation --write-schema  # regenerate params.schema.json

The Snakefile runs :func:`validate_pipeline` before it schedules anything. Each stage runs its own
part of the same validation when it starts (its package's ``settings(argv, params)``), so a bad
value is refused whichever engine starts the stage. Across stages: no training run may start an
environment from a seed the evaluate stage evaluates on, the Pi bundle needs settings for every
environment a policy plays, and a section nobody reads is a typo.

A stage's settings live in its package, ``stages/<name>/__init__.py``: ``settings(argv, params)``
(the run's settings, from the stage's command-line arguments), ``Section`` (the model of its
whole params.yaml section, for the JSON Schema; default ``Settings``) and ``SECTION`` (the key;
default the package's name, ``None`` for a stage without a section of its own).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import create_model

from stages.core.dag import StageSpec, read_dag
from stages.core.settings import PARAMS_FILE, ParamError, Params, Pipeline, StageSettings, read_params_file

SCHEMA_FILE = Path("params.schema.json")


def stage_package(stage: StageSpec) -> ModuleType:
    """The stage's package (its settings; importing it does not import TensorFlow)."""
    return importlib.import_module(stage.module)


def section_of(package: ModuleType) -> str | None:
    return getattr(package, "SECTION", package.__name__.rsplit(".", 1)[-1])


def sections(stages: Iterable[StageSpec]) -> dict[str, Any]:
    """params.yaml's sections: key -> the model of the whole section, in DAG order."""
    found: dict[str, Any] = {}
    for stage in stages:
        package = stage_package(stage)
        key = section_of(package)
        if key is not None and key not in found:
            found[key] = getattr(package, "Section", getattr(package, "Settings", None))
    return found


def validate_pipeline(stages: list[StageSpec], path: str | Path = PARAMS_FILE) -> dict[str, StageSettings]:
    """Every stage's settings (stage name -> settings); the first problem raises ParamError."""
    params = Params.load(path)
    params.pipeline()
    known = [*Pipeline.model_fields, *sections(stages)]
    unknown = [key for key in params.data if key not in known]
    if unknown:
        raise ParamError(f"{path}: '{unknown[0]}' is not a known section; known: {', '.join(known)}")
    runs = {stage.name: stage_package(stage).settings(stage.argv, Params(params.data, path))
            for stage in stages}
    check_evaluation_is_held_out(runs, path)
    check_bundle_covers_every_environment(stages, runs, path)
    return runs


def check_evaluation_is_held_out(runs: dict[str, StageSettings], path: str | Path) -> None:
    """The evaluate stage's seeds overlap no training run's seeds."""
    evaluation = next((run for name, run in runs.items() if name == "evaluate"), None)
    if evaluation is None:
        return
    seeds = evaluation.seeds
    for stage, run in runs.items():
        shared = sorted(run.training_seeds() & set(seeds))
        if shared:
            raise ParamError(f"{path}: evaluate.seed_start = {evaluation.seed_start} is not allowed: the "
                             f"evaluation seeds {seeds.start}..{seeds.stop - 1} overlap the training "
                             f"seeds of {stage} ({shared[:5]}); choose a range above them")


def check_bundle_covers_every_environment(stages: list[StageSpec], runs: dict[str, StageSettings],
                                          path: str | Path) -> None:
    """The Pi bundle has evaluation settings for the environment of every exported policy."""
    bundle = runs.get("pi_bundle")
    if bundle is None:
        return
    for stage in stages:
        missing = sorted(runs[stage.name].environment_ids() - set(bundle.evaluation)) if stage.policies else []
        if missing:
            raise ParamError(f"{path}: pi_bundle.evaluation has no entry for {missing[0]}, the environment "
                             f"of the policies of stage {stage.name}; add its evaluation seeds and episode cap")


def json_schema(stages: list[StageSpec]) -> dict[str, Any]:
    """A JSON Schema of params.yaml, generated from the stages' settings models (for editors)."""
    fields: dict[str, Any] = {name: (field.annotation, field) for name, field in Pipeline.model_fields.items()}
    fields.update({key: (model, ...) for key, model in sections(stages).items()})
    model = create_model("Params", __config__=Pipeline.model_config, **fields)
    schema = model.model_json_schema()
    schema["title"] = "params.yaml of the chapter 18 pipeline"
    schema["description"] = ("Generated by `python -m pipeline.validation --write-schema` from "
                             "the settings models in stages/<experiment>/__init__.py; do not edit.")
    return schema


def schema_text(stages: list[StageSpec]) -> str:
    return json.dumps(json_schema(stages), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-schema", action="store_true", help=f"regenerate {SCHEMA_FILE}")
    args = parser.parse_args(argv)
    try:
        read_params_file()  # a YAML error named by its line, before DVC's parser reads the file
        stages = read_dag()
        if args.write_schema:
            SCHEMA_FILE.write_text(schema_text(stages))
            print(f"wrote {SCHEMA_FILE}")
            return 0
        runs = validate_pipeline(stages)
    except ParamError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{PARAMS_FILE}: valid for all {len(runs)} stages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
