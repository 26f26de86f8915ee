"""Checkpoint files written atomically and read through the one safe loader: Lightning's ``CheckpointIO`` plugin."""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from experiments.rundir.stops import CheckpointWriteError
from fileio.atomic import atomic_path
from fileio.checkpoints import load_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint I/O that writes to a temporary file and renames it, and reads through the safe loader.

    A crash, a kill or a full disk mid-write leaves the previous checkpoint untouched instead of a truncated file.
    Loading uses :func:`fileio.checkpoints.load_checkpoint`: ``weights_only`` unless the user trusts the
    file, and one clear error naming the file when it is unreadable.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        try:
            with atomic_path(path) as tmp:
                torch.save(checkpoint, tmp)
        except OSError as err:
            reason = err.strerror or str(err)
            raise CheckpointWriteError(err.errno, f"could not write checkpoint '{path}': {reason}") from err

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> Any:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        trust = None if weights_only is None else not weights_only
        return load_checkpoint(path, trust=trust, map_location=map_location if map_location is not None else "cpu")
