"""Policies converted for a Raspberry Pi, one at a time: ``python -m stages.pi_bundle.policy NAME...``.

For each named policy of the index: observations are recorded from its own greedy episodes on
seeds no training or evaluation uses (one set calibrates the int8 quantization, one teaches the
int8 model, a larger held-out set measures parity); it is converted to TFLite in float32 and in
full-integer int8, the int8 model chosen among candidates (:mod:`stages.pi_bundle.candidates`).
Both models are compared with the original on the held-out observations, evaluated with the
shared evaluation helper on the evaluation seeds beside the original, and timed one action at a
time, all through the runner's own class, so what is measured here is what runs on the Pi.

The runner loads int8 by default only where it keeps ``int8_agreement_target`` of the held-out
actions and its mean return lies inside the float32 policy's interval (``return_interval``);
float32 otherwise, and the int8 model is marked unsafe (the runner refuses it unless told).

Outputs per policy: data/pi_policies/<policy>/ (the two models and the sample observations, laid
out as in the bundle) and reports/pi_bundle/policies/<policy>.json (its manifest entry and its
benchmark, :class:`stages.pi_bundle.records.PolicyResult`). The pi_bundle stage packs them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pi.policy_runtime import ACTION_RULES, TFLitePolicy, latency
from stages.common.evaluation import evaluate_policy
from stages.common.io import atomic_folder, write_json
from stages.common.policies import INDEX_DIR, PolicyEntry, load_policy, read_entry
from stages.common.seeding import seed_everything
from stages.common.settings import InputError, Params, argument_parser, parse_arguments, run_stage
from stages.common.statistics import bootstrap_mean_interval
from stages.pi_bundle import Settings
from stages.pi_bundle.archive import size_of
from stages.pi_bundle.candidates import Inputs, choose_int8, held_out_agreement, int8_record, model_record
from stages.pi_bundle.observations import (
    MakeEnv,
    check_seeds_unseen,
    environment_settings,
    episode_environments,
    record_observations,
)
from stages.pi_bundle.parity import (
    agreement,
    batched,
    check_float32,
    default_precision,
    expected_int8_outputs,
    input_rounding_agreement,
    margins,
    parity,
)
from stages.pi_bundle.records import (
    CONVERTED,
    PRECISIONS,
    RESULTS,
    Evaluation,
    Int8Parity,
    Interval,
    Measured,
    MeasuredReturn,
    PolicyBenchmark,
    PolicyManifest,
    PolicyResult,
    Returns,
    Sample,
    Source,
)
from stages.pi_bundle.tflite import convert_float32, convert_int8, load_original, original_outputs


SECTION = "pi_bundle"  # the settings this module reads (Settings), for the pipeline's validation


def arguments(argv: Sequence[str]) -> list[str]:
    """The policy names on the command line."""
    parser = argument_parser(__doc__)
    parser.add_argument("policies", nargs="+", metavar="POLICY", help="a policy of the index (data/policies)")
    return parse_arguments(parser, argv).policies


def settings(argv: Sequence[str], params: Params) -> Settings:
    arguments(argv)
    return params.read(Settings, SECTION)


def model_file(policy: str, precision: str) -> str:
    return f"models/{policy}.{precision}.tflite"


def sample_file(policy: str) -> str:
    return f"observations/{policy}.npy"


def policy_manifest(entry: PolicyEntry, max_steps: int, output: str) -> PolicyManifest:
    """A policy's manifest entry before its models are added."""
    return PolicyManifest(
        env_id=entry.env_id, env_kwargs=entry.env_kwargs, max_steps=max_steps,
        observation_shape=list(entry.observation_shape), observation_dtype=entry.observation_dtype,
        n_actions=entry.n_actions, output=output, action_rule=ACTION_RULES[output],
        preprocessing=entry.preprocessing,
        source=Source(policy=entry.name, stage=entry.stage,
                      algorithm=entry.algorithm or entry.details.get("algorithm", entry.name), seed=entry.seed),
        models={})


def convert_policy(cfg: Settings, entry: PolicyEntry, folder: Path, make_env: MakeEnv) -> PolicyResult:
    """Convert, fine-tune, check, evaluate and time one policy (its episodes in environments from
    ``make_env``), writing its models and sample observations into ``folder``."""
    settings = environment_settings(cfg, entry)
    model = load_original(entry)
    original = load_policy(entry)
    calibration = record_observations(entry, original, cfg.calibration, settings.max_steps, make_env)
    held_out = record_observations(entry, original, cfg.parity, settings.max_steps, make_env)
    started = time.perf_counter()
    float32 = convert_float32(entry, model)
    post_training = convert_int8(entry, model, calibration)
    conversion_time = time.perf_counter() - started

    spec = policy_manifest(entry, settings.max_steps, post_training.output_kind)
    int8, fine_tuning = choose_int8(Inputs(cfg, entry, model, original, calibration, post_training,
                                           settings.max_steps, make_env), spec)
    models = {"float32": model_record(model_file(entry.name, "float32"), float32, None, "as the original model",
                                      spec.output),
              "int8": int8_record(model_file(entry.name, "int8"), int8).model_copy(
                  update={"fine_tuned": fine_tuning.fine_tuned, "made_by": fine_tuning.shipped or "post_training"})}
    (folder / models["float32"].file).write_bytes(float32)
    (folder / models["int8"].file).write_bytes(int8.content)
    runnable = {**spec.to_json(), "models": {p: m.to_json() for p, m in models.items()}}
    tflite = {p: TFLitePolicy(folder, runnable, p) for p in PRECISIONS}

    # --- parity on the held-out observations
    reference = batched(original_outputs(entry, model), held_out)
    reference_actions = batched(original, held_out)
    margin = margins(spec.output, reference)
    ties = margin < cfg.float32_tolerance
    float32_parity = parity(reference, reference_actions, batched(tflite["float32"].outputs, held_out),
                            batched(tflite["float32"].actions, held_out), ties)
    check_float32(cfg, entry.name, float32_parity)
    int8_parity = parity(expected_int8_outputs(int8, reference, held_out), reference_actions,
                         batched(tflite["int8"].outputs, held_out), batched(tflite["int8"].actions, held_out), ties)
    # int8 outputs move in steps of the output scale: a choice closer than one step is a coin toss.
    step = models["int8"].output.scale or 0.0
    if int8.teacher is not None and int8.teacher.clipped:
        step *= int8.teacher.decision_scale  # in the original's units
    clear = margin >= step
    int8_agreement = int8_parity.action_agreement
    int8_report = Int8Parity(
        **int8_parity.model_dump(), output_step=step,
        action_agreement_margin_above_step=agreement(tflite["int8"].actions, held_out[clear],
                                                     reference_actions[clear]) if clear.any() else 1.0,
        observations_margin_above_step=int(clear.sum()),
        input_rounding_agreement=input_rounding_agreement(
            models["int8"].input_normalization, models["int8"].input.model_dump(), original, held_out,
            reference_actions),
        meets_target=int8_agreement >= cfg.int8_agreement_target, fine_tuning=fine_tuning,
        post_training_action_agreement=int8_agreement if int8 is post_training
        else held_out_agreement(spec, post_training, held_out, reference_actions))

    # --- returns on the evaluation seeds, and the default precision
    seeds = list(range(settings.seed_start, settings.seed_start + settings.episodes))
    players = {"original": original, **{p: tflite[p].actions for p in PRECISIONS}}
    results = {variant: evaluate_policy(entry.env_id, act, seeds, max_steps=settings.max_steps,
                                        make_env=make_env, progress=False) for variant, act in players.items()}
    interval = cfg.return_interval
    low, high = bootstrap_mean_interval(results["float32"].returns, resamples=interval.resamples, seed=interval.seed,
                                        confidence_level=interval.confidence)
    evaluation = Evaluation(seeds=[seeds[0], seeds[-1]], max_steps=settings.max_steps, **{
        variant: Returns(mean=r.mean, std=r.std, **({"interval": [low, high]} if variant == "float32" else {}))
        for variant, r in results.items()})
    chosen, why = default_precision(int8_agreement, cfg.int8_agreement_target, evaluation.int8.mean, (low, high))

    only = {"float32": {}, "int8": {"input_rounding_agreement": int8_report.input_rounding_agreement,
                                    "post_training_action_agreement": int8_report.post_training_action_agreement}}
    returns = {"float32": {"interval": Interval(confidence=interval.confidence, low=low, high=high)}, "int8": {}}
    for precision, report in (("float32", float32_parity), ("int8", int8_report)):
        measured = Measured(held_out_observations=len(held_out), action_agreement=report.action_agreement,
                            max_abs_diff=report.max_abs_diff,
                            return_=MeasuredReturn(mean=getattr(evaluation, precision).mean, episodes=len(seeds),
                                                   seeds=[seeds[0], seeds[-1]], **returns[precision]),
                            **only[precision])
        models[precision] = models[precision].model_copy(update={"measured": measured})
    models["int8"] = models["int8"].model_copy(update={
        "safe": chosen == "int8", **({"unsafe_reason": why} if chosen != "int8" else {})})

    samples = held_out[:cfg.sample_observations]
    np.save(folder / sample_file(entry.name), samples, allow_pickle=False)
    manifest = spec.model_copy(update={
        "models": models, "default_precision": chosen, "default_reason": why,
        "sample": Sample(file=sample_file(entry.name),
                         expected_actions={p: [int(a) for a in tflite[p].actions(samples)] for p in PRECISIONS})})
    benchmark = PolicyBenchmark(
        env_id=entry.env_id, output=spec.output, calibration_observations=len(calibration),
        conversion_wall_time_s=conversion_time,
        size_bytes={"original": size_of(entry.model_path), **{p: models[p].size_bytes for p in PRECISIONS}},
        float32=float32_parity, int8=int8_report, evaluation=evaluation, default_precision=chosen,
        latency={variant: latency(act, held_out[0], cfg.benchmark_calls) for variant, act in players.items()})
    return PolicyResult(manifest=manifest, benchmark=benchmark)


def convert(cfg: Settings, entry: PolicyEntry) -> PolicyResult:
    """One policy's outputs, each written whole (a failed conversion keeps the previous ones)."""
    started = time.perf_counter()
    with atomic_folder(CONVERTED / entry.name) as folder:
        for directory in ("models", "observations"):
            (folder / directory).mkdir()
        with episode_environments(entry) as make_env:
            result = convert_policy(cfg, entry, folder, make_env)
    result = result.model_copy(update={"benchmark": result.benchmark.model_copy(
        update={"bundle_wall_time_s": time.perf_counter() - started})})
    write_json(RESULTS / f"{entry.name}.json", result.to_json())
    return result


def main() -> None:
    cfg = settings(sys.argv[1:], Params.load())
    seed_everything(cfg.seed)
    entries = []
    for name in arguments(sys.argv[1:]):
        if not (INDEX_DIR / name).is_dir():
            raise InputError(f"no policy {name!r} in {INDEX_DIR}: run the stage that exports it first")
        entries.append(read_entry(INDEX_DIR / name))
    for entry in entries:  # every policy's settings, before the first conversion
        environment_settings(cfg, entry)
        check_seeds_unseen(cfg, entry)
    for entry in entries:
        started = time.perf_counter()
        benchmark = convert(cfg, entry).benchmark
        print(f"{entry.name}: int8 agreement {benchmark.int8.action_agreement:.4f} (post-training "
              f"{benchmark.int8.post_training_action_agreement:.4f}), default {benchmark.default_precision} "
              f"({time.perf_counter() - started:.1f} s)", flush=True)


if __name__ == "__main__":
    run_stage(main)
