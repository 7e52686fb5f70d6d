"""What a bundled policy needs at run time, with NumPy (and, to play, Gymnasium) only.

One module, used twice as it is: the pipeline imports it (``pi.policy_runtime``) to train and
evaluate Atari policies, to turn model outputs into actions and to check bundles; the pi_bundle
stage copies it next to ``run_policy.py``, which imports it on the Raspberry Pi. There is no second
copy to drift: what the pipeline measured is what the Pi runs.

- **Checksums**: :func:`sha256` and :func:`verify_bundle` (the manifest's fields, then every file
  of a bundle against its manifest, before anything is loaded).
- **Action rules**: :func:`actions_from_outputs`, greedy or sampled, for every output kind.
- **Models**: :class:`TFLitePolicy` (a TFLite model, its quantization and action rule); :func:`latency`.
- **Atari preprocessing**: :func:`make_atari_env` rebuilds the observations an Atari policy was
  trained on from a plain description (:func:`preprocessing_description`): the steps of
  Gymnasium's ``AtariPreprocessing`` (random no-ops at reset, frame skip with max-pooling of the
  last two frames, grayscale, area resize), the game's start rule, stacked frames, a step cap.
  Gymnasium's wrapper needs OpenCV only for its area resize, which neither the project nor the Pi
  installs, so the resize here is the same area-average rule written in NumPy.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

try:  # only playing needs Gymnasium; computing actions runs on NumPy and LiteRT alone
    import gymnasium as gym
except ImportError:  # pragma: no cover - the Pi without requirements-pi-gymnasium.txt
    gym = None
_Wrapper: Any = gym.Wrapper if gym is not None else object

MANIFEST = "manifest.json"
FORMAT = 1
OBSERVATION_LAYOUT = "height x width x stacked frames (oldest first), uint8 grayscale"


class BundleError(Exception):
    """The bundle cannot be trusted or does not hold what was asked for."""


class AtariSetupError(ValueError):
    """The game cannot be played here: unknown id, missing ROM, or an action it does not have."""


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


# --- action rules ------------------------------------------------------------------------------

ACTION_RULES = {
    "p_left": "action 0 (left) when the output P(left) >= 0.5, else action 1",
    "action_probabilities": "the action with the highest probability (argmax)",
    "q_values": "the action with the highest Q-value (argmax, lowest index on ties)",
    "action_preferences": "the action with the highest preference (argmax, lowest index on ties)",
    "action": "the output is the action index (the greedy Q-policy's argmax is inside the model)",
}


def actions_from_outputs(output: str, outputs: np.ndarray,
                         rng: np.random.Generator | None = None) -> np.ndarray:
    """A batch of model outputs as actions: greedy without ``rng``, sampled with it.

    - ``p_left``: one sigmoid unit, P(action 0). Greedy: 0 when p >= 0.5. Sampled: 1 when a
      uniform draw exceeds p (the book's rule).
    - ``action_probabilities``: a softmax. Greedy: argmax. Sampled: a categorical draw.
    - ``q_values``: one value per action. Greedy: argmax (ties to the lowest action).
    - ``action_preferences``: one score per action (a fine-tuned int8 model's output: only their
      order carries meaning). Greedy: argmax, as for Q-values.
    - ``action``: the action itself (a model with the greedy choice inside).
    """
    if output == "action":
        return np.asarray(outputs).reshape(len(outputs)).astype(np.int64)
    outputs = np.asarray(outputs, dtype=np.float64)
    if output == "p_left":
        p_left = outputs.reshape(len(outputs))
        if rng is None:
            return (p_left < 0.5).astype(np.int64)
        return (rng.uniform(size=len(p_left)) > p_left).astype(np.int64)
    if output == "action_probabilities":
        if rng is None:
            return np.argmax(outputs, axis=1).astype(np.int64)
        cumulative = np.cumsum(outputs, axis=1)
        draws = rng.uniform(size=(len(outputs), 1)) * cumulative[:, -1:]
        return np.minimum((draws > cumulative).sum(axis=1), outputs.shape[1] - 1).astype(np.int64)
    if output in ("q_values", "action_preferences"):
        return np.argmax(outputs, axis=1).astype(np.int64)
    raise BundleError(f"no action rule for output kind {output!r}; known: {', '.join(ACTION_RULES)}")


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


# --- Atari -------------------------------------------------------------------------------------


def register_atari() -> None:
    import ale_py

    gym.register_envs(ale_py)


def check_game(env_id: str, actions: Sequence[str] = ()) -> list[str]:
    """The game's action names; a clear error if its id, ROM or one of ``actions`` is unknown."""
    if gym is None:
        raise AtariSetupError("playing Atari games needs Gymnasium and ale-py")
    import ale_py.roms

    register_atari()
    if env_id not in gym.envs.registry:
        raise AtariSetupError(f"unknown Atari game id {env_id!r}: not registered in Gymnasium/ale-py")
    game = gym.spec(env_id).kwargs.get("game")
    if game is None:
        raise AtariSetupError(f"{env_id!r} is not an Atari (ale-py) environment")
    if ale_py.roms.get_rom_path(game) is None:
        raise AtariSetupError(f"the ROM of {game!r} ({env_id}) is missing: ale-py ships it; "
                              "reinstall ale-py or check its roms/ folder")
    env = gym.make(env_id)
    meanings = list(env.unwrapped.get_action_meanings())
    env.close()
    unknown = [name for name in actions if name not in meanings]
    if unknown:
        raise AtariSetupError(f"{env_id} has no action {unknown[0]!r}; its actions: {', '.join(meanings)}")
    return meanings


def area_taps(source: int, target: int) -> tuple[np.ndarray, np.ndarray]:
    """For each output pixel, the source pixels under it and their area weights (target, taps).

    This is OpenCV's INTER_AREA rule for shrinking: output pixel j covers the source interval
    [j * s, (j + 1) * s) with s = source / target, and each source pixel counts by its overlap.
    A few taps per pixel, applied with element-wise NumPy: a matrix product would call BLAS,
    whose threads crawl when the cores are busy with TensorFlow.
    """
    scale = source / target
    starts = np.arange(target)[:, None] * scale
    pixels = np.arange(source)[None, :]
    overlap = np.clip(np.minimum(pixels + 1, starts + scale) - np.maximum(pixels, starts), 0.0, None)
    taps = int((overlap > 0).sum(axis=1).max())
    first = np.clip(np.floor(starts[:, 0]).astype(np.int64), 0, source - taps)
    indices = first[:, None] + np.arange(taps)[None, :]
    return indices, np.take_along_axis(overlap, indices, axis=1) / scale


def shrink(frame: np.ndarray, rows: tuple[np.ndarray, np.ndarray],
           columns: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Area-average resize of a 2-D uint8 frame with precomputed taps (see :func:`area_taps`)."""
    (row_index, row_weight), (column_index, column_weight) = rows, columns
    by_rows = (frame[row_index] * row_weight[..., None]).sum(axis=1)
    return np.rint((by_rows[:, column_index] * column_weight).sum(axis=2)).astype(np.uint8)


class AtariFrames(_Wrapper):
    """Gymnasium's AtariPreprocessing (grayscale, uint8, no life-loss terminal) without OpenCV.

    Reset plays 1..noop_max no-ops (drawn from the environment's seeded generator); a step
    repeats the action ``frame_skip`` times, sums the rewards and max-pools the last two frames
    (Atari sprites flicker between frames); the frame is then shrunk to ``size`` x ``size``.
    """

    def __init__(self, env: Any, *, noop_max: int, frame_skip: int, size: int) -> None:
        super().__init__(env)
        if getattr(env.unwrapped, "_frameskip", None) != 1:
            raise AtariSetupError("the base Atari environment must not skip frames itself "
                                  "(use a NoFrameskip id)")
        if noop_max > 0 and env.unwrapped.get_action_meanings()[0] != "NOOP":
            raise AtariSetupError("random no-ops at reset need action 0 to be NOOP")
        height, width = env.observation_space.shape[:2]
        self._rows, self._columns = area_taps(height, size), area_taps(width, size)
        self._noop_max, self._frame_skip = noop_max, frame_skip
        self._frames = [np.empty((height, width), np.uint8), np.empty((height, width), np.uint8)]
        self.observation_space = gym.spaces.Box(0, 255, (size, size), np.uint8)

    def _grab(self, slot: int) -> None:
        self.env.unwrapped.ale.getScreenGrayscale(self._frames[slot])

    def _observation(self) -> np.ndarray:
        pooled = np.maximum(self._frames[0], self._frames[1]) if self._frame_skip > 1 else self._frames[0]
        return shrink(pooled, self._rows, self._columns)

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
    """Play forced steps after a reset and after each lost life, so the agent never has to.

    Breakout needs FIRE to launch the ball; in Space Invaders nothing responds while the cannon
    blinks. The forced steps' rewards are added to the step that triggered them; their frames are
    not shown to the agent (the observation is the one after the last forced step).
    """

    def __init__(self, env: Any, *, after_reset: tuple[int, int], after_life_loss: tuple[int, int]) -> None:
        super().__init__(env)
        self._after_reset = after_reset          # (action, steps)
        self._after_life_loss = after_life_loss

    def _lives(self) -> int:
        return int(self.env.unwrapped.ale.lives())

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
        obs, _, terminated, truncated, step_info = self._force(*self._after_reset, obs, 0.0)
        if terminated or truncated:  # cannot happen in these games; fail loudly if it ever does
            raise RuntimeError("the episode ended during the forced steps after reset")
        return obs, {**info, **step_info}

    def step(self, action: int) -> tuple:
        lives = self._lives()
        obs, reward, terminated, truncated, info = self.env.step(action)
        if not (terminated or truncated) and self._lives() < lives:
            obs, reward, terminated, truncated, info = self._force(*self._after_life_loss, obs, float(reward))
        return obs, reward, terminated, truncated, info


def _channels_last(env: Any) -> Any:
    """(frames, height, width) -> (height, width, frames): the layout Keras convolutions expect."""
    from gymnasium.wrappers import TransformObservation

    space = env.observation_space
    moved = gym.spaces.Box(low=np.moveaxis(space.low, 0, -1), high=np.moveaxis(space.high, 0, -1),
                           dtype=space.dtype)
    return TransformObservation(env, lambda obs: np.ascontiguousarray(np.moveaxis(obs, 0, -1)), moved)


def preprocessing_description(*, frame_skip: int, screen_size: int, noop_max: int, frame_stack: int,
                              max_episode_steps: int, after_reset: Mapping[str, Any],
                              after_life_loss: Mapping[str, Any]) -> dict[str, Any]:
    """The preprocessing as data: what :func:`make_atari_env` builds and a policy entry records."""
    return {
        "kind": "atari",
        "wrappers": "AtariFrames (= gymnasium AtariPreprocessing) -> StartRule -> "
                    "FrameStackObservation -> channels last -> TimeLimit",
        "frame_skip": frame_skip,
        "max_pool_last_two_frames": True,
        "grayscale": True,
        "resize": "area average (OpenCV INTER_AREA)",
        "screen_size": screen_size,
        "noop_max": noop_max,
        "after_reset": {"action": after_reset["action"], "steps": after_reset["steps"]},
        "after_life_loss": {"action": after_life_loss["action"], "steps": after_life_loss["steps"]},
        "frame_stack": frame_stack,
        "max_episode_steps": max_episode_steps,
        "observation_layout": OBSERVATION_LAYOUT,
    }


def make_atari_env(env_id: str, preprocessing: Mapping[str, Any], *, render_mode: str | None = None,
                   max_steps: int | None = None) -> Any:
    """The environment an Atari policy plays, built from its preprocessing description;
    ``max_steps`` caps episodes below the description's ``max_episode_steps``."""
    from gymnasium.wrappers import FrameStackObservation, TimeLimit

    meanings = check_game(env_id, [preprocessing["after_reset"]["action"],
                                   preprocessing["after_life_loss"]["action"]])
    env = gym.make(env_id, render_mode=render_mode)
    env = AtariFrames(env, noop_max=preprocessing["noop_max"], frame_skip=preprocessing["frame_skip"],
                      size=preprocessing["screen_size"])
    rule = {key: (meanings.index(preprocessing[key]["action"]), preprocessing[key]["steps"])
            for key in ("after_reset", "after_life_loss")}
    env = StartRule(env, **rule)
    env = FrameStackObservation(env, preprocessing["frame_stack"])
    env = _channels_last(env)
    return TimeLimit(env, max_episode_steps=max_steps or preprocessing["max_episode_steps"])


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
    while not done:
        action = int(policy.actions(observation[None])[0])
        observation, reward, terminated, truncated, _ = env.step(action)
        total += float(reward)
        done = terminated or truncated
    return total
