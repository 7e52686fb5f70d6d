"""Trained policies as artifacts: one export format, one index, one way to load and play them.

Every training stage exports each policy it trains into ``data/policies/<name>/``:

- the model (a Keras ``model.keras`` file, or a TF-Agents ``PolicySaver`` directory), and
- ``policy.json``, the policy's entry in the index: environment id, model path, observation shape
  and dtype, how the model's output becomes an action, and the model's sha256 (``model_sha256``,
  see :func:`model_digest`) as the stage wrote it.

The index is the folder ``data/policies``: one sub-folder per policy, owned by the stage that
trained it (so DVC and Snakemake see one producer per output). Evaluation, the report and the
Raspberry Pi bundle read entries with :func:`load_index` and play them with :func:`load_policy`;
none of them imports the stage that trained the policy. Reading an entry checks it first (known
fields and output kind, a model path inside its folder, a model file that opens and has the
recorded sha256), and loading the model checks its input and output shapes against the entry, so
a model copied over another policy's, or one the entry does not describe, is never played; a
problem is a :class:`PolicyIndexError` naming the policy, the stage that makes it and how to
rebuild it. An entry without ``model_sha256`` (exported before digests were recorded) is refused
the same way: its model cannot be checked, and rerunning its stage writes the digest.

Output kinds (``output`` in the entry) and their action rules (``actions_from_outputs`` in
pi/policy_contract.py, the one implementation the pipeline and the Pi runner share). Exporting
is stages/policies/export.py's.

- ``p_left``: one sigmoid unit, the probability of action 0 ("left"). Greedy: 0 when p >= 0.5.
  Sampled: 1 when a uniform draw exceeds p (the book's rule).
- ``action_probabilities``: a softmax over actions. Greedy: argmax. Sampled: categorical draw.
- ``q_values``: one value per action. Greedy: argmax (ties to the lowest action).
- ``continuous_action``: the action itself, a vector within a Box action space (SAC's
  deterministic action); ``n_actions`` is its length. Greedy and sampled alike: the output.
- ``tf_agents_policy``: a TF-Agents ``PolicySaver`` directory whose ``action`` already returns
  the action; its entry describes the observation it expects (for Atari, the preprocessing).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pi.policy_contract import actions_from_outputs
from stages.core.settings import InputError

INDEX_DIR = Path("data/policies")
ENTRY_FILE = "policy.json"
KERAS_MODEL_FILE = "model.keras"
OUTPUT_KINDS = ("p_left", "action_probabilities", "q_values", "tf_agents_policy", "continuous_action")
REQUIRED_FIELDS = ("name", "stage", "env_id", "model", "observation_shape", "observation_dtype",
                   "output", "n_actions")
# Version 2: entries record ``model_sha256``.
ENTRY_VERSION = 2
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class PolicyIndexError(InputError):
    """A policy in the index cannot be trusted: one sentence naming it, the stage that makes it
    and the command that rebuilds it."""

    def __init__(self, policy: str, stage: str | None, problem: str) -> None:
        self.policy, self.stage = policy, stage
        rebuild = (f"rebuild it with `dvc repro {stage}` (or snakemake)" if stage
                   else "rebuild it by rerunning the stage that trains it")
        super().__init__(f"policy {policy!r} (made by stage {stage or 'unknown'}): {problem}; {rebuild}")

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
    # sha256 of the model as exported (model_digest); None only before the export writes it.
    model_sha256: str | None = None
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
                if not (key in ("algorithm", "seed", "model_sha256") and value is None)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], folder: Path | None = None) -> PolicyEntry:
        """An entry from its JSON, checked: known fields and output kind, sane shapes, and a model
        path that stays inside the entry's folder. A problem raises :class:`PolicyIndexError`."""
        where = folder / ENTRY_FILE if folder else "policy entry"
        name = data.get("name", folder.name if folder else "?") if isinstance(data, Mapping) else "?"
        stage = data.get("stage") if isinstance(data, Mapping) else None

        def refuse(problem: str) -> PolicyIndexError:
            return PolicyIndexError(name, stage, f"{where}: {problem}")

        if not isinstance(data, Mapping):
            raise refuse("not a JSON object")
        known = {f for f in cls.__dataclass_fields__ if f != "folder"}
        unknown = sorted(set(data) - known)
        missing = sorted(f for f in REQUIRED_FIELDS if f not in data)
        if unknown or missing:
            raise refuse(f"unknown fields {unknown}, missing {missing}")
        if data["output"] not in OUTPUT_KINDS:
            raise refuse(f"output {data['output']!r} is not one of {', '.join(OUTPUT_KINDS)}")
        shape = data["observation_shape"]
        if not (isinstance(shape, list) and shape and all(_positive_int(n) for n in shape)):
            raise refuse(f"observation_shape {shape!r} is not a list of positive integers")
        if not _positive_int(data["n_actions"]):
            raise refuse(f"n_actions {data['n_actions']!r} is not a positive integer")
        try:
            np.dtype(data["observation_dtype"])
        except TypeError:
            raise refuse(f"observation_dtype {data['observation_dtype']!r} is not a NumPy dtype") from None
        model = data["model"]
        if not isinstance(model, str) or not _inside(folder, model):
            raise refuse(f"model {model!r} is not a path inside the policy's folder")
        digest = data.get("model_sha256")
        if digest is not None and not (isinstance(digest, str) and len(digest) == 64
                                       and all(c in "0123456789abcdef" for c in digest)):
            raise refuse(f"model_sha256 {digest!r} is not a sha256 digest (64 lowercase hex digits)")
        values = dict(data)
        values["observation_shape"] = tuple(int(n) for n in shape)
        values["training_seeds"] = tuple(int(s) for s in data.get("training_seeds", ()))
        return cls(**values, folder=folder)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _inside(folder: Path | None, model: str) -> bool:
    """A relative path without '..' that, links resolved, stays within ``folder``."""
    path = Path(model)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        return False
    if folder is None:
        return True
    return (folder / path).resolve().is_relative_to(folder.resolve())


def seeded_policy_name(algorithm: str, seed: int) -> str:
    """The index name of one training seed's run of an algorithm, e.g. ``pg_cartpole_s42``."""
    return f"{algorithm}_s{seed}"


# --- digests ----------------------------------------------------------------------------------


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_digest(path: str | os.PathLike) -> str:
    """The sha256 of a model: of a file's bytes; of a folder (a SavedModel), of one line
    ``<relative path>\\0<sha256 of the file>\\n`` per file, in sorted path order, so a file
    renamed, added, removed or changed changes it."""
    path = Path(path)
    if not path.is_dir():
        return _file_sha256(path)
    digest = hashlib.sha256()
    files = sorted((p.relative_to(path).as_posix(), p) for p in path.rglob("*") if p.is_file())
    for name, file in files:
        digest.update(f"{name}\0{_file_sha256(file)}\n".encode())
    return digest.hexdigest()


# --- reading ----------------------------------------------------------------------------------


def read_entry(folder: str | os.PathLike, stage: str | None = None) -> PolicyEntry:
    """The entry in ``folder``, checked (see :meth:`PolicyEntry.from_json`) and with a model file
    that opens; ``stage``: the stage dvc.yaml says makes it, named if the entry cannot be read."""
    folder = Path(folder)
    path = folder / ENTRY_FILE
    if not path.is_file():
        raise PolicyIndexError(folder.name, stage, f"no entry at {path}")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PolicyIndexError(folder.name, stage, f"{path} is not valid JSON ({error})") from None
    entry = PolicyEntry.from_json(data, folder=folder)
    if stage is not None and entry.stage != stage:
        raise PolicyIndexError(entry.name, stage, f"{path} says it was made by stage {entry.stage}, "
                               f"but dvc.yaml's stage {stage} makes it: the entry is from an older run")
    check_model_file(entry)
    return entry


def check_model_file(entry: PolicyEntry) -> None:
    """The model file opens (a Keras archive whose members are intact, or a SavedModel folder)
    and is the one the stage exported: its :func:`model_digest` is the entry's ``model_sha256``."""
    _check_model_opens(entry)
    path = entry.model_path
    if entry.model_sha256 is None:
        raise PolicyIndexError(entry.name, entry.stage, f"{entry.folder / ENTRY_FILE} records no "
                               "model_sha256 (it was exported before the index recorded model digests), "
                               "so its model cannot be checked")
    if model_digest(path) != entry.model_sha256:
        raise PolicyIndexError(entry.name, entry.stage, f"{path} is not the model the stage exported "
                               "(its sha256 differs from model_sha256 in its policy.json): the model "
                               "was replaced or changed after export")


def _check_model_opens(entry: PolicyEntry) -> None:
    path = entry.model_path
    if entry.output == "tf_agents_policy":
        for member in ("saved_model.pb", "variables/variables.index"):
            if not (path / member).is_file() or (path / member).stat().st_size == 0:
                raise PolicyIndexError(entry.name, entry.stage, f"{path} lacks {member}: not a SavedModel")
        return
    if not path.is_file():
        raise PolicyIndexError(entry.name, entry.stage, f"model file {path} is missing")
    try:
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
            names = set(archive.namelist())
            weights = archive.read("model.weights.h5")[:8] if "model.weights.h5" in names else b""
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as error:
        raise PolicyIndexError(entry.name, entry.stage,
                               f"{path} cannot be opened as a Keras archive ({error})") from None
    if broken is not None or not {"config.json", "model.weights.h5"} <= names or weights != HDF5_SIGNATURE:
        raise PolicyIndexError(entry.name, entry.stage, f"{path} is damaged: "
                               + (f"member {broken} fails its checksum" if broken
                                  else "config.json or the HDF5 weights are missing"))


def load_index(index_dir: str | os.PathLike = INDEX_DIR, declared: Mapping[str, str] | None = None,
               *, missing_ok: bool = False) -> dict[str, PolicyEntry]:
    """Every exported policy, by name, in name order, each checked (:func:`read_entry`).

    ``declared`` (policy name -> the stage that exports it, from the DAG: see
    ``stages.core.dag.declared_policies``) makes the index what dvc.yaml says it is: a declared
    policy that is missing is an error naming its stage (left out with ``missing_ok``: the report
    shows it as not run yet), and a folder no stage declares (left by a seed, variant or game
    since removed from params.yaml) is left out, with a note.
    """
    index_dir = Path(index_dir)
    # Hidden folders are policies being written, or a killed run's leftovers (stages/core/io.py).
    folders = sorted(p.parent for p in index_dir.glob(f"*/{ENTRY_FILE}")
                     if not p.parent.name.startswith(".")) if index_dir.is_dir() else []
    if declared is None:
        return {entry.name: entry for entry in (read_entry(folder) for folder in folders)}
    for folder in folders:
        if folder.name not in declared:
            print(f"note: {folder} is left out: no stage of dvc.yaml exports it (a seed, variant, "
                  "configuration or game removed from params.yaml?); delete it to silence this",
                  file=sys.stderr)
    entries = {}
    for name, stage in sorted(declared.items()):
        if missing_ok and not (index_dir / name / ENTRY_FILE).is_file():
            continue
        entries[name] = read_entry(index_dir / name, stage)
    return entries


def load_model(entry: PolicyEntry) -> Any:
    """The Keras model (or TF-Agents saved policy) an entry names, checked against the entry
    (:func:`check_model_file`, then :func:`check_model_shapes`); a file that does not load or does
    not fit is a :class:`PolicyIndexError` naming the policy and its stage."""
    check_model_file(entry)
    import tensorflow as tf

    try:
        if entry.output == "tf_agents_policy":
            # A PolicySaver policy's signatures name TF-Agents and TFP type specs, which exist only
            # once their modules are imported: a consumer that never imported TF-Agents could not
            # load it.
            import tf_agents.policies  # noqa: F401

            model = tf.saved_model.load(str(entry.model_path))
        else:
            import tf_keras

            model = tf_keras.models.load_model(entry.model_path, compile=False)
    except (OSError, ValueError, TypeError, KeyError, tf.errors.OpError) as error:
        raise PolicyIndexError(entry.name, entry.stage, f"{entry.model_path} does not load "
                               f"({type(error).__name__}: {error})") from None
    check_model_shapes(entry, model)
    return model


def model_signature(entry: PolicyEntry, model: Any) -> tuple[tuple, str, tuple]:
    """What a loaded model takes and gives: its observation shape and dtype, and its output shape
    (per observation) for a Keras model, or ``(number of actions,)`` for a TF-Agents policy."""
    if entry.output == "tf_agents_policy":
        from tf_agents.specs import tensor_spec

        specs = entry.model_path / "policy_specs.pbtxt"
        if not specs.is_file():
            raise PolicyIndexError(entry.name, entry.stage, f"{entry.model_path} lacks policy_specs.pbtxt: "
                                   "not a TF-Agents PolicySaver export")
        data = tensor_spec.from_pbtxt_file(str(specs))["collect_data_spec"]
        observation, action = data.observation, data.action
        return (tuple(observation.shape), observation.dtype.name,
                (int(action.maximum) - int(action.minimum) + 1,))
    import tensorflow as tf

    inputs, outputs = model.inputs, model.outputs
    if len(inputs) != 1 or len(outputs) != 1:
        raise PolicyIndexError(entry.name, entry.stage, f"{entry.model_path} has {len(inputs)} inputs and "
                               f"{len(outputs)} outputs; a policy model has one of each")
    return tuple(inputs[0].shape[1:]), tf.as_dtype(inputs[0].dtype).name, tuple(outputs[0].shape[1:])


def check_model_shapes(entry: PolicyEntry, model: Any) -> None:
    """The model takes the entry's observations and gives what its output kind needs: one unit
    for ``p_left``, one per action for the others, the entry's number of actions for a TF-Agents
    policy. A mismatch means the model is another policy's (or the entry another model's)."""
    shape, dtype, outputs = model_signature(entry, model)
    problems = []
    if shape != entry.observation_shape:
        problems.append(f"takes observations of shape {shape}, the entry says {entry.observation_shape}")
    if entry.output == "tf_agents_policy":
        if dtype != entry.observation_dtype:
            problems.append(f"takes {dtype} observations, the entry says {entry.observation_dtype}")
        if outputs != (entry.n_actions,):
            problems.append(f"has {outputs[0]} actions, the entry says {entry.n_actions}")
    else:
        expected = (1,) if entry.output == "p_left" else (entry.n_actions,)
        if outputs != expected:
            problems.append(f"gives outputs of shape {outputs}, the entry's {entry.output} policy of "
                            f"{entry.n_actions} actions needs {expected}")
    if problems:
        raise PolicyIndexError(entry.name, entry.stage, f"{entry.model_path} " + " and ".join(problems)
                               + ": the model is not the one its entry describes")


def make_policy_env(entry: PolicyEntry, render_mode: str | None = None) -> Any:
    """The Gymnasium environment an entry's policy plays, its observations preprocessed as in training."""
    import gymnasium as gym

    if entry.preprocessing.get("kind") == "atari":
        from pi.policy_contract import make_atari_env

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
