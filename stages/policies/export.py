"""Exporting a trained policy into the index: the model and its ``policy.json`` entry, written as
one folder that replaces the previous one whole (stages/policies/index.py describes the format).

Keras archives and SavedModels carry a save date or a random id; both are cleared, so a stage
that trains the same weights writes the same bytes.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stages.core.io import atomic_folder, staged
from stages.policies.index import ENTRY_FILE, KERAS_MODEL_FILE, PolicyEntry, model_digest, read_entry


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
    """Write the entry with the digest of the model already in ``folder``."""
    entry = dataclasses.replace(entry, model_sha256=model_digest(folder / entry.model))
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
    return read_entry(staged(folder))  # where it waits in the stage's output set


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
    return read_entry(staged(folder))  # where it waits in the stage's output set
