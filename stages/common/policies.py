"""Trained policies as artifacts: one export format, one index, one way to load and play them.

Every training stage exports each policy it trains into ``data/policies/<name>/``:

- the model (a Keras ``model.keras`` file, or a TF-Agents ``PolicySaver`` directory), and
- ``policy.json``, the policy's entry in the index: environment id, model path, observation shape
  and dtype, and how the model's output becomes an action.

The index is the folder ``data/policies``: one sub-folder per policy, owned by the stage that
trained it (so DVC and Snakemake see one producer per output). Evaluation, the report and the
Raspberry Pi bundle read entries with :func:`load_index` and play them with :func:`load_policy`;
none of them imports the stage that trained the policy.

Output kinds (``output`` in the entry) and their action rules:

- ``p_left``: one sigmoid unit, the probability of action 0 ("left"). Greedy: 0 when p >= 0.5.
  Sampled: 1 when a uniform draw exceeds p (the book's rule).
- ``action_probabilities``: a softmax over actions. Greedy: argmax. Sampled: categorical draw.
- ``q_values``: one value per action. Greedy: argmax (ties to the lowest action).
- ``tf_agents_policy``: a TF-Agents ``PolicySaver`` directory whose ``action`` already returns
  the action; its entry describes the observation it expects (for Atari, the preprocessing).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stages.common.io import atomic_folder

INDEX_DIR = Path("data/policies")
ENTRY_FILE = "policy.json"
KERAS_MODEL_FILE = "model.keras"
OUTPUT_KINDS = ("p_left", "action_probabilities", "q_values", "tf_agents_policy")
ENTRY_VERSION = 1

BatchPolicy = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class PolicyEntry:
    """What a consumer needs to play a policy without the code that trained it."""

    name: str
    stage: str
    env_id: str
    model: str  # path relative to the entry's folder
    observation_shape: tuple[int, ...]
    observation_dtype: str
    output: str
    n_actions: int
    # Keyword arguments for gymnasium.make beyond the id (for example Atari's frameskip=1).
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    # Steps per episode the policy was trained for (the book caps CartPole at 200).
    training_max_steps: int | None = None
    training_seeds: tuple[int, ...] = ()
    # Observation preprocessing a consumer must reproduce (Atari: grayscale, resize, stack).
    preprocessing: dict[str, Any] = field(default_factory=dict)
    # Free-form facts worth keeping with the model (algorithm, variant, which weights were kept).
    details: dict[str, Any] = field(default_factory=dict)
    # Runs of one algorithm over several training seeds: what was trained (e.g. "pg_cartpole",
    # "dqn_final") and from which seed; the policy is named "<algorithm>_s<seed>". Omitted (None)
    # for single-run policies, so their entries stay as they were.
    algorithm: str | None = None
    seed: int | None = None
    version: int = ENTRY_VERSION
    folder: Path | None = field(default=None, compare=False, repr=False)

    @property
    def model_path(self) -> Path:
        if self.folder is None:
            raise ValueError(f"policy {self.name!r} was not loaded from a folder")
        return self.folder / self.model

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("folder")
        data["observation_shape"] = list(self.observation_shape)
        data["training_seeds"] = list(self.training_seeds)
        return {key: value for key, value in data.items()
                if not (key in ("algorithm", "seed") and value is None)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], folder: Path | None = None) -> PolicyEntry:
        known = {f for f in cls.__dataclass_fields__ if f != "folder"}
        unknown = sorted(set(data) - known)
        missing = sorted(f for f in ("name", "stage", "env_id", "model", "observation_shape",
                                     "observation_dtype", "output", "n_actions") if f not in data)
        where = f" in {folder / ENTRY_FILE}" if folder else ""
        if unknown or missing:
            raise ValueError(f"bad policy entry{where}: unknown fields {unknown}, missing {missing}")
        if data["output"] not in OUTPUT_KINDS:
            raise ValueError(f"bad policy entry{where}: output {data['output']!r} is not one of "
                             f"{', '.join(OUTPUT_KINDS)}")
        values = dict(data)
        values["observation_shape"] = tuple(int(n) for n in data["observation_shape"])
        values["training_seeds"] = tuple(int(s) for s in data.get("training_seeds", ()))
        return cls(**values, folder=folder)


def seeded_policy_name(algorithm: str, seed: int) -> str:
    """The index name of one training seed's run of an algorithm, e.g. ``pg_cartpole_s42``."""
    return f"{algorithm}_s{seed}"


def actions_from_outputs(output: str, outputs: np.ndarray,
                         rng: np.random.Generator | None = None) -> np.ndarray:
    """Turn a batch of model outputs into actions: greedy without ``rng``, sampled with it."""
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
    if output == "q_values":
        return np.argmax(outputs, axis=1).astype(np.int64)
    raise ValueError(f"no action rule for output kind {output!r}")


# --- export -----------------------------------------------------------------------------------


def _normalise_keras_archive(path: Path) -> None:
    """Drop the save date from a ``.keras`` archive so equal weights give equal bytes."""
    with zipfile.ZipFile(path) as archive:
        members = [(info.filename, archive.read(info)) for info in archive.infolist()]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in members:
            if name == "metadata.json":
                metadata = json.loads(content)
                metadata.pop("date_saved", None)
                content = json.dumps(metadata, sort_keys=True).encode()
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), content)
    path.write_bytes(buffer.getvalue())


def _normalise_saved_model(directory: Path) -> None:
    """Clear the random UUID TensorFlow writes into a SavedModel's fingerprint (its only varying byte)."""
    from tensorflow.core.protobuf import fingerprint_pb2

    path = directory / "fingerprint.pb"
    if path.is_file():
        fingerprint = fingerprint_pb2.FingerprintDef.FromString(path.read_bytes())
        fingerprint.ClearField("uuid")
        path.write_bytes(fingerprint.SerializeToString(deterministic=True))


def _without_optimizer(model: Any) -> Any:
    """A copy without training state: an exported policy is weights and architecture only."""
    if getattr(model, "optimizer", None) is None:
        return model
    import tf_keras

    copy = tf_keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def _write_entry(folder: Path, entry: PolicyEntry) -> None:
    text = json.dumps(entry.to_json(), indent=2, sort_keys=True, allow_nan=False) + "\n"
    (folder / ENTRY_FILE).write_text(text)


def export_keras_policy(model: Any, folder: str | os.PathLike, **entry_fields: Any) -> PolicyEntry:
    """Save a Keras model and its index entry into ``folder`` (replaced as a whole).

    ``entry_fields`` are :class:`PolicyEntry` fields except ``model``; observation shape and
    action count default to what the model declares.
    """
    folder = Path(folder)
    entry_fields.setdefault("name", folder.name)
    entry_fields.setdefault("observation_shape", tuple(model.input_shape[1:]))
    entry_fields.setdefault("observation_dtype", "float32")
    if "n_actions" not in entry_fields:
        units = int(model.output_shape[-1])
        entry_fields["n_actions"] = 2 if entry_fields.get("output") == "p_left" else units
    entry = PolicyEntry(model=KERAS_MODEL_FILE, **entry_fields)
    PolicyEntry.from_json(entry.to_json())  # the same checks a reader applies
    with atomic_folder(folder) as temporary:
        _without_optimizer(model).save(temporary / KERAS_MODEL_FILE)
        _normalise_keras_archive(temporary / KERAS_MODEL_FILE)
        _write_entry(temporary, entry)
    return PolicyEntry.from_json(entry.to_json(), folder=folder)


def export_saved_policy(save: Callable[[Path], None], folder: str | os.PathLike,
                        **entry_fields: Any) -> PolicyEntry:
    """Export a policy saved by ``save(directory)`` (a TF-Agents ``PolicySaver``) with its entry."""
    folder = Path(folder)
    entry_fields.setdefault("name", folder.name)
    entry_fields.setdefault("output", "tf_agents_policy")
    entry = PolicyEntry(model="saved_policy", **entry_fields)
    PolicyEntry.from_json(entry.to_json())
    with atomic_folder(folder) as temporary:
        save(temporary / entry.model)
        _normalise_saved_model(temporary / entry.model)
        _write_entry(temporary, entry)
    return PolicyEntry.from_json(entry.to_json(), folder=folder)


# --- reading ----------------------------------------------------------------------------------


def read_entry(folder: str | os.PathLike) -> PolicyEntry:
    folder = Path(folder)
    path = folder / ENTRY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no policy entry at {path}: run the stage that trains it first")
    return PolicyEntry.from_json(json.loads(path.read_text()), folder=folder)


def load_index(index_dir: str | os.PathLike = INDEX_DIR) -> dict[str, PolicyEntry]:
    """Every exported policy, by name, in name order."""
    index_dir = Path(index_dir)
    if not index_dir.is_dir():
        return {}
    entries = [read_entry(p.parent) for p in sorted(index_dir.glob(f"*/{ENTRY_FILE}"))]
    return {entry.name: entry for entry in entries}


def load_model(entry: PolicyEntry) -> Any:
    """The Keras model (or TF-Agents saved policy) an entry names."""
    if not entry.model_path.exists():
        raise FileNotFoundError(f"policy {entry.name!r}: model file {entry.model_path} is missing")
    import tensorflow as tf

    if entry.output == "tf_agents_policy":
        # A PolicySaver policy's signatures name TF-Agents and TFP type specs, which exist only once
        # their modules are imported: a consumer that never imported TF-Agents could not load it.
        import tf_agents.policies  # noqa: F401

        return tf.saved_model.load(str(entry.model_path))
    import tf_keras

    return tf_keras.models.load_model(entry.model_path, compile=False)


def make_policy_env(entry: PolicyEntry, render_mode: str | None = None) -> Any:
    """The Gymnasium environment an entry's policy plays, its observations preprocessed as in training."""
    import gymnasium as gym

    if entry.preprocessing.get("kind") == "atari":
        from stages.common.atari import make_atari_env

        return make_atari_env(entry.env_id, entry.preprocessing, render_mode=render_mode)
    if entry.preprocessing:
        raise ValueError(f"policy {entry.name!r}: unknown preprocessing {entry.preprocessing.get('kind')!r}")
    return gym.make(entry.env_id, render_mode=render_mode, **entry.env_kwargs)


def load_policy(entry: PolicyEntry, rng: np.random.Generator | None = None) -> BatchPolicy:
    """A batch policy (observations -> actions) for the evaluation helper.

    Greedy by default; with ``rng`` the stochastic policies sample as they did in training.
    """
    model = load_model(entry)
    if entry.output == "tf_agents_policy":
        return _saved_policy_actions(model, entry)
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def outputs(observations: tf.Tensor) -> tf.Tensor:
        return model(observations, training=False)

    dtype = np.dtype(entry.observation_dtype)

    def act(observations: np.ndarray) -> np.ndarray:
        batch = np.asarray(observations, dtype=dtype).reshape((-1, *entry.observation_shape))
        return actions_from_outputs(entry.output, outputs(tf.constant(batch)).numpy(), rng)

    return act


def _saved_policy_actions(saved: Any, entry: PolicyEntry) -> BatchPolicy:
    """Call a PolicySaver policy on a batch of observations.

    The saved ``action`` takes a batched time step and a policy state. Only the observation
    matters to a feed-forward policy such as DQN's greedy one; the state is its (empty) initial
    state. Observations are checked against the entry, so a consumer that forgot the
    preprocessing gets a sentence, not a shape error from deep inside the graph.
    """
    import tensorflow as tf
    from tf_agents.trajectories import time_step as ts

    dtype = np.dtype(entry.observation_dtype)

    def act(observations: np.ndarray) -> np.ndarray:
        batch = np.asarray(observations)
        if batch.shape[1:] != entry.observation_shape:
            raise ValueError(f"policy {entry.name!r} expects observations of shape "
                             f"{entry.observation_shape}, got {batch.shape[1:]}: build the "
                             "environment with make_policy_env(entry)")
        n = len(batch)
        step = ts.TimeStep(step_type=tf.fill([n], tf.constant(ts.StepType.MID, tf.int32)),
                           reward=tf.zeros([n], tf.float32),
                           discount=tf.ones([n], tf.float32),
                           observation=tf.constant(batch.astype(dtype, copy=False)))
        state = saved.get_initial_state(n)
        return saved.action(step, state).action.numpy().astype(np.int64)

    return act
