"""Checkpoints of a training run, handed to the loop by whoever owns the run.

The loop (:func:`spark_cf.training.loop.minimize`) knows nothing of files: it asks a
checkpointer (anything with the methods of :class:`Checkpointer`) for a state to resume
from, whether an iteration is due, and hands it the state to keep. The files themselves
are written and read by :mod:`spark_cf.storage` (the only module that touches paths).
Jobs build a :class:`Checkpointer` from ``[train]`` with :func:`from_train_config`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from spark_cf import storage
from spark_cf.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpointer:
    """Save the run's state in ``directory`` every ``every`` iterations (0 = never); with
    ``resume``, start from the state saved there last.

    A saved state carries the run's fingerprint (the data and the settings the trajectory
    depends on); resuming from one made with another fingerprint is refused with
    :class:`~spark_cf.errors.CheckpointError`.
    """

    directory: str
    every: int = 0
    resume: bool = False

    def load(self, fingerprint: str) -> dict[str, Any] | None:
        """The state to resume from: None unless ``resume`` and a checkpoint exists.

        Raises
        ------
        CheckpointError
            The checkpoint is unreadable or was made with another config or input.
        """
        if not self.resume:
            return None
        return storage.load_checkpoint(self.directory, fingerprint)

    def due(self, iteration: int) -> bool:
        """Whether the state after ``iteration`` is to be saved."""
        return self.every > 0 and iteration % self.every == 0

    def save(self, fingerprint: str, state: dict[str, Any]) -> None:
        """Write ``state`` (``w``, ``iteration``, ``history``, ``rises``, ``stop_reason``,
        ``optimizer``) atomically over the previous checkpoint."""
        storage.save_checkpoint(self.directory, fingerprint, state)

    def __str__(self) -> str:
        return self.directory


def from_train_config(train: TrainConfig) -> Checkpointer | None:
    """The checkpointer of ``train.checkpoint_dir``, ``checkpoint_every`` and ``resume``;
    None when ``checkpoint_dir`` is empty."""
    if not train.checkpoint_dir:
        return None
    return Checkpointer(train.checkpoint_dir, train.checkpoint_every, train.resume)
