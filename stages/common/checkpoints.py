"""Resumable training: a checkpoint folder that lets a killed run continue where it stopped.

The folder holds a TF-Agents ``Checkpointer`` (whatever trackables the stage hands it: agent,
policy, replay buffer, train step, metrics), the training log up to the checkpoint, and the
settings that shaped the run. A run whose settings differ, or that asks for fewer iterations
than the checkpoint already has, starts over; a run at its last iteration has nothing to train.

Both engines keep the folder between runs: it is a ``persist: true`` output in dvc.yaml, and
the Snakefile leaves it out of the rule's outputs (Snakemake deletes outputs before a job runs),
see ``StageSpec.state`` in stages/common/dag.py.

Saving is ordered so a kill at any moment leaves a consistent folder: the log first (rows up to
the new iteration), then the TensorFlow checkpoint, then the settings file. On restore the
checkpoint's own step decides, and log rows beyond it are dropped.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from stages.common.io import write_csv, write_text

SETTINGS_FILE = "settings.json"
LOG_FILE = "training_log.csv"
TF_FOLDER = "tf"


def _latest_step(tf_dir: Path) -> int | None:
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(str(tf_dir)) if tf_dir.is_dir() else None
    return int(latest.rsplit("-", 1)[1]) if latest else None


def restore_trackables(folder: str | os.PathLike, **trackables: Any) -> None:
    """Restore some objects (say, a policy) from the folder's checkpoint, ignoring the rest."""
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(str(Path(folder) / TF_FOLDER))
    if latest is None:
        raise FileNotFoundError(f"no checkpoint in {folder}")
    tf.train.Checkpoint(**trackables).restore(latest).expect_partial().assert_existing_objects_matched()


class TrainingCheckpoint:
    """Open (and if needed reset) ``folder``; then :meth:`restore` and :meth:`save` by iteration."""

    def __init__(self, folder: str | os.PathLike, settings: dict[str, Any], iterations: int) -> None:
        self.folder = Path(folder)
        self._settings = json.loads(json.dumps(settings))  # the form it takes in the file
        self.reset_reason = self._stale_reason(iterations)
        if self.reset_reason:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._checkpointer = None

    def _stale_reason(self, iterations: int) -> str | None:
        step = _latest_step(self.folder / TF_FOLDER)
        if step is None:
            return None
        settings_file = self.folder / SETTINGS_FILE
        saved = json.loads(settings_file.read_text()) if settings_file.is_file() else None
        if saved != self._settings:
            changed = sorted(k for k in set(self._settings) | set(saved or {})
                             if (saved or {}).get(k) != self._settings.get(k))
            return f"it was made with other settings ({', '.join(changed)})"
        if step > iterations:
            return f"it is at iteration {step}, beyond the {iterations} asked for"
        return None

    def restore(self, global_step: Any, **trackables: Any) -> tuple[int, pd.DataFrame | None]:
        """Restore the trackables if a checkpoint exists; return (iteration, log rows up to it)."""
        from tf_agents.utils import common

        self._global_step = global_step
        self._checkpointer = common.Checkpointer(ckpt_dir=str(self.folder / TF_FOLDER), max_to_keep=1,
                                                 global_step=global_step, **trackables)
        if not self._checkpointer.checkpoint_exists:
            return 0, None
        self._checkpointer.initialize_or_restore()
        iteration = int(global_step.numpy())
        log_file = self.folder / LOG_FILE
        # pandas reads floats back exactly as written: the resumed run's DVCLive history logs these
        # rows again (stages/common/live_log.py).
        log = pd.read_csv(log_file) if log_file.is_file() else None
        if log is not None:
            log = log[log["iteration"] <= iteration].reset_index(drop=True)
        return iteration, log

    def save(self, log: pd.DataFrame) -> None:
        """Checkpoint the current state (at ``global_step``) with the log rows so far."""
        write_csv(self.folder / LOG_FILE, log)
        self._checkpointer.save(self._global_step)
        self._drop_timestamps()
        write_text(self.folder / SETTINGS_FILE, json.dumps(self._settings, indent=2, sort_keys=True) + "\n")

    def _drop_timestamps(self) -> None:
        """Rewrite TensorFlow's index of checkpoints without save times: same run, same bytes."""
        import tensorflow as tf

        tf_dir = self.folder / TF_FOLDER
        latest = Path(tf.train.latest_checkpoint(str(tf_dir))).name
        # The CheckpointState proto in text form, with the path relative to the folder.
        write_text(tf_dir / "checkpoint", f'model_checkpoint_path: "{latest}"\n'
                                          f'all_model_checkpoint_paths: "{latest}"\n')
        # Without save times TensorFlow treats a checkpoint it recovers at start-up as one to
        # preserve, so the one a resumed run started from (2.9 GB for Atari) would stay forever.
        for path in tf_dir.glob("ckpt-*"):
            if path.name.split(".")[0] != latest:
                path.unlink()
