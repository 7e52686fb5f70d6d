"""Every trained policy as a Raspberry Pi bundle that needs no TensorFlow: the policies' conversions
packed into one folder and a byte-reproducible .tar.gz of it.

Each policy is converted, checked and measured by a stage of its own (``pi_<trainer>``, running
``python -m stages.pi_bundle.policy``); this stage only gathers what they wrote, for every policy
the DAG declares: its models and sample observations (data/pi_policies/<policy>/) and its result
file (reports/pi_bundle/policies/<policy>.json, :class:`stages.pi_bundle.records.PolicyResult`).

The bundle holds the models, manifest.json (per policy: environment, observation shape and dtype,
action rule, quantization, measurements, default precision; sha256 of every file; converter and
runtime versions), the runner ``run_policy.py`` and the runtime it imports (NumPy and LiteRT
only), its requirements and a README: this stage's pi/ dependencies in dvc.yaml. Beside it:
reports/pi_bundle/benchmark.json (every policy's benchmark) and metrics.json.
"""

from __future__ import annotations

import shutil
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from pi.policy_runtime import FORMAT, MANIFEST, sha256, verify_bundle
from stages.core.dag import StageSpec, policy_producers, read_dag
from stages.core.io import atomic_folder, write_json
from stages.core.settings import InputError, argument_parser, parse_arguments, run_stage
from stages.pi_bundle.archive import write_reproducible_tar_gz
from stages.pi_bundle.records import CONVERTED, PRECISIONS, RESULTS, PolicyBenchmark, PolicyResult

BUNDLE = Path("data/pi_bundle")
ARCHIVE = Path("data/pi_bundle.tar.gz")
REPORTS = Path("reports/pi_bundle")
NAME = "pi_bundle"
PI_FILES = Path("pi")
RUNNER = "run_policy.py"


def shipped_files(stages: list[StageSpec]) -> list[Path]:
    """The files of pi/ the bundle ships: this stage's pi/ dependencies in dvc.yaml (the runner,
    the runtime it imports, the requirements and the README)."""
    stage = next(s for s in stages if s.group == NAME)
    return [Path(dep) for dep in stage.deps if Path(dep).parent == PI_FILES]


def converter_of(policy: str, stages: list[StageSpec]) -> str:
    """The stage that converts ``policy`` (the one whose outputs hold its folder), for messages."""
    folder = (CONVERTED / policy).as_posix()
    return next((s.name for s in stages if folder in s.outs), f"(no stage of dvc.yaml writes {folder})")


def read_results(policies: list[str], stages: list[StageSpec]) -> dict[str, PolicyResult]:
    """Every policy's result file, checked; a missing one names the stage that writes it."""
    results = {}
    for name in policies:
        path, folder = RESULTS / f"{name}.json", CONVERTED / name
        if not path.is_file() or not folder.is_dir():
            raise InputError(f"policy {name} is not converted ({path} or {folder} is missing): run "
                             f"stage {converter_of(name, stages)} first")
        results[name] = PolicyResult.read(path)
        if results[name].manifest.source.policy != name:
            raise InputError(f"{path} holds the result of policy {results[name].manifest.source.policy}")
    return results


def write_manifest(folder: Path, results: dict[str, PolicyResult]) -> dict[str, Any]:
    """manifest.json: the policies' entries, every file's sha256, and the converter (as each model
    records it) and runtime versions."""
    files = {path.relative_to(folder).as_posix(): sha256(path)
             for path in sorted(folder.rglob("*")) if path.is_file()}
    converters = {model.converted_by for result in results.values() for model in result.manifest.models.values()}
    manifest = {
        "format": FORMAT,
        "description": "Trained policies of the chapter 18 pipeline as TFLite models; run them with "
                       "run_policy.py (see README.md)",
        "converted_by": ", ".join(sorted(converters)),
        "runtime": f"ai-edge-litert {version('ai-edge-litert')}",
        "files": files,
        "policies": {name: result.manifest.to_json() for name, result in results.items()},
    }
    write_json(folder / MANIFEST, manifest)
    return manifest


def print_table(reports: dict[str, PolicyBenchmark]) -> None:
    print(f"{'policy':40} {'int8 PTQ':>8} {'int8':>7} {'input only':>10} {'default':>7} {'f32 max diff':>12} "
          f"{'return orig/f32/int8':>22} {'median ms orig/f32/int8':>24} {'KB orig/f32/int8':>16}")
    for name, r in reports.items():
        variants = ("original", *PRECISIONS)
        returns = "/".join(f"{getattr(r.evaluation, v).mean:.1f}" for v in variants)
        times = "/".join(f"{r.latency[v].median_wall_time_s * 1e3:.3f}" for v in variants)
        sizes = "/".join(f"{r.size_bytes[v] / 1024:.0f}" for v in variants)
        rounding = r.int8.input_rounding_agreement
        rounding = "-" if rounding is None else f"{rounding:.4f}"
        print(f"{name:40} {r.int8.post_training_action_agreement:8.4f} {r.int8.action_agreement:7.4f} "
              f"{rounding:>10} {r.default_precision:>7} {r.float32.max_abs_diff:12.2e} "
              f"{returns:>22} {times:>24} {sizes:>16}")


def main() -> None:
    parse_arguments(argument_parser(__doc__), sys.argv[1:])
    stages = read_dag()
    policies = sorted(policy_producers(stages))
    if not policies:
        raise InputError("no stage of dvc.yaml exports a policy to data/policies: nothing to bundle")
    shipped = shipped_files(stages)
    if PI_FILES / RUNNER not in shipped:
        raise InputError(f"dvc.yaml: stage {NAME} must depend on {PI_FILES / RUNNER}, the runner it ships")
    results = read_results(policies, stages)
    with atomic_folder(BUNDLE) as folder:
        for directory in ("models", "observations"):
            (folder / directory).mkdir()
        for path in shipped:
            shutil.copyfile(path, folder / path.name)
        (folder / RUNNER).chmod(0o755)
        for name, result in results.items():
            spec = result.manifest
            for file in [*(spec.models[p].file for p in PRECISIONS), spec.sample.file]:
                shutil.copyfile(CONVERTED / name / file, folder / file)
        write_manifest(folder, results)
        verify_bundle(folder)
    write_reproducible_tar_gz(BUNDLE, ARCHIVE, executables=frozenset({RUNNER}))
    reports = {name: result.benchmark for name, result in results.items()}
    write_json(REPORTS / "benchmark.json", {name: report.to_json() for name, report in reports.items()})
    write_json(REPORTS / "metrics.json", {name: report.metrics() for name, report in reports.items()})
    print_table(reports)


if __name__ == "__main__":
    run_stage(main)
