"""What a policy means, shared by the pipeline that trains it and the runner that plays it.

The training stages, the pipeline's evaluation and the Pi runner all import this module, and the
pi_bundle stage ships it beside ``run_policy.py``: it is the one small contract both sides keep,
so the trainers depend on it and not on the runner (pi/policy_runtime.py), whose edits rerun no
training. NumPy only, and Gymnasium for the Atari observations.

- **Action rules**: :data:`ACTION_RULES` and :func:`actions_from_outputs`, greedy or sampled, for
  every output kind of the policy index.
- **Atari observations**: :func:`make_atari_env` rebuilds the observations an Atari policy was
  trained on from a plain description (:func:`preprocessing_description`): the steps of
  Gymnasium's ``AtariPreprocessing`` (random no-ops at reset, frame skip with max-pooling of the
  last two frames, grayscale, area resize), the game's start rule, stacked frames, a step cap.
  Gymnasium's wrapper needs OpenCV only for its area resize, which neither the project nor the Pi
  installs, so the resize here is the same area-average rule written in NumPy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

try:  # computing actions runs on NumPy alone; only the Atari observations need Gymnasium
    import gymnasium as gym
except ImportError:  # pragma: no cover - the Pi without requirements-pi-gymnasium.txt
    gym = None
_Wrapper: Any = gym.Wrapper if gym is not None else object

OBSERVATION_LAYOUT = "height x width x stacked frames (oldest first), uint8 grayscale"


class BundleError(Exception):
    """The bundle cannot be trusted or does not hold what was asked for."""


class AtariSetupError(ValueError):
    """The game cannot be played here: unknown id, missing ROM, or an action it does not have."""


# --- action rules ------------------------------------------------------------------------------

ACTION_RULES = {
    "p_left": "action 0 (left) when the output P(left) >= 0.5, else action 1",
    "action_probabilities": "the action with the highest probability (argmax)",
    "q_values": "the action with the highest Q-value (argmax, lowest index on ties)",
    "action_preferences": "the action with the highest preference (argmax, lowest index on ties)",
    "action": "the output is the action index (the greedy Q-policy's argmax is inside the model)",
    "continuous_action": "the output is the action vector itself (a deterministic continuous action)",
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
    - ``continuous_action``: the action vector itself, float32 (a deterministic policy: ``rng``
      changes nothing).
    """
    if output == "continuous_action":
        return np.asarray(outputs, dtype=np.float32).reshape(len(outputs), -1)
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
