"""Policies converted for a Raspberry Pi, one at a time:
``python -m stages.pi_bundle.policy --env ENV_ID NAME...``.

For each named policy of the index: observations are recorded from its own greedy episodes on
seeds no training or evaluation uses (one set calibrates the int8 quantization, one teaches the
int8 model, a larger held-out set measures parity); it is converted to TFLite in float32 and in
full-integer int8, the int8 model chosen among candidates (:mod:`stages.pi_bundle.candidates`).
Both models are compared with the original on the held-out observations, evaluated with the
shared evaluation helper on the evaluation seeds beside the original, and timed one action at a
time, all through the runner's own class, so what is measured here is what runs on the Pi.

The runner loads int8 by default only where it keeps ``int8_agreement_target`` of the held-out
actions and its mean return lies inside the float32 policy's interval (``return_interval``);
float32 otherwise, and the int8 model is marked unsafe (the runner refuses it unless told). A
continuous action (SAC's ``continuous_action``) agrees within a tolerance instead of exactly:
``float32_tolerance`` for float32, the environment's ``evaluation.<env>.action_tolerance`` for int8
(:mod:`stages.pi_bundle.parity`).

Outputs per policy: data/pi_policies/<policy>/ (the two models and the sample observations, laid
out as in the bundle) and reports/pi_bundle/policies/<policy>.json (its manifest entry and its
benchmark, :class:`stages.pi_bundle.records.PolicyResult`). The pi_bundle stage packs them.

A stage converts policies of the environments named by ``--env`` (one or more: a trainer whose
configurations play different environments names each) and reads ``pi_bundle`` less its
``evaluation`` table, plus those environments' rows of it: a row added for another environment
(a new game, a new algorithm's environment) leaves the conversions already made up to date.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pi.policy_contract import ACTION_RULES
from pi.policy_runtime import TFLitePolicy, latency
from stages.policies.evaluation import evaluate_policy
from stages.core.io import atomic_folder, write_json
from stages.policies.index import INDEX_DIR, BatchPolicy, PolicyEntry, load_policy, read_entry
from stages.core.seeding import seed_everything
from stages.core.settings import InputError, ParamError, Params, argument_parser, parse_arguments, run_stage, validate
from stages.policies.statistics import bootstrap_mean_interval
from stages.pi_bundle import EnvironmentEvaluation, Settings
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
    FineTuning,
    Int8Parity,
    Interval,
    Measured,
    MeasuredReturn,
    Model,
    Parity,
    PolicyBenchmark,
    PolicyManifest,
    PolicyResult,
    Returns,
    Sample,
    Source,
)
from stages.pi_bundle.tflite import Int8Model, convert_float32, convert_int8, load_original, original_outputs


SECTION = "pi_bundle"  # the settings this module reads (Settings), for the pipeline's validation


def arguments(argv: Sequence[str]) -> Any:
    """The environment and the policy names on the command line."""
    parser = argument_parser(__doc__)
    parser.add_argument("--env", required=True, action="append", metavar="ENV_ID",
                        help="an environment the policies play (its pi_bundle.evaluation entry is read); "
                             "repeat it for a stage whose policies play several")
    parser.add_argument("policies", nargs="+", metavar="POLICY", help="a policy of the index (data/policies)")
    return parse_arguments(parser, argv)


def settings(argv: Sequence[str], params: Params) -> Settings:
    """``pi_bundle`` with ``evaluation`` cut down to the ``--env`` entries: the keys dvc.yaml declares."""
    env_ids = list(dict.fromkeys(arguments(argv).env))
    shared = {key: value for key, value in params.raw(SECTION).items() if key != "evaluation"}
    table = params.raw(f"{SECTION}.evaluation")
    for env_id in env_ids:
        if env_id not in table:
            raise ParamError(f"{params.path}: pi_bundle.evaluation has no entry for {env_id} (--env {env_id}); "
                             f"add its evaluation seeds and episode cap")
    rows = {env_id: table[env_id] for env_id in env_ids}
    params.read_keys += [f"{SECTION}.{key}" for key in shared] + [f"{SECTION}.evaluation.{e}" for e in env_ids]
    return validate(Settings, {**shared, "evaluation": rows}, SECTION, params.path)


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


@dataclass(frozen=True)
class HeldOut:
    """The held-out observations with the original's outputs, actions and decision margins."""

    observations: np.ndarray
    outputs: np.ndarray
    actions: np.ndarray
    margins: np.ndarray  # how far each output is from choosing another action
    ties: np.ndarray  # closer than float32_tolerance: either action is the original's

    def parity(self, expected: np.ndarray, policy: TFLitePolicy, tolerance: float | None = None) -> Parity:
        return parity(expected, self.actions, batched(policy.outputs, self.observations),
                      batched(policy.actions, self.observations), self.ties, tolerance)


@dataclass(frozen=True)
class Tolerances:
    """How far a continuous action may be from the original's and still agree, per precision
    (None for both: discrete actions agree when equal)."""

    float32: float | None = None
    int8: float | None = None


def action_tolerances(cfg: Settings, entry: PolicyEntry, settings: EnvironmentEvaluation) -> Tolerances:
    if entry.output != "continuous_action":
        return Tolerances()
    if settings.action_tolerance is None:
        raise ParamError(f"pi_bundle.evaluation.{entry.env_id} has no action_tolerance: policy {entry.name} "
                         "has a continuous action, whose int8 model agrees within that tolerance")
    return Tolerances(float32=cfg.float32_tolerance, int8=settings.action_tolerance)


def listed(actions: np.ndarray) -> list:
    """Actions as the manifest lists them: ints, or one list of floats per continuous action."""
    if actions.ndim == 1:
        return [int(a) for a in actions]
    return [[float(x) for x in action] for action in actions]


def held_out_set(cfg: Settings, entry: PolicyEntry, model: Any, original: BatchPolicy, observations: np.ndarray,
                 output: str) -> HeldOut:
    outputs = batched(original_outputs(entry, model), observations)
    distance = margins(output, outputs)
    return HeldOut(observations, outputs, batched(original, observations), distance,
                   distance < cfg.float32_tolerance)


def int8_parity(cfg: Settings, held: HeldOut, policy: TFLitePolicy, record: Model, int8: Int8Model,
                post_training_agreement: float | None, fine_tuning: FineTuning, original: BatchPolicy,
                tolerance: float | None = None) -> Int8Parity:
    """The int8 model against the original: outputs and actions, the actions where the original's
    choice is clearer than one int8 output step, and what rounding only the input would cost.
    ``post_training_agreement``: that of the post-training model, None where it is this one;
    ``tolerance``: a continuous action's (:class:`Tolerances`)."""
    measured = held.parity(expected_int8_outputs(int8, held.outputs, held.observations), policy, tolerance)
    # int8 outputs move in steps of the output scale: a choice closer than one step is a coin toss.
    step = record.output.scale or 0.0
    if int8.teacher is not None and int8.teacher.clipped:
        step *= int8.teacher.decision_scale  # in the original's units
    clear = held.margins >= step
    return Int8Parity(
        **measured.model_dump(exclude_unset=True), output_step=step,
        action_agreement_margin_above_step=agreement(policy.actions, held.observations[clear],
                                                     held.actions[clear], tolerance) if clear.any() else 1.0,
        observations_margin_above_step=int(clear.sum()),
        input_rounding_agreement=input_rounding_agreement(record.input_normalization, record.input.model_dump(),
                                                          original, held.observations, held.actions, tolerance),
        meets_target=measured.action_agreement >= cfg.int8_agreement_target, fine_tuning=fine_tuning,
        post_training_action_agreement=measured.action_agreement if post_training_agreement is None
        else post_training_agreement)


def evaluate(cfg: Settings, entry: PolicyEntry, players: dict[str, BatchPolicy], settings: EnvironmentEvaluation,
             make_env: MakeEnv) -> Evaluation:
    """Every player's returns on the evaluation seeds; the float32 one's with its interval."""
    seeds = list(range(settings.seed_start, settings.seed_start + settings.episodes))
    results = {variant: evaluate_policy(entry.env_id, act, seeds, max_steps=settings.max_steps,
                                        make_env=make_env, progress=False) for variant, act in players.items()}
    interval = cfg.return_interval
    low, high = bootstrap_mean_interval(results["float32"].returns, resamples=interval.resamples,
                                        seed=interval.seed, confidence_level=interval.confidence)
    return Evaluation(seeds=[seeds[0], seeds[-1]], max_steps=settings.max_steps, **{
        variant: Returns(mean=r.mean, std=r.std, **({"interval": [low, high]} if variant == "float32" else {}))
        for variant, r in results.items()})


def measured_models(cfg: Settings, models: dict[str, Model], reports: dict[str, Parity], held: HeldOut,
                    evaluation: Evaluation, episodes: int, default: tuple[str, str]) -> dict[str, Model]:
    """The models' manifest entries with what was measured of them and, for int8, whether the
    runner may load it by default."""
    low, high = evaluation.float32.interval
    chosen, why = default
    int8 = reports["int8"]
    only = {"float32": {}, "int8": {"input_rounding_agreement": int8.input_rounding_agreement,
                                    "post_training_action_agreement": int8.post_training_action_agreement}}
    interval = {"float32": {"interval": Interval(confidence=cfg.return_interval.confidence, low=low, high=high)},
                "int8": {}}
    measured = {}
    for precision in PRECISIONS:
        report = reports[precision]
        result = Measured(held_out_observations=len(held.observations), action_agreement=report.action_agreement,
                          max_abs_diff=report.max_abs_diff,
                          return_=MeasuredReturn(mean=getattr(evaluation, precision).mean, episodes=episodes,
                                                 seeds=evaluation.seeds, **interval[precision]),
                          **only[precision], **({"action_tolerance": report.action_tolerance}
                                                if report.action_tolerance is not None else {}))
        measured[precision] = models[precision].model_copy(update={"measured": result})
    measured["int8"] = measured["int8"].model_copy(update={
        "safe": chosen == "int8", **({"unsafe_reason": why} if chosen != "int8" else {})})
    return measured


def convert_policy(cfg: Settings, entry: PolicyEntry, folder: Path, make_env: MakeEnv) -> PolicyResult:
    """Convert, fine-tune, check, evaluate and time one policy (its episodes in environments from
    ``make_env``), writing its models and sample observations into ``folder``."""
    settings = environment_settings(cfg, entry)
    tolerances = action_tolerances(cfg, entry, settings)
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

    held = held_out_set(cfg, entry, model, original, held_out, spec.output)
    reports: dict[str, Parity] = {"float32": held.parity(held.outputs, tflite["float32"], tolerances.float32)}
    check_float32(cfg, entry.name, reports["float32"])
    post_training_agreement = None if int8 is post_training else held_out_agreement(
        spec, post_training, held.observations, held.actions, tolerances.int8)
    reports["int8"] = int8_parity(cfg, held, tflite["int8"], models["int8"], int8, post_training_agreement,
                                  fine_tuning, original, tolerances.int8)
    players = {"original": original, **{p: tflite[p].actions for p in PRECISIONS}}
    evaluation = evaluate(cfg, entry, players, settings, make_env)
    default = default_precision(reports["int8"].action_agreement, cfg.int8_agreement_target, evaluation.int8.mean,
                                tuple(evaluation.float32.interval), tolerances.int8)
    models = measured_models(cfg, models, reports, held, evaluation, settings.episodes, default)

    samples = held.observations[:cfg.sample_observations]
    np.save(folder / sample_file(entry.name), samples, allow_pickle=False)
    manifest = spec.model_copy(update={
        "models": models, "default_precision": default[0], "default_reason": default[1],
        "sample": Sample(file=sample_file(entry.name),
                         expected_actions={p: listed(tflite[p].actions(samples)) for p in PRECISIONS})})
    benchmark = PolicyBenchmark(
        env_id=entry.env_id, output=spec.output, calibration_observations=len(calibration),
        conversion_wall_time_s=conversion_time,
        size_bytes={"original": size_of(entry.model_path), **{p: models[p].size_bytes for p in PRECISIONS}},
        float32=reports["float32"], int8=reports["int8"], evaluation=evaluation, default_precision=default[0],
        latency={variant: latency(act, held.observations[0], cfg.benchmark_calls)
                 for variant, act in players.items()})
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
    command_line = arguments(sys.argv[1:])
    env_ids = command_line.env
    for name in command_line.policies:
        if not (INDEX_DIR / name).is_dir():
            raise InputError(f"no policy {name!r} in {INDEX_DIR}: run the stage that exports it first")
        entries.append(read_entry(INDEX_DIR / name))
        if entries[-1].env_id not in env_ids:
            raise InputError(f"policy {name!r} plays {entries[-1].env_id}, not --env {' or '.join(env_ids)}: "
                             f"the stage's declaration in dvc.yaml names the wrong environment")
    for entry in entries:  # every policy's settings, before the first conversion
        action_tolerances(cfg, entry, environment_settings(cfg, entry))
        check_seeds_unseen(cfg, entry)
    for entry in entries:
        started = time.perf_counter()
        benchmark = convert(cfg, entry).benchmark
        print(f"{entry.name}: int8 agreement {benchmark.int8.action_agreement:.4f} (post-training "
              f"{benchmark.int8.post_training_action_agreement:.4f}), default {benchmark.default_precision} "
              f"({time.perf_counter() - started:.1f} s)", flush=True)


if __name__ == "__main__":
    run_stage(main)
