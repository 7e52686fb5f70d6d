"""What the Pi runner needs to load and play a bundled policy, with NumPy (and, to play,
Gymnasium) only.

The pi_bundle stage copies it next to ``run_policy.py``; the pipeline imports it to check the
bundles it builds and to time their models. What a policy means (its action rules and its Atari
observations) is in pi/policy_contract.py, which the trainers share: editing this module reruns
the Pi bundle, never a training stage.

- **Checksums**: :func:`sha256` and :func:`verify_bundle` (the manifest's fields, then every file
  of a bundle against its manifest, before anything is loaded).
- **Models**: :class:`TFLitePolicy` (a TFLite model, its quantization and action rule); :func:`latency`.
- **Playing**: :func:`make_env` (the policy's environment, Atari observations included) and
  :func:`play`.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

try:  # the pipeline's package; in the bundle, the module next to this file (run_policy.py)
    from pi.policy_contract import BundleError, actions_from_outputs, make_atari_env
except ImportError:
    from policy_contract import BundleError, actions_from_outputs, make_atari_env

try:  # only playing needs Gymnasium; computing actions runs on NumPy and LiteRT alone
    import gymnasium as gym
except ImportError:  # pragma: no cover - the Pi without requirements-pi-gymnasium.txt
    gym = None

MANIFEST = "manifest.json"
FORMAT = 1


# --- checksums and the manifest ----------------------------------------------------------------


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_bundle(bundle: Path) -> dict[str, Any]:
    """The manifest, once every file it lists exists with its recorded sha256."""
    path = bundle / MANIFEST
    if not path.is_file():
        raise BundleError(f"no {MANIFEST} in {bundle}: not a policy bundle")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: unknown manifest format (this runner reads format {FORMAT})")
    check_manifest_structure(manifest, path)
    for name, expected in sorted(manifest.get("files", {}).items()):
        file = bundle / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            raise BundleError(f"manifest names a file outside the bundle: {name}")
        if not file.is_file():
            raise BundleError(f"missing file {name} (listed in {MANIFEST})")
        if sha256(file) != expected:
            raise BundleError(f"checksum mismatch for {name}: the file is corrupted or was replaced")
    for name, policy in manifest.get("policies", {}).items():
        for precision, model in policy["models"].items():
            if model["file"] not in manifest.get("files", {}):
                raise BundleError(f"policy {name} ({precision}): {model['file']} has no checksum "
                                  f"in {MANIFEST}")
    return manifest


# What the runner reads of each policy and each of its models without a default.
POLICY_FIELDS = ("env_id", "observation_shape", "observation_dtype", "output", "action_rule", "models")
MODEL_FIELDS = ("file", "input", "output")


def check_manifest_structure(manifest: dict[str, Any], path: Path) -> None:
    """Every field the runner reads is there, so a damaged or edited manifest is a sentence
    naming the policy and the field, not a KeyError."""
    def refuse(problem: str) -> BundleError:
        return BundleError(f"{path}: {problem}: the manifest is damaged or was edited; copy the bundle "
                           "again (or rebuild it with the pi_bundle stage)")

    if not isinstance(manifest.get("files", {}), dict) or not isinstance(manifest.get("policies", {}), dict):
        raise refuse("'files' and 'policies' must be mappings")
    for name, policy in manifest.get("policies", {}).items():
        missing = [f for f in POLICY_FIELDS if f not in policy] if isinstance(policy, dict) else list(POLICY_FIELDS)
        if missing:
            raise refuse(f"policy {name} lacks {', '.join(missing)}")
        if not isinstance(policy["models"], dict) or not policy["models"]:
            raise refuse(f"policy {name}: 'models' must map each precision to its model")
        for precision, model in policy["models"].items():
            missing = [f for f in MODEL_FIELDS if f not in model] if isinstance(model, dict) else list(MODEL_FIELDS)
            if missing:
                raise refuse(f"policy {name}: its {precision} model lacks {', '.join(missing)}")


def policy_spec(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    policies = manifest.get("policies", {})
    if name not in policies:
        raise BundleError(f"unknown policy {name!r}; this bundle has: {', '.join(sorted(policies))}")
    return policies[name]


# --- a bundled model ---------------------------------------------------------------------------


def quantize(values: np.ndarray, tensor: Mapping[str, Any]) -> np.ndarray:
    """Real values to the model's integer input (q = round(x / scale) + zero_point)."""
    if tensor.get("scale") is None:
        return values.astype(tensor["dtype"], copy=False)
    info = np.iinfo(tensor["dtype"])
    scaled = np.round(values.astype(np.float32) / np.float32(tensor["scale"])) + tensor["zero_point"]
    return np.clip(scaled, info.min, info.max).astype(tensor["dtype"])


def dequantize(values: np.ndarray, tensor: Mapping[str, Any]) -> np.ndarray:
    if tensor.get("scale") is None:
        return values
    return (values.astype(np.float32) - tensor["zero_point"]) * np.float32(tensor["scale"])


def normalize(observations: np.ndarray, normalization: Mapping[str, Sequence[float]] | None) -> np.ndarray:
    """Observations scaled feature by feature as an int8 model was calibrated: (x - center) / scale."""
    if normalization is None:
        return observations
    shape = observations.shape[1:]
    center = np.asarray(normalization["center"], np.float32).reshape(shape)
    return (observations - center) / np.asarray(normalization["scale"], np.float32).reshape(shape)


def denormalize(normalized: np.ndarray, normalization: Mapping[str, Sequence[float]]) -> np.ndarray:
    """The inverse of :func:`normalize`."""
    shape = normalized.shape[1:]
    center = np.asarray(normalization["center"], np.float32).reshape(shape)
    return normalized * np.asarray(normalization["scale"], np.float32).reshape(shape) + center


class TFLitePolicy:
    """A bundled model with its action rule (the model's own ``output_kind`` where the manifest gives
    one, else the policy's ``output``): observations in, greedy actions out."""

    def __init__(self, bundle: Path, spec: dict[str, Any], precision: str) -> None:
        from ai_edge_litert.interpreter import Interpreter

        if precision not in spec["models"]:
            raise BundleError(f"no {precision} model; this policy has {', '.join(spec['models'])}")
        self.spec, self.model = spec, spec["models"][precision]
        self.output = self.model.get("output_kind", spec["output"])
        self.observation_shape = tuple(spec["observation_shape"])
        self._interpreter = Interpreter(model_path=str(bundle / self.model["file"]))
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        found = tuple(int(n) for n in self._input["shape_signature"][1:])
        if found != self.observation_shape:
            raise BundleError(f"{self.model['file']} takes observations of shape {found}, but the "
                              f"manifest says {self.observation_shape}: the manifest names a model "
                              "made for another policy")
        if np.dtype(self._input["dtype"]).name != self.model["input"]["dtype"]:
            raise BundleError(f"{self.model['file']} takes {np.dtype(self._input['dtype']).name} "
                              f"input, the manifest says {self.model['input']['dtype']}")
        self._batch = 0

    def outputs(self, observations: np.ndarray) -> np.ndarray:
        """The model's outputs for a batch of raw observations (dequantized for int8 models)."""
        batch = np.asarray(observations, dtype=self.spec["observation_dtype"])
        if batch.shape[1:] != self.observation_shape:
            raise ValueError(f"observations of shape {batch.shape[1:]}, expected {self.observation_shape}")
        if len(batch) != self._batch:
            self._interpreter.resize_tensor_input(self._input["index"], [len(batch), *self.observation_shape])
            self._interpreter.allocate_tensors()
            self._batch = len(batch)
        batch = normalize(batch, self.model.get("input_normalization"))
        self._interpreter.set_tensor(self._input["index"], quantize(batch, self.model["input"]))
        self._interpreter.invoke()
        return dequantize(self._interpreter.get_tensor(self._output["index"]), self.model["output"])

    def actions(self, observations: np.ndarray) -> np.ndarray:
        return actions_from_outputs(self.output, self.outputs(observations))


def latency(act: Callable[[np.ndarray], Any], observation: np.ndarray, calls: int) -> dict[str, float]:
    """Median and 99th percentile of one action for one observation, after up to 20 warm-up calls."""
    batch, times = observation[None], np.empty(calls)
    for i in range(-min(calls, 20), calls):  # the negative ones warm up
        start = time.perf_counter()
        act(batch)
        if i >= 0:
            times[i] = time.perf_counter() - start
    return {"median_wall_time_s": float(np.median(times)), "p99_wall_time_s": float(np.percentile(times, 99))}


# --- playing -----------------------------------------------------------------------------------


def make_env(spec: Mapping[str, Any], max_steps: int | None = None) -> Any:
    """The Gymnasium environment a bundled policy was trained in, observations preprocessed alike."""
    if gym is None:
        raise ImportError("no module named gymnasium")
    steps = max_steps or spec.get("max_steps")
    if spec.get("preprocessing", {}).get("kind") == "atari":
        return make_atari_env(spec["env_id"], spec["preprocessing"], max_steps=steps)
    return gym.make(spec["env_id"], max_episode_steps=steps, **spec.get("env_kwargs", {}))


def play(policy: TFLitePolicy, env: Any, seed: int) -> float:
    """One episode from ``env.reset(seed=seed)``; the sum of its rewards."""
    observation, _ = env.reset(seed=seed)
    total, done = 0.0, False
    continuous = policy.output == "continuous_action"  # the action vector itself, else an index
    while not done:
        action = policy.actions(observation[None])[0]
        action = action if continuous else int(action)
        observation, reward, terminated, truncated, _ = env.step(action)
        total += float(reward)
        done = terminated or truncated
    return total
