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
    """Sends this process a SIGINT (as Ctrl+C would) right after the optimizer step number ``step``; a run resumed
    at that step (which has it in its saved config) is not interrupted again.

    Args:
        step: The global step after which to interrupt.
    """

    def __init__(self, step: int) -> None:
        self.step = step
        self._started_at = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started_at = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step > self._started_at:
            os.kill(os.getpid(), signal.SIGINT)


class ConfusionMarker(L.Callback):
    """Writes ``confusion.json`` on rank 0 at the end of fit: the counts of the last confusion matrix the run's
    :class:`~experiments.callbacks.Dashboards` drew (``null`` if none).

    Args:
        out_dir: Folder for the file.
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from experiments.callbacks import Dashboards

        if not trainer.is_global_zero:
            return
        dashboards = next(cb for cb in trainer.callbacks if isinstance(cb, Dashboards))
        counts = dashboards.last_confusion.tolist() if dashboards.last_confusion is not None else None
        path = Path(self.out_dir) / "confusion.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(counts))


class PauseAt(L.Callback):
    """At one hook, writes the file ``marker`` and sleeps, so a test can signal or kill the run at that point.

    Pauses once: not when ``marker`` exists already (a resumed run goes straight on).

    Args:
        hook: ``setup``, ``on_fit_start`` or ``on_train_epoch_end``.
        marker: File written when the pause starts.
        seconds: Length of the pause.
        epoch: For ``on_train_epoch_end``: the epoch after which to pause.
    """

    def __init__(self, hook: str, marker: str, seconds: float = 120.0, epoch: int = 0) -> None:
        self.hook = hook
        self.marker = Path(marker)
        self.seconds = seconds
        self.epoch = epoch

    def _pause(self, hook: str) -> None:
        if hook == self.hook and not self.marker.exists():
            import time

            self.marker.write_text(str(os.getpid()))
            time.sleep(self.seconds)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._pause("setup")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pause("on_fit_start")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            self._pause("on_train_epoch_end")


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


class MarkAtStep(L.Callback):
    """Writes ``rank{N}.pid`` (this process's PID) once the global step reaches ``step``, then slows every later step
    by ``sleep`` seconds, so a test can signal one process of a running multi-process run at a known point.

    Args:
        out_dir: Folder for the files.
        step: The global step after which the file is written.
        sleep: Seconds to sleep after each training step from then on.
    """

    def __init__(self, out_dir: str, step: int = 3, sleep: float = 0.2) -> None:
        self.out_dir = Path(out_dir)
        self.step = step
        self.sleep = sleep

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step < self.step:
            return
        marker = self.out_dir / f"rank{trainer.global_rank}.pid"
        if not marker.exists():
            self.out_dir.mkdir(parents=True, exist_ok=True)
            marker.write_text(str(os.getpid()))
        import time

        time.sleep(self.sleep)


class StepLog(L.Callback):
    """Appends ``rank{N}.steps`` with one line per training batch: ``epoch global_step batch_idx pid`` (resumed runs
    append), so a test can tell where each process of a run started and stopped on each rank.

    Args:
        out_dir: Folder for the files.
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / f"rank{trainer.global_rank}.steps", "a") as f:
            f.write(f"{trainer.current_epoch} {trainer.global_step} {batch_idx} {os.getpid()}\n")


class BatchRecorder(L.Callback):
    """Saves ``rank{N}-{PID}.pt`` when a fit ends or stops: ``(global step, inputs)`` of every training batch this
    process trained on, in order (each input flattened to its first ``width`` values), so a test can compare what
    several processes, or a stopped and a resumed process, saw with what one process sees.

    Args:
        out_dir: Folder for the files.
        width: Values of each input kept (tokens of a window, pixels of an image).
    """

    def __init__(self, out_dir: str, width: int = 16) -> None:
        self.out_dir = Path(out_dir)
        self.width = width
        self.batches: list[tuple[int, Any]] = []

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        x = batch[0].detach().cpu()
        self.batches.append((trainer.global_step, x.reshape(len(x), -1)[:, : self.width].clone()))

    def _save(self, trainer: L.Trainer) -> None:
        import torch

        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(self.batches, self.out_dir / f"rank{trainer.global_rank}-{os.getpid()}.pt")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._save(trainer)
