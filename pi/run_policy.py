#!/usr/bin/env python3
"""Run a bundled policy on a Raspberry Pi (or anywhere) with the LiteRT runtime: no TensorFlow.

    python3 run_policy.py list
    python3 run_policy.py play NAME [--precision int8] [--episodes 20] [--seed 0] [--max-steps N]
    python3 run_policy.py act NAME observations.npy [--precision int8]

``play`` needs Gymnasium (and ale-py for Atari games) and prints one return per episode; ``act``
needs only NumPy and LiteRT and prints one action per observation. Before anything is loaded,
every file of the bundle is checked against the sha256 in manifest.json; a bundle that does not
match ends the program with a message and exit status 3. Nothing is ever unpickled.

This file is self-contained on purpose: it is copied into the bundle as it is.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

try:  # only `play` needs Gymnasium; `act` runs on NumPy and LiteRT alone
    import gymnasium as gym
except ImportError:
    gym = None
_Wrapper: Any = gym.Wrapper if gym is not None else object

MANIFEST = "manifest.json"
FORMAT = 1
EXIT_BAD_BUNDLE = 3
EXIT_BAD_INPUT = 4


class BundleError(Exception):
    """The bundle cannot be trusted or does not hold what was asked for."""


# --- the bundle -------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
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


def policy_spec(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    policies = manifest.get("policies", {})
    if name not in policies:
        raise BundleError(f"unknown policy {name!r}; this bundle has: {', '.join(sorted(policies))}")
    return policies[name]


# --- a policy ---------------------------------------------------------------------------------


class TFLitePolicy:
    """A bundled model with its action rule: observations in, greedy actions out."""

    def __init__(self, bundle: Path, spec: dict[str, Any], precision: str) -> None:
        from ai_edge_litert.interpreter import Interpreter

        if precision not in spec["models"]:
            raise BundleError(f"no {precision} model; this policy has {', '.join(spec['models'])}")
        self.spec, self.model = spec, spec["models"][precision]
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
        normalization = self.model.get("input_normalization")
        if normalization is not None:  # feature by feature, as the model was calibrated
            shape = self.observation_shape
            center = np.asarray(normalization["center"], np.float32).reshape(shape)
            batch = (batch - center) / np.asarray(normalization["scale"], np.float32).reshape(shape)
        self._interpreter.set_tensor(self._input["index"], quantize(batch, self.model["input"]))
        self._interpreter.invoke()
        return dequantize(self._interpreter.get_tensor(self._output["index"]), self.model["output"])

    def actions(self, observations: np.ndarray) -> np.ndarray:
        return actions_from_outputs(self.spec["output"], self.outputs(observations))


def quantize(values: np.ndarray, tensor: dict[str, Any]) -> np.ndarray:
    """Real values to the model's integer input (q = round(x / scale) + zero_point)."""
    if tensor.get("scale") is None:
        return values.astype(tensor["dtype"], copy=False)
    info = np.iinfo(tensor["dtype"])
    scaled = np.round(values.astype(np.float32) / np.float32(tensor["scale"])) + tensor["zero_point"]
    return np.clip(scaled, info.min, info.max).astype(tensor["dtype"])


def dequantize(values: np.ndarray, tensor: dict[str, Any]) -> np.ndarray:
    if tensor.get("scale") is None:
        return values
    return (values.astype(np.float32) - tensor["zero_point"]) * np.float32(tensor["scale"])


def actions_from_outputs(output: str, outputs: np.ndarray) -> np.ndarray:
    """The manifest's action rules (greedy): see each policy's ``action_rule``."""
    if output == "p_left":
        return (outputs.reshape(len(outputs)) < 0.5).astype(np.int64)
    if output in ("action_probabilities", "q_values"):
        return np.argmax(outputs, axis=1).astype(np.int64)
    if output == "action":
        return outputs.reshape(len(outputs)).astype(np.int64)
    raise BundleError(f"unknown output kind {output!r} in the manifest")


# --- environments -----------------------------------------------------------------------------


def make_env(spec: dict[str, Any], max_steps: int | None) -> Any:
    """The Gymnasium environment the policy was trained in, observations preprocessed alike."""
    if gym is None:
        raise ImportError("no module named gymnasium")
    steps = max_steps or spec.get("max_steps")
    if spec.get("preprocessing", {}).get("kind") == "atari":
        return make_atari_env(spec["env_id"], spec["preprocessing"], steps)
    return gym.make(spec["env_id"], max_episode_steps=steps, **spec.get("env_kwargs", {}))


def make_atari_env(env_id: str, prep: dict[str, Any], max_steps: int | None) -> Any:
    """The manifest's Atari preprocessing: the same steps as Gymnasium's AtariPreprocessing with
    an area-average resize (no OpenCV), the game's start rule, frames stacked channels-last."""
    import ale_py
    from gymnasium.wrappers import FrameStackObservation, TimeLimit, TransformObservation

    gym.register_envs(ale_py)
    env = gym.make(env_id)
    meanings = list(env.unwrapped.get_action_meanings())
    env = AtariFrames(env, prep["noop_max"], prep["frame_skip"], prep["screen_size"])
    env = StartRule(env, *((meanings.index(prep[k]["action"]), prep[k]["steps"])
                           for k in ("after_reset", "after_life_loss")))
    env = FrameStackObservation(env, prep["frame_stack"])
    space = env.observation_space
    moved = gym.spaces.Box(np.moveaxis(space.low, 0, -1), np.moveaxis(space.high, 0, -1), dtype=space.dtype)
    env = TransformObservation(env, lambda obs: np.ascontiguousarray(np.moveaxis(obs, 0, -1)), moved)
    return TimeLimit(env, max_episode_steps=max_steps or prep["max_episode_steps"])


def _area_taps(source: int, target: int) -> tuple[np.ndarray, np.ndarray]:
    scale = source / target
    starts = np.arange(target)[:, None] * scale
    pixels = np.arange(source)[None, :]
    overlap = np.clip(np.minimum(pixels + 1, starts + scale) - np.maximum(pixels, starts), 0.0, None)
    taps = int((overlap > 0).sum(axis=1).max())
    first = np.clip(np.floor(starts[:, 0]).astype(np.int64), 0, source - taps)
    indices = first[:, None] + np.arange(taps)[None, :]
    return indices, np.take_along_axis(overlap, indices, axis=1) / scale


class AtariFrames(_Wrapper):
    """Random no-ops at reset, frame skip with max-pooling of the last two frames, grayscale and
    an area resize: what the policy saw in training (Gymnasium's AtariPreprocessing, no OpenCV)."""

    def __init__(self, env: Any, noop_max: int, frame_skip: int, size: int) -> None:
        super().__init__(env)
        height, width = env.observation_space.shape[:2]
        self._taps = _area_taps(height, size), _area_taps(width, size)
        self._noop_max, self._frame_skip = noop_max, frame_skip
        self._frames = [np.empty((height, width), np.uint8), np.empty((height, width), np.uint8)]
        self.observation_space = gym.spaces.Box(0, 255, (size, size), np.uint8)

    def _grab(self, slot: int) -> None:
        self.env.unwrapped.ale.getScreenGrayscale(self._frames[slot])

    def _observation(self) -> np.ndarray:
        frame = np.maximum(*self._frames) if self._frame_skip > 1 else self._frames[0]
        (rows, row_weights), (columns, column_weights) = self._taps
        by_rows = (frame[rows] * row_weights[..., None]).sum(axis=1)
        return np.rint((by_rows[:, columns] * column_weights).sum(axis=2)).astype(np.uint8)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple:
        _, info = self.env.reset(seed=seed, options=options)
        noops = int(self.env.unwrapped.np_random.integers(1, self._noop_max + 1)) if self._noop_max else 0
        for _ in range(noops):
            _, _, terminated, truncated, step_info = self.env.step(0)
            info.update(step_info)
            if terminated or truncated:
                _, info = self.env.reset(seed=seed, options=options)
        self._grab(0)
        self._frames[1].fill(0)
        return self._observation(), info

    def step(self, action: int) -> tuple:
        total, terminated, truncated, info = 0.0, False, False, {}
        for t in range(self._frame_skip):
            _, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
            if t >= self._frame_skip - 2:
                self._grab(self._frame_skip - 1 - t)
        return self._observation(), total, terminated, truncated, info


class StartRule(_Wrapper):
    """Forced steps after a reset and after each lost life (Breakout's FIRE, Space Invaders' wait)."""

    def __init__(self, env: Any, after_reset: tuple[int, int], after_life_loss: tuple[int, int]) -> None:
        super().__init__(env)
        self._after_reset, self._after_life_loss = after_reset, after_life_loss

    def _force(self, action: int, steps: int, obs: Any, reward: float) -> tuple:
        terminated = truncated = False
        info: dict = {}
        for _ in range(steps):
            obs, step_reward, terminated, truncated, info = self.env.step(action)
            reward += float(step_reward)
            if terminated or truncated:
                break
        return obs, reward, terminated, truncated, info

    def reset(self, **kwargs: Any) -> tuple:
        obs, info = self.env.reset(**kwargs)
        obs, _, _, _, step_info = self._force(*self._after_reset, obs, 0.0)
        return obs, {**info, **step_info}

    def step(self, action: int) -> tuple:
        lives = int(self.env.unwrapped.ale.lives())
        obs, reward, terminated, truncated, info = self.env.step(action)
        if not (terminated or truncated) and int(self.env.unwrapped.ale.lives()) < lives:
            obs, reward, terminated, truncated, info = self._force(*self._after_life_loss, obs, float(reward))
        return obs, reward, terminated, truncated, info


def play(policy: TFLitePolicy, env: Any, seed: int) -> float:
    """One episode from ``env.reset(seed=seed)``; the sum of its rewards."""
    observation, _ = env.reset(seed=seed)
    total, done = 0.0, False
    while not done:
        action = int(policy.actions(observation[None])[0])
        observation, reward, terminated, truncated, _ = env.step(action)
        total += float(reward)
        done = terminated or truncated
    return total


# --- the command line -------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parent,
                        help="the bundle's folder (default: this script's folder)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the bundled policies")
    for name, text in (("play", "play episodes in the policy's Gymnasium environment"),
                       ("act", "print the action for each observation in a .npy file")):
        command = commands.add_parser(name, help=text)
        command.add_argument("policy")
        if name == "act":
            command.add_argument("observations", type=Path)
        command.add_argument("--precision", choices=("float32", "int8"), default="float32")
        if name == "play":
            command.add_argument("--episodes", type=int, default=10)
            command.add_argument("--seed", type=int, default=0, help="episode i uses seed + i")
            command.add_argument("--max-steps", type=int, default=None,
                                 help="cap on steps per episode (default: the manifest's)")
    return parser.parse_args(argv)


def load_observations(path: Path, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    try:
        observations = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {path} as a NumPy array (pickles are refused): {error}") from None
    if observations.shape == shape:
        observations = observations[None]
    if observations.shape[1:] != shape:
        raise ValueError(f"{path} holds observations of shape {observations.shape[1:]}, the policy "
                         f"takes {shape} (one per row)")
    return observations.astype(dtype)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        manifest = verify_bundle(args.bundle)
        if args.command == "list":
            for name, spec in sorted(manifest["policies"].items()):
                print(f"{name}: {spec['env_id']}, observations {spec['observation_shape']} "
                      f"{spec['observation_dtype']}, {spec['output']} -> {spec['action_rule']}")
            return 0
        spec = policy_spec(manifest, args.policy)
        policy = TFLitePolicy(args.bundle, spec, args.precision)
    except BundleError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_BUNDLE
    try:
        if args.command == "act":
            observations = load_observations(args.observations, policy.observation_shape,
                                             spec["observation_dtype"])
            for action in policy.actions(observations):
                print(int(action))
            return 0
        env = make_env(spec, args.max_steps)
    except ImportError as error:
        print(f"error: playing needs Gymnasium (pip install -r requirements-pi-gymnasium.txt): {error}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    returns = []
    for episode in range(args.episodes):
        returns.append(play(policy, env, args.seed + episode))
        print(f"episode {episode} seed {args.seed + episode} return {returns[-1]:g}", flush=True)
    env.close()
    print(f"mean return {np.mean(returns):g} over {len(returns)} episodes "
          f"({args.policy}, {args.precision})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
