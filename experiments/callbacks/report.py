"""The run report: what one run did, declared in one typed object that its callbacks, its model and the launcher
fill in, and the one source of the end-of-run summary and of the final ``status.json``.

Every launcher run has one :class:`RunReport` among its callbacks. A callback that did something worth reporting
finds it with :meth:`RunReport.of` and sets its field (the ONNX export its :class:`~lightning_models.export.
ONNXExportResult`, early stopping where and why it stopped); what the model reports it declares as attributes,
read here when the fit starts (the pre-trained weights it loaded, its parameters and fine-tuning method); the
launcher adds the fit's time, the test metrics and the best checkpoint. Tests assert on these fields, not on printed
text. Outside the launcher (a plain Lightning ``Trainer``) the callbacks work without one.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L

from lightning_models.base import TaskModule
from lightning_models.peft import FinetuneMethods

if TYPE_CHECKING:
    from lightning_models.export import ONNXExportResult
    from lightning_models.finetune import LoadReport


@dataclass
class EarlyStop:
    """Where and why early stopping ended a run.

    Attributes:
        epoch: The epoch it stopped after.
        max_epochs: The epochs the run was set to train.
        reason: Lightning's reason, one line.
    """

    epoch: int
    max_epochs: int | None
    reason: str


@dataclass
class AutoLR:
    """The learning rate ``--auto_lr`` chose: the range test's suggestion, and where its plot went."""

    lr: float
    plot: Path | None = None


@dataclass
class BestCheckpoint:
    """The run's best checkpoint by its monitored metric."""

    path: Path
    monitor: str
    score: float | None


class RunReport(L.Callback):
    """What a run did, field by field (``None`` or empty for what did not happen).

    Attributes:
        run_dir: The run folder (``None`` without one, e.g. under ``fast_dev_run``).
        fit_seconds: Wall time of the whole fit (data setup, validation, checkpoints and the ONNX export included).
        epochs: Epochs the fit ran to.
        parameters: The model's parameter counts and fine-tuning method, one line (models with fine-tuning
            methods: :meth:`~lightning_models.peft.FinetuneMethods.parameter_summary`).
        pretrained: What ``model.pretrained`` loaded (:class:`~lightning_models.finetune.LoadReport`).
        auto_lr: The rate ``--auto_lr`` trained at.
        early_stop: Where early stopping ended the run.
        onnx: The export at the end of fit.
        best: The best checkpoint.
        test_metrics: Test metrics of the best checkpoint (empty when no test ran).
    """

    def __init__(self, run_dir: Path | None = None) -> None:
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.fit_seconds: float | None = None
        self.epochs: int | None = None
        self.parameters: str | None = None
        self.pretrained: LoadReport | None = None
        self.auto_lr: AutoLR | None = None
        self.early_stop: EarlyStop | None = None
        self.onnx: ONNXExportResult | None = None
        self.best: BestCheckpoint | None = None
        self.test_metrics: dict[str, float] = {}

    @classmethod
    def of(cls, trainer: L.Trainer) -> RunReport | None:
        """The trainer's run report, if it has one (every launcher run does)."""
        return next((cb for cb in trainer.callbacks if isinstance(cb, cls)), None)

    # -- what the model declares -----------------------------------------------------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if isinstance(pl_module, FinetuneMethods):
            self.parameters = pl_module.parameter_summary()
        if isinstance(pl_module, TaskModule) and pl_module.pretrained_report is not None:
            self.pretrained = pl_module.pretrained_report

    # -- what it reads as ------------------------------------------------------------------------------------------
    def status_fields(self) -> dict[str, Any]:
        """What ``status.json`` records beyond the state, the step and the metrics."""
        fields: dict[str, Any] = {}
        if self.early_stop is not None:
            fields["stopped_early"] = {"epoch": self.early_stop.epoch, "reason": self.early_stop.reason}
        return fields

    def summary(self) -> str:
        """The end-of-run summary: results, what the run did, and the commands that open its curves and graph."""
        lines = ["", "=" * 72]
        if self.test_metrics:
            shown = "  ".join(f"{k}={v:.4f}" for k, v in sorted(self.test_metrics.items()))
            lines.append(f"test       {shown}")
        if self.best is not None:
            score = f" ({self.best.monitor}={self.best.score:.4f})" if self.best.score is not None else ""
            lines.append(f"best ckpt  {self.best.path}{score}")
        if self.fit_seconds is not None:
            epochs = self.epochs or 0
            lines.append(f"fit        {self.fit_seconds:.1f} s, {epochs} epoch{'' if epochs == 1 else 's'}")
        if self.auto_lr is not None:
            where = f" (plot: {self.auto_lr.plot})" if self.auto_lr.plot else ""
            lines.append(f"lr         {self.auto_lr.lr:g}, from the learning-rate range test{where}")
        if self.pretrained is not None:
            lines.append(f"pretrained {self.pretrained.summary()}")
        if self.parameters is not None:
            lines.append(f"params     {self.parameters}")
        if self.early_stop is not None:
            stop = self.early_stop
            lines.append(f"early stop at epoch {stop.epoch} of {stop.max_epochs}: {stop.reason}")
        if self.onnx is not None:
            lines.append(f"onnx       {self.onnx.summary()}")
        if self.run_dir is not None:
            python, run = shlex.quote(sys.executable), shlex.quote(str(self.run_dir))
            lines.append(f"run        {self.run_dir}")
            lines.append(f"tensorboard  {python} -m tensorboard.main --logdir {run} --host 127.0.0.1")
            if any(self.run_dir.glob("*.onnx")):
                lines.append(f"netron       {python} -m experiments.view {run}")
        lines.append("=" * 72)
        return "\n".join(lines)
