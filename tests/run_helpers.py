"""Test-only callbacks that launcher runs load by class path (``--trainer.callbacks+=tests.run_helpers.NAME``).

They live in an importable module, not in a test file, because DDP worker processes re-run the launcher and must
import them by name.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import lightning as L


class RankMarker(L.Callback):
    """Writes ``rank{N}.json`` per process: its rank, the world size and how many samples it trained/validated on.

    Args:
        out_dir: Folder for the files.
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.train_samples = 0
        self.val_samples = 0
        self.train_batches: list[list[int]] = []

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.train_samples += int(batch[1].shape[0])

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.val_samples = 0

    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self.val_samples += int(batch[1].shape[0])

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "pid": os.getpid(),
            "train_samples": self.train_samples,
            "val_samples": self.val_samples,
            # Identical on every rank when DDP kept the replicas in step.
            "param_sum": float(sum(p.detach().double().sum() for p in pl_module.parameters())),
        }
        path = Path(self.out_dir) / f"rank{trainer.global_rank}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))


class SigintAtStep(L.Callback):
    """Sends this process a SIGINT (as Ctrl+C would) right after the optimizer step number ``step``.

    Args:
        step: The global step after which to interrupt.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


class SigkillInRun(L.Callback):
    """Kills this process with SIGKILL (as the OOM killer or a lost node would) in the run folder named ``folder``.

    Args:
        folder: Name of the run folder (e.g. a sweep's ``trial_2``) whose first training step ends the process.
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.log_dir and Path(trainer.log_dir).name == self.folder:
            os.kill(os.getpid(), signal.SIGKILL)
