"""TensorBoard summaries of a TF-Agents training run, the ones TF-Agents' own DQN examples write.

    tensorboard --logdir data/atari_dqn       # or data/custom_env

Under the run's ``tensorboard/`` folder: the four train metrics (``Metrics/NumberOfEpisodes``,
``Metrics/EnvironmentSteps``, ``Metrics/AverageReturn``, ``Metrics/AverageEpisodeLength``) against
the train step and against the environment steps and episodes (``tf_summaries`` with
``step_metrics``), the agent's losses (``Losses/...``, written by ``agent.train`` itself while a
writer is the default and ``record_if`` lets it) and ``global_steps_per_sec``.

**Where they live, and why outside DVC.** Event files carry wall-clock times and the host name
(in the file name and in every event), so two identical runs never write the same bytes, and a
resumed run adds a file of its own. Declared as a DVC output they would change dvc.lock at every
run and need a digest of their own in the reproduction check; DVCLive's files already are the
declared, reproducible record of the same history. So the folder is written beside the stage's
outputs (git ignores ``data/*/``) but declared nowhere: neither DVC nor Snakemake hashes, caches
or deletes it, and the reproduction check never reads it. It is a view for people: a run from
scratch starts it afresh, a resumed run appends to it.

Summaries never touch a random number generator, and the metrics are read eagerly between the
traced collect and train steps, so the trained agent is the same with or without them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

FOLDER = "tensorboard"
STEPS_PER_SECOND = "global_steps_per_sec"


class TrainSummaries:
    """A summary writer for ``folder``; :meth:`recording` around the training loop, :meth:`write`
    at each log interval. ``fresh`` (a run from scratch) empties the folder first."""

    def __init__(self, folder: str | os.PathLike, train_step: Any, metrics: Sequence[Any],
                 interval: int, *, fresh: bool) -> None:
        import tensorflow as tf

        self.folder = Path(folder)
        if fresh:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._writer = tf.summary.create_file_writer(str(self.folder), flush_millis=10_000)
        self._train_step, self._metrics, self._interval = train_step, list(metrics), interval

    @contextmanager
    def recording(self) -> Iterator[None]:
        """The agent's own summaries (its losses), every ``interval`` train steps."""
        import tensorflow as tf

        with self._writer.as_default(), tf.summary.record_if(
                lambda: tf.math.equal(self._train_step % self._interval, 0)):
            yield

    def write(self, steps_per_second: float) -> None:
        """The train metrics against the train step and against the first two metrics (the
        episodes and environment steps, as TF-Agents' examples order them), and the speed."""
        import tensorflow as tf

        with self._writer.as_default(), tf.summary.record_if(True):
            for metric in self._metrics:
                metric.tf_summaries(train_step=self._train_step, step_metrics=self._metrics[:2])
            tf.summary.scalar(STEPS_PER_SECOND, steps_per_second, step=self._train_step)

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()


def read_scalars(folder: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the event files in ``folder``, by tag: (step, value), with TensorBoard's reader."""
    from tensorboard.backend.event_processing.event_accumulator import TENSORS, EventAccumulator
    from tensorboard.util import tensor_util

    accumulator = EventAccumulator(str(folder), size_guidance={TENSORS: 0})
    accumulator.Reload()
    return {tag: [(event.step, float(tensor_util.make_ndarray(event.tensor_proto)))
                  for event in accumulator.Tensors(tag)]
            for tag in accumulator.Tags()[TENSORS]}
