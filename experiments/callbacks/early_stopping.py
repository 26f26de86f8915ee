"""Early stopping for any run: stop once the monitored validation metric stops improving.

Off by default (``--early_stopping.enabled true`` turns it on; sweeps turn it on for every trial). The metric and
its direction are the checkpoint callback's (the model's ``monitor``/``monitor_mode`` unless the config says
otherwise). When it stops a run, the end-of-run summary and ``status.json`` say at which epoch and why; its counter
is saved in every checkpoint, so ``--resume`` continues with the patience already used up.
"""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping as _LightningEarlyStopping
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

from experiments.callbacks.report import EarlyStop, RunReport
from lightning_models.base import TaskModule


class EarlyStopping(_LightningEarlyStopping):
    """Lightning's ``EarlyStopping`` with an on/off switch, ``auto`` monitor and mode, and a recorded reason.

    Args:
        enabled: Stop early at all (off by default: a run trains its ``max_epochs``).
        monitor: Metric to watch; ``auto`` watches the checkpoint callback's metric (``val/acc`` for classifiers,
            ``val/loss`` for regressors).
        min_delta: Smallest change of the metric that counts as an improvement.
        patience: Validation checks without improvement before stopping (one per epoch by default).
        mode: ``min``, ``max``, or ``auto`` for the checkpoint callback's mode.
        strict: Fail when the metric is never logged (e.g. without a validation split).
        check_finite: Stop when the metric becomes NaN or infinite.
        stopping_threshold: Stop as soon as the metric reaches this value.
        divergence_threshold: Stop as soon as the metric is worse than this value.
        check_on_train_epoch_end: Check at the end of the training epoch instead of after validation.
    """

    def __init__(
        self,
        enabled: bool = False,
        monitor: str = "auto",
        min_delta: float = 0.0,
        patience: int = 3,
        mode: Literal["auto", "min", "max"] = "auto",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_on_train_epoch_end: bool | None = None,
    ) -> None:
        if patience < 1:
            raise ValueError(f"early_stopping.patience must be >= 1, got {patience}")
        if min_delta < 0:
            raise ValueError(f"early_stopping.min_delta must be >= 0, got {min_delta}")
        super().__init__(
            monitor=monitor,
            min_delta=min_delta,
            patience=patience,
            mode="min" if mode == "auto" else mode,
            strict=strict,
            check_finite=check_finite,
            stopping_threshold=stopping_threshold,
            divergence_threshold=divergence_threshold,
            check_on_train_epoch_end=check_on_train_epoch_end,
        )
        self.enabled = enabled
        self._auto_mode = mode == "auto"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Resolved here, before a resumed run restores this callback's state under its (monitor, mode) key.
        ckpt = trainer.checkpoint_callback if isinstance(trainer.checkpoint_callback, ModelCheckpoint) else None
        task = pl_module if isinstance(pl_module, TaskModule) else None
        if self.monitor == "auto":
            self.monitor = (ckpt.monitor if ckpt is not None else None) or (task.monitor if task else "val/loss")
        if self._auto_mode:
            same_metric = ckpt is not None and ckpt.monitor == self.monitor
            mode = ckpt.mode if same_metric else (task.monitor_mode if task else "min")
            self._set_mode(mode)
        super().setup(trainer, pl_module, stage)

    def _set_mode(self, mode: str) -> None:
        self.mode = mode
        self._auto_mode = False
        # Lightning stores min_delta signed by the direction and starts best_score at the worst value.
        self.min_delta = abs(self.min_delta) * (1 if self.monitor_op == torch.gt else -1)
        self.best_score = torch.tensor(-torch.inf if mode == "max" else torch.inf)

    def _run_early_stopping_check(self, trainer: L.Trainer) -> None:
        if self.enabled:
            super()._run_early_stopping_check(trainer)

    @property
    def stop_reason(self) -> str | None:
        """Why the run stopped early (``None`` while it has not)."""
        if self.stopping_reason == EarlyStoppingReason.NOT_STOPPED:
            return None
        return (self.stopping_reason_message or self.stopping_reason.name).replace(" Signaling Trainer to stop.", "")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Report the stop in the run report (the summary and ``status.json`` read it)."""
        report = RunReport.of(trainer)
        if not self.enabled or self.stop_reason is None or report is None:
            return
        report.early_stop = EarlyStop(int(self.stopped_epoch), trainer.max_epochs, self.stop_reason)
