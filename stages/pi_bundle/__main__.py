"""Every trained policy as a Raspberry Pi bundle that needs no TensorFlow.

For each policy in the index: observations are recorded from its own greedy episodes on seeds no
training or evaluation uses (one set calibrates the int8 quantization, one teaches the int8
model, a larger held-out set measures parity); it is converted to TFLite in float32 and in
full-integer int8: the int8 copy of a Keras policy after quantization-aware fine-tuning
(stages/common/qat.py), that of a TF-Agents Q-network (Atari) with action preferences built from
pairwise Q-value comparisons, its comparison layer fine-tuned the same way (stages/common/tflite.py);
the post-training int8 model is measured beside them and ships if it agrees better on the
fine-tuning observations. Both shipped models are compared with the original on the
held-out observations, evaluated with the shared evaluation helper on the evaluation seeds beside
the original, and timed one action at a time.

Each policy's manifest entry records what was measured per precision and the precision the
runner loads by default: int8 only where it keeps ``int8_agreement_target`` of the held-out
actions and its mean return lies inside the float32 policy's interval (``return_interval``);
float32 otherwise, and the int8 model is marked unsafe (the runner refuses it unless told).

The bundle (a folder and a byte-reproducible .tar.gz of it) holds the models, manifest.json (per
policy: environment, observation shape and dtype, action rule, quantization, measurements,
default precision, sha256, converter version), the runner ``run_policy.py`` (NumPy and LiteRT
only), its requirements and a README. The TFLite models are evaluated through that same runner
class, so what is measured here is what runs on the Pi.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import tensorflow as tf

from pi.policy_runtime import (
    ACTION_RULES,
    FORMAT,
    MANIFEST,
    TFLitePolicy,
    denormalize,
    dequantize,
    normalize,
    quantize,
    sha256,
    verify_bundle,
)
from pi.run_policy import latency
from stages.common.bundle import size_of, write_reproducible_tar_gz
from stages.common.dag import StageSpec, policy_producers, read_dag
from stages.common.evaluation import evaluate_policy
from stages.common.io import atomic_folder, write_json
from stages.common.policies import INDEX_DIR, PolicyEntry, load_index, load_policy, make_policy_env
from stages.common.seeding import seed_everything
from stages.common.settings import InputError, ParamError, Params, run_stage
from stages.common.q_network_graph import UnreadableNetwork, read_q_network
from stages.common.qat import (
    XNNPACK_MULTIPLIER_LIMIT,
    FineTuningOptions,
    NotFineTunable,
    decision_network,
    fine_tune,
    fine_tune_pairwise_layer,
    int8_hidden_features,
)
from stages.common.statistics import bootstrap_mean_interval
from stages.common.tflite import (
    Int8Model,
    convert_decision_network,
    convert_float32,
    convert_int8,
    convert_pairwise,
    describe_model,
    largest_multiplier,
    load_original,
    normalization_of,
    original_outputs,
    pairwise_layer,
)
from stages.pi_bundle import EnvironmentEvaluation, ObservationSet, Settings, settings

BUNDLE = Path("data/pi_bundle")
ARCHIVE = Path("data/pi_bundle.tar.gz")
REPORTS = Path("reports/pi_bundle")
NAME = "pi_bundle"
PI_FILES = Path("pi")
RUNNER = "run_policy.py"
PRECISIONS = ("float32", "int8")


# --- observations -----------------------------------------------------------------------------


def environment_settings(cfg: Settings, entry: PolicyEntry) -> EnvironmentEvaluation:
    if entry.env_id not in cfg.evaluation:
        raise ParamError(f"pi_bundle.evaluation has no entry for env_id {entry.env_id!r} "
                         f"(policy {entry.name}); add its evaluation seeds and episode cap")
    return cfg.evaluation[entry.env_id]


def shipped_files(stages: list[StageSpec]) -> list[Path]:
    """The files of pi/ the bundle ships: this stage's pi/ dependencies in dvc.yaml (the runner,
    the runtime it imports, the requirements and the README)."""
    stage = next(s for s in stages if s.group == NAME)
    return [Path(dep) for dep in stage.deps if Path(dep).parent == PI_FILES]


MakeEnv = Callable[[], Any] | None


class _Lent(gym.Wrapper):
    """An environment lent to one evaluation: closing it hands it back for the next one."""

    def __init__(self, env: Any, idle: list[Any]) -> None:
        super().__init__(env)
        self._idle = idle

    def close(self) -> None:
        self._idle.append(self.env)


@contextmanager
def episode_environments(entry: PolicyEntry) -> Iterator[MakeEnv]:
    """What builds the environments of a policy's episodes, for ``evaluate_policy``'s ``make_env``.

    Atari policies see preprocessed frames (``make_policy_env``). Building one of those loads the
    game's ROM, about a quarter of a second, and the stage plays a few dozen short batches of
    episodes per policy; so an environment, once built, is lent again to the next batch. That
    changes no episode: each starts from ``reset(seed=...)``, which reloads the game and reseeds
    every random choice of the wrappers. Other policies play the environment's own observations
    (``None``: ``evaluate_policy`` makes them, cheaply). All built environments close at the end.
    """
    if not entry.preprocessing:
        yield None
        return
    idle: list[Any] = []
    built: list[Any] = []

    def lend() -> Any:
        if idle:
            return _Lent(idle.pop(), idle)
        built.append(make_policy_env(entry))
        return _Lent(built[-1], idle)

    try:
        yield lend
    finally:
        for env in built:
            env.close()


def record_observations(entry: PolicyEntry, policy: Callable[[np.ndarray], np.ndarray],
                        wanted: ObservationSet, max_steps: int, make_env: MakeEnv) -> np.ndarray:
    """``wanted.observations`` observations of the policy's greedy episodes, one seed per episode
    from ``wanted.seed_start``, evenly spaced over all steps played (episodes are played in
    chunks until there are enough; fewer if ``max_episodes`` runs out first)."""
    recorded: list[np.ndarray] = []

    def recording(observations: np.ndarray) -> np.ndarray:
        recorded.append(np.array(observations))
        return policy(observations)

    seed, last = wanted.seed_start, wanted.seed_start + wanted.max_episodes
    while sum(map(len, recorded)) < wanted.observations and seed < last:
        seeds = list(range(seed, min(seed + wanted.episodes_per_batch, last)))
        evaluate_policy(entry.env_id, recording, seeds, max_steps=max_steps, make_env=make_env, progress=False)
        seed = seeds[-1] + 1
    observations = np.concatenate(recorded)
    # Evenly spaced over every step played: the episodes' ends as well as their starts.
    observations = observations[np.linspace(0, len(observations) - 1, min(len(observations), wanted.observations)).astype(np.int64)]
    if len(observations) < wanted.observations:
        print(f"warning: {entry.name}: only {len(observations)} observations in "
              f"{wanted.max_episodes} episodes (wanted {wanted.observations})")
    return observations


def check_seeds_unseen(cfg: Settings, entry: PolicyEntry) -> None:
    for key, wanted in (("calibration", cfg.calibration), ("parity", cfg.parity),
                        ("fine_tuning.observations", cfg.fine_tuning.observations)):
        seen = [s for s in entry.training_seeds if wanted.seed_start <= s < wanted.seed_start + wanted.max_episodes]
        if seen:
            raise ParamError(f"pi_bundle.{key}.seed_start = {wanted.seed_start} is not allowed: policy "
                             f"{entry.name} was trained on seed {seen[0]} of that range")


# --- parity -----------------------------------------------------------------------------------


def batched(function: Callable[[np.ndarray], np.ndarray], observations: np.ndarray,
            size: int = 1024) -> np.ndarray:
    return np.concatenate([function(observations[i:i + size]) for i in range(0, len(observations), size)])


def margins(output: str, reference: np.ndarray) -> np.ndarray:
    """How far each of the original's outputs is from choosing another action (inf: no margin
    to speak of, the output being the action itself)."""
    if output == "p_left":
        return np.abs(reference.reshape(len(reference)) - 0.5)
    if output in ("action_probabilities", "q_values"):
        top_two = np.sort(reference, axis=1)[:, -2:]
        return top_two[:, 1] - top_two[:, 0]
    return np.full(len(reference), np.inf)


def parity(reference: np.ndarray, reference_actions: np.ndarray, outputs: np.ndarray,
           actions: np.ndarray, ties: np.ndarray) -> dict[str, Any]:
    same = actions == reference_actions
    difference = np.abs(outputs.astype(np.float64) - reference.astype(np.float64))
    return {
        "observations": len(reference),
        "max_abs_diff": float(np.max(difference)),
        # relative to the output's size where it exceeds 1 (Q-values near 100 have ulps of 1e-5)
        "max_scaled_diff": float(np.max(difference / np.maximum(1.0, np.abs(reference)))),
        "action_agreement": float(np.mean(same)),
        "action_agreement_without_ties": float(np.mean(same[~ties])) if (~ties).any() else 1.0,
        "ties": int(ties.sum()),
    }


def input_rounding_agreement(model: dict[str, Any], original: Callable[[np.ndarray], np.ndarray],
                             observations: np.ndarray, reference_actions: np.ndarray) -> float | None:
    """The original policy's action agreement with itself when only its input is rounded to the
    int8 model's input grid (float weights and activations otherwise): how much of the int8
    model's disagreement the 8-bit input alone causes.
    None when the int8 model's input is not quantized (integer observations such as Atari frames)."""
    normalization = model.get("input_normalization")
    if normalization is None or model["input"]["scale"] is None:
        return None
    grid = dequantize(quantize(normalize(observations, normalization), model["input"]), model["input"])
    rounded = denormalize(grid, normalization).astype(observations.dtype)
    return float(np.mean(batched(original, rounded) == reference_actions))


# --- the int8 model -------------------------------------------------------------------------


def model_spec(file: str, content: bytes, normalization: dict | None, outputs: str, output_kind: str) -> dict:
    """A model's manifest entry (measurements and safety are added once measured)."""
    return {"file": file, "size_bytes": len(content), "converted_by": f"tensorflow {tf.__version__}",
            "input_normalization": normalization, "outputs": outputs, "output_kind": output_kind,
            "action_rule": ACTION_RULES[output_kind], **describe_model(content)}


def int8_model_spec(file: str, model: Int8Model) -> dict:
    return model_spec(file, model.content, model.input_normalization, model.outputs, model.output_kind)


def scratch_policy(folder: Path, spec: dict, model: Int8Model) -> TFLitePolicy:
    """An int8 model not (yet) in the bundle, loaded through the runner's class."""
    file = f"{len(list(folder.iterdir()))}.tflite"
    (folder / file).write_bytes(model.content)
    return TFLitePolicy(folder, {**spec, "models": {"int8": int8_model_spec(file, model)}}, "int8")


def best_candidate(made: dict[str, Int8Model], spec: dict, observations: np.ndarray, reference: np.ndarray
                   ) -> tuple[str, dict[str, Int8Model], dict[str, float], dict[str, str]]:
    """Of the int8 models ``made`` (post-training first, then ever more worked ones), the one that
    chooses the original's actions (``reference``) on most of the fine-tuning ``observations``;
    on a tie, the later one. A model LiteRT's default delegate would abort on (XNNPACK: a
    requantization multiplier of 256 or more) is refused. Returns the chosen name, the candidates,
    their agreements and the refusals."""
    candidates, refused = {}, {}
    for name, model in made.items():
        multiplier = largest_multiplier(model.content) if name != "post_training" else 0.0
        if multiplier >= XNNPACK_MULTIPLIER_LIMIT:
            refused[name] = f"requantization multiplier {multiplier:.0f}"
        else:
            candidates[name] = model
    with tempfile.TemporaryDirectory() as scratch:
        agreement = {name: float(np.mean(batched(scratch_policy(Path(scratch), spec, m).actions, observations)
                                         == reference))
                     for name, m in candidates.items()}
    chosen = max(reversed(list(candidates)), key=lambda name: agreement[name])
    return chosen, candidates, agreement, refused


def fine_tuned_int8(cfg: Settings, entry: PolicyEntry, model: Any, original: Callable[[np.ndarray], np.ndarray],
                    calibration: np.ndarray, post_training: Int8Model, spec: dict,
                    max_steps: int, make_env: MakeEnv) -> tuple[Int8Model, dict[str, Any]]:
    """The int8 model to ship: the quantization-aware fine-tuned one where the policy's network
    allows it, unless the post-training one agrees better with the original on the fine-tuning
    observations (never on the held-out ones, which measure the choice); and what was done."""
    normalization = normalization_of(calibration.astype(entry.observation_dtype))
    if entry.output == "tf_agents_policy":
        return pairwise_int8(cfg, entry, model, original, calibration, post_training, spec, max_steps, make_env)
    if normalization is None:
        return post_training, {"applied": False, "why": "integer observations: quantized after training"}
    tuning = cfg.fine_tuning
    started = time.perf_counter()
    training = record_observations(entry, original, tuning.observations, max_steps, make_env)
    observations = np.concatenate([training, calibration])
    try:
        teacher = decision_network(model, entry.output, entry.n_actions, normalization, observations,
                                   tuning.output_quantile)
    except NotFineTunable as error:
        return post_training, {"applied": False, "why": f"not fine-tuned: {error}"}
    normalize_ = lambda batch: (batch - normalization[0]) / normalization[1]  # noqa: E731
    reference = batched(original, observations)
    taught = np.argmax(teacher.preferences(normalize_(observations)), axis=1)
    if np.mean(taught == reference) < 0.999:  # a network that is not what it seems
        return post_training, {"applied": False, "why": "not fine-tuned: the network read as dense layers "
                               f"chooses the original's action on only {np.mean(taught == reference):.4f} "
                               "of the fine-tuning observations"}
    options = FineTuningOptions(steps=tuning.steps, batch_size=tuning.batch_size,
                                learning_rate=tuning.learning_rate, range_updates=tuning.range_updates,
                                seed=cfg.seed)
    made = {"post_training": post_training}
    for start in tuning.initializations:
        tuned, _ = fine_tune(teacher, normalize_(observations), normalize_(calibration), options,
                             fresh=start == "fresh")
        made[f"fine_tuned_from_{start}"] = convert_decision_network(tuned, normalize_(calibration), normalization,
                                                                    teacher)
    chosen, candidates, agreement, refused = best_candidate(made, spec, observations, reference)
    return candidates[chosen], {
        "applied": True, "shipped": chosen, "observations": len(observations), "steps": tuning.steps,
        "decision_scale": teacher.decision_scale if teacher.clipped else None,
        "action_agreement_on_fine_tuning_observations": agreement, "refused": refused,
        "wall_time_s": time.perf_counter() - started}


def pairwise_int8(cfg: Settings, entry: PolicyEntry, model: Any, original: Callable[[np.ndarray], np.ndarray],
                  calibration: np.ndarray, post_training: Int8Model, spec: dict,
                  max_steps: int, make_env: MakeEnv) -> tuple[Int8Model, dict[str, Any]]:
    """The int8 model to ship for a TF-Agents saved Q-policy, which has no Keras network: its
    Q-network read back from the saved graph and converted with action preferences built from
    pairwise comparisons as output (stages/common/tflite.py says why), its pairwise layer as it is
    and fine-tuned with its int8 rounding in the loop (stages/common/qat.py); the one of these and
    the post-training model of the whole saved policy that agrees best with the original on the
    fine-tuning observations ships."""
    why = "a TF-Agents saved policy"
    try:
        network = read_q_network(model)
    except UnreadableNetwork as error:
        return post_training, {"applied": False, "why": f"{why} whose Q-network could not be read back "
                               f"({error}): quantized after training"}
    reference = batched(original, calibration)
    rebuilt = np.argmax(batched(lambda batch: network.q_values(tf.constant(batch)).numpy(), calibration), axis=1)
    if np.mean(rebuilt == reference) < 0.999:  # a graph that is not what it seems
        return post_training, {"applied": False, "why": f"{why} whose Q-network, read back from its graph, "
                               f"chooses the original's action on only {np.mean(rebuilt == reference):.4f} "
                               "of the calibration observations: quantized after training"}
    tuning = cfg.fine_tuning
    started = time.perf_counter()
    training = record_observations(entry, original, tuning.observations, max_steps, make_env)
    observations = np.concatenate([training, calibration]).astype(entry.observation_dtype)
    teacher = pairwise_layer(network, calibration.astype(entry.observation_dtype), cfg.pairwise_output_quantile)
    normalization = normalization_of(calibration.astype(entry.observation_dtype))
    features = int8_hidden_features(network, observations, calibration.astype(entry.observation_dtype), normalization)
    options = FineTuningOptions(steps=tuning.steps, batch_size=tuning.batch_size,
                                learning_rate=tuning.learning_rate, range_updates=tuning.range_updates,
                                seed=cfg.seed)
    reference = batched(original, observations)
    tuned, _ = fine_tune_pairwise_layer(features, features[len(training):], teacher, reference, options)
    made = {"post_training": post_training,
            **{name: convert_pairwise(entry, network, calibration, layer, teacher)
               for name, layer in (("pairwise_output", teacher), ("fine_tuned_pairwise_output", tuned))}}
    chosen, candidates, agreement, refused = best_candidate(made, spec, observations, reference)
    return candidates[chosen], {
        "applied": True, "shipped": chosen, "observations": len(observations), "steps": tuning.steps,
        "what": f"{why}: its Q-network read back from the saved graph, with action preferences from "
                "pairwise comparisons as output; only the pairwise layer fine-tuned",
        "action_agreement_on_fine_tuning_observations": agreement, "refused": refused,
        "wall_time_s": time.perf_counter() - started}


def expected_int8_outputs(int8: Int8Model, reference: np.ndarray, held_out: np.ndarray) -> np.ndarray:
    """The outputs the int8 model approximates, in its own representation."""
    if int8.float_outputs is not None:
        return int8.float_outputs(held_out)
    if int8.teacher is not None:
        normalization = int8.input_normalization
        center, scale = (np.asarray(normalization[key], np.float32) for key in ("center", "scale"))
        return int8.teacher.preferences((held_out - center) / scale)
    if int8.q_differences:
        return reference - reference[:, :1]
    return reference


# --- the default precision -------------------------------------------------------------------


def default_precision(agreement: float, target: float, int8_return: float,
                      float32_interval: tuple[float, float]) -> tuple[str, str]:
    """The precision the runner loads by default, and why: int8 only where it keeps at least
    ``target`` of the held-out actions AND its mean return lies inside the float32 policy's
    interval; float32 otherwise."""
    low, high = float32_interval
    if agreement < target:
        return "float32", (f"int8 chooses the original's action on {agreement:.2%} of held-out observations, "
                           f"below the {target:.0%} target")
    if not low <= int8_return <= high:
        return "float32", (f"int8's mean return {int8_return:g} lies outside the float32 policy's interval "
                           f"[{low:g}, {high:g}]")
    return "int8", (f"int8 chooses the original's action on {agreement:.2%} of held-out observations "
                    f"(target {target:.0%}) and its mean return {int8_return:g} lies inside the float32 "
                    f"policy's interval [{low:g}, {high:g}]")


# --- one policy -------------------------------------------------------------------------------


def bundle_policy(cfg: Settings, entry: PolicyEntry, folder: Path, make_env: MakeEnv) -> tuple[dict, dict]:
    """Convert, fine-tune, check, evaluate and time one policy (its episodes in environments from
    ``make_env``); its manifest entry and its report."""
    settings = environment_settings(cfg, entry)
    check_seeds_unseen(cfg, entry)
    model = load_original(entry)
    original = load_policy(entry)
    calibration = record_observations(entry, original, cfg.calibration, settings.max_steps, make_env)
    held_out = record_observations(entry, original, cfg.parity, settings.max_steps, make_env)
    started = time.perf_counter()
    float32 = convert_float32(entry, model)
    post_training = convert_int8(entry, model, calibration)
    conversion_time = time.perf_counter() - started

    spec = {
        "env_id": entry.env_id, "env_kwargs": entry.env_kwargs, "max_steps": settings.max_steps,
        "observation_shape": list(entry.observation_shape),
        "observation_dtype": entry.observation_dtype, "n_actions": entry.n_actions,
        "output": post_training.output_kind, "action_rule": ACTION_RULES[post_training.output_kind],
        "preprocessing": entry.preprocessing,
        "source": {"policy": entry.name, "stage": entry.stage,
                   "algorithm": getattr(entry, "algorithm", None) or entry.details.get("algorithm", entry.name),
                   "seed": getattr(entry, "seed", None)},
        "models": {},
    }
    int8, fine_tuning = fine_tuned_int8(cfg, entry, model, original, calibration, post_training, spec,
                                        settings.max_steps, make_env)
    spec["models"]["float32"] = model_spec(f"models/{entry.name}.float32.tflite", float32, None,
                                           "as the original model", spec["output"])
    spec["models"]["int8"] = int8_model_spec(f"models/{entry.name}.int8.tflite", int8)
    spec["models"]["int8"]["fine_tuned"] = fine_tuning.get("shipped", "").startswith("fine_tuned")
    spec["models"]["int8"]["made_by"] = fine_tuning.get("shipped", "post_training")
    (folder / spec["models"]["float32"]["file"]).write_bytes(float32)
    (folder / spec["models"]["int8"]["file"]).write_bytes(int8.content)

    reference = batched(original_outputs(entry, model), held_out)
    reference_actions = batched(original, held_out)
    margin = margins(spec["output"], reference)
    ties = margin < cfg.float32_tolerance
    report: dict[str, Any] = {"env_id": entry.env_id, "output": spec["output"],
                              "calibration_observations": len(calibration),
                              "conversion_wall_time_s": conversion_time,
                              "size_bytes": {"original": size_of(entry.model_path)}}
    tflite = {p: TFLitePolicy(folder, spec, p) for p in PRECISIONS}
    report["float32"] = parity(reference, reference_actions, batched(tflite["float32"].outputs, held_out),
                               batched(tflite["float32"].actions, held_out), ties)
    report["int8"] = parity(expected_int8_outputs(int8, reference, held_out), reference_actions,
                            batched(tflite["int8"].outputs, held_out), batched(tflite["int8"].actions, held_out), ties)
    for precision in PRECISIONS:
        report["size_bytes"][precision] = spec["models"][precision]["size_bytes"]
    check_float32(cfg, entry, report["float32"])
    # int8 outputs move in steps of the output scale: a choice closer than one step is a coin toss.
    step = spec["models"]["int8"]["output"]["scale"] or 0.0
    if int8.teacher is not None and int8.teacher.clipped:
        step *= int8.teacher.decision_scale  # in the original's units
    clear = margin >= step
    report["int8"]["output_step"] = step
    report["int8"]["action_agreement_margin_above_step"] = float(np.mean(
        batched(tflite["int8"].actions, held_out[clear]) == reference_actions[clear])) if clear.any() else 1.0
    report["int8"]["observations_margin_above_step"] = int(clear.sum())
    report["int8"]["input_rounding_agreement"] = input_rounding_agreement(
        spec["models"]["int8"], original, held_out, reference_actions)
    report["int8"]["meets_target"] = report["int8"]["action_agreement"] >= cfg.int8_agreement_target
    report["int8"]["fine_tuning"] = fine_tuning
    if int8 is not post_training:
        with tempfile.TemporaryDirectory() as scratch:
            before = scratch_policy(Path(scratch), spec, post_training)
            report["int8"]["post_training_action_agreement"] = float(np.mean(
                batched(before.actions, held_out) == reference_actions))
    else:
        report["int8"]["post_training_action_agreement"] = report["int8"]["action_agreement"]

    seeds = list(range(settings.seed_start, settings.seed_start + settings.episodes))
    players = {"original": original, **{p: tflite[p].actions for p in PRECISIONS}}
    report["evaluation"] = {"seeds": [seeds[0], seeds[-1]], "max_steps": settings.max_steps}
    returns = {}
    for variant, act in players.items():
        result = evaluate_policy(entry.env_id, act, seeds, max_steps=settings.max_steps,
                                 make_env=make_env, progress=False)
        report["evaluation"][variant] = {"mean": result.mean, "std": result.std}
        returns[variant] = result.returns
    interval = cfg.return_interval
    low, high = bootstrap_mean_interval(returns["float32"], resamples=interval.resamples, seed=interval.seed,
                                        confidence_level=interval.confidence)
    report["evaluation"]["float32"]["interval"] = [low, high]
    chosen, why = default_precision(report["int8"]["action_agreement"], cfg.int8_agreement_target,
                                    report["evaluation"]["int8"]["mean"], (low, high))
    report["default_precision"] = chosen
    spec["default_precision"], spec["default_reason"] = chosen, why
    for precision in PRECISIONS:
        spec["models"][precision]["measured"] = {
            "held_out_observations": len(held_out),
            "action_agreement": report[precision]["action_agreement"],
            "max_abs_diff": report[precision]["max_abs_diff"],
            "return": {"mean": report["evaluation"][precision]["mean"], "episodes": len(seeds),
                       "seeds": [seeds[0], seeds[-1]]}}
    spec["models"]["float32"]["measured"]["return"]["interval"] = {"confidence": interval.confidence,
                                                                   "low": low, "high": high}
    spec["models"]["int8"]["measured"].update({
        "input_rounding_agreement": report["int8"]["input_rounding_agreement"],
        "post_training_action_agreement": report["int8"]["post_training_action_agreement"]})
    spec["models"]["int8"]["safe"] = chosen == "int8"
    if chosen != "int8":
        spec["models"]["int8"]["unsafe_reason"] = why

    report["latency"] = {variant: latency(act, held_out[0], cfg.benchmark_calls)
                         for variant, act in players.items()}

    samples = held_out[:cfg.sample_observations]
    sample_file = f"observations/{entry.name}.npy"
    np.save(folder / sample_file, samples, allow_pickle=False)
    spec["sample"] = {"file": sample_file, "expected_actions": {
        p: [int(a) for a in tflite[p].actions(samples)] for p in PRECISIONS}}
    return spec, report


def check_float32(cfg: Settings, entry: PolicyEntry, result: dict[str, Any]) -> None:
    """The float32 model must act as the original: a bundle that does not is not written.

    Outputs may differ by ``float32_tolerance``, scaled by the output's size above 1: float32
    sums taken in another order differ by a few units in the last place, 4e-6 near 64.
    """
    if result["max_scaled_diff"] > cfg.float32_tolerance or result["action_agreement_without_ties"] < 1.0:
        raise RuntimeError(f"{entry.name}: the float32 TFLite model differs from the original "
                           f"(max |diff| / max(1, |output|) {result['max_scaled_diff']:.3g}, action "
                           f"agreement without ties {result['action_agreement_without_ties']:.6f})")


# --- the bundle -------------------------------------------------------------------------------


def write_manifest(folder: Path, policies: dict[str, dict]) -> dict[str, Any]:
    files = {path.relative_to(folder).as_posix(): sha256(path)
             for path in sorted(folder.rglob("*")) if path.is_file()}
    manifest = {
        "format": FORMAT,
        "description": "Trained policies of the chapter 18 pipeline as TFLite models; run them with "
                       "run_policy.py (see README.md)",
        "converted_by": f"tensorflow {tf.__version__}",
        "runtime": f"ai-edge-litert {version('ai-edge-litert')}",
        "files": files,
        "policies": policies,
    }
    write_json(folder / MANIFEST, manifest)
    return manifest


def print_table(reports: dict[str, dict]) -> None:
    print(f"{'policy':40} {'int8 PTQ':>8} {'int8':>7} {'input only':>10} {'default':>7} {'f32 max diff':>12} "
          f"{'return orig/f32/int8':>22} {'median ms orig/f32/int8':>24} {'KB orig/f32/int8':>16}")
    for name, r in reports.items():
        returns = "/".join(f"{r['evaluation'][v]['mean']:.1f}" for v in ("original", *PRECISIONS))
        times = "/".join(f"{r['latency'][v]['median_wall_time_s'] * 1e3:.3f}" for v in ("original", *PRECISIONS))
        sizes = "/".join(f"{r['size_bytes'][v] / 1024:.0f}" for v in ("original", *PRECISIONS))
        rounding = r["int8"]["input_rounding_agreement"]
        rounding = "-" if rounding is None else f"{rounding:.4f}"
        print(f"{name:40} {r['int8']['post_training_action_agreement']:8.4f} {r['int8']['action_agreement']:7.4f} "
              f"{rounding:>10} {r['default_precision']:>7} {r['float32']['max_abs_diff']:12.2e} "
              f"{returns:>22} {times:>24} {sizes:>16}")


def main() -> None:
    cfg = settings(sys.argv[1:], Params.load())
    seed_everything(cfg.seed)
    stages = read_dag()
    index = load_index(INDEX_DIR, {name: stage.name for name, stage in policy_producers(stages).items()})
    if not index:
        raise InputError(f"no stage of dvc.yaml exports a policy to {INDEX_DIR}: nothing to bundle")
    for entry in index.values():  # every policy's settings, before the first conversion
        environment_settings(cfg, entry)
        check_seeds_unseen(cfg, entry)
    shipped = shipped_files(stages)
    if PI_FILES / RUNNER not in shipped:
        raise InputError(f"dvc.yaml: stage {NAME} must depend on {PI_FILES / RUNNER}, the runner it ships")
    reports: dict[str, dict] = {}
    with atomic_folder(BUNDLE) as folder:
        for directory in ("models", "observations"):
            (folder / directory).mkdir()
        for path in shipped:
            shutil.copyfile(path, folder / path.name)
        (folder / RUNNER).chmod(0o755)
        policies = {}
        for name, entry in index.items():
            started = time.perf_counter()
            with episode_environments(entry) as make_env:
                policies[name], reports[name] = bundle_policy(cfg, entry, folder, make_env)
            reports[name]["bundle_wall_time_s"] = time.perf_counter() - started
            int8 = reports[name]["int8"]
            print(f"{name}: int8 agreement {int8['action_agreement']:.4f} (post-training "
                  f"{int8['post_training_action_agreement']:.4f}), default {reports[name]['default_precision']} "
                  f"({time.perf_counter() - started:.1f} s)", flush=True)
        write_manifest(folder, policies)
        verify_bundle(folder)
    write_reproducible_tar_gz(BUNDLE, ARCHIVE, executables=frozenset({RUNNER}))

    write_json(REPORTS / "benchmark.json", reports)
    write_json(REPORTS / "metrics.json", {
        name: {"int8_action_agreement": r["int8"]["action_agreement"],
               "int8_meets_target": r["int8"]["meets_target"],
               "int8_input_rounding_agreement": r["int8"]["input_rounding_agreement"],
               "int8_post_training_action_agreement": r["int8"]["post_training_action_agreement"],
               "int8_fine_tuned": r["int8"]["fine_tuning"].get("shipped", "").startswith("fine_tuned"),
               "int8_is_default": r["default_precision"] == "int8",
               "float32_max_abs_diff": r["float32"]["max_abs_diff"],
               "float32_action_agreement": r["float32"]["action_agreement"],
               "return_original": r["evaluation"]["original"]["mean"],
               "return_float32": r["evaluation"]["float32"]["mean"],
               "return_int8": r["evaluation"]["int8"]["mean"],
               "size_bytes_float32": r["size_bytes"]["float32"],
               "size_bytes_int8": r["size_bytes"]["int8"]}
        for name, r in reports.items()})
    print_table(reports)


if __name__ == "__main__":
    run_stage(main)
