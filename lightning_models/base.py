"""Shared LightningModule bases: one training/validation/test step, metrics per stage, optimizers by name.

Every architecture in this package subclasses one of the task bases below and only builds ``self.net``:

* :class:`ClassifierModule` - multi-class, cross-entropy, accuracy and macro-F1.
* :class:`BinaryClassifierModule` - one logit, binary cross-entropy, accuracy, F1 and AUROC.
* :class:`RegressorModule` - MSE loss, MSE / MAE / R2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import torch
import torchmetrics
from torch import Tensor, nn

OptimizerName = Literal["adam", "adamw", "sgd"]
SchedulerName = Literal["none", "cosine", "onecycle", "step"]
Stage = Literal["train", "val", "test"]


class TaskModule(L.LightningModule):
    """Base for every zerotune model: optimizer/scheduler by name, one shared step, metrics per stage.

    Subclasses set ``self.net`` (or override :meth:`forward`) and implement :meth:`compute_loss`,
    :meth:`make_metrics` and :meth:`metric_inputs`.

    Args:
        num_classes: Number of outputs the head produces (classes, or targets for regression). Linked from the
            datamodule by the launcher.
        input_shape: Shape of one sample without the batch axis, e.g. ``(1, 28, 28)``. Linked from the datamodule.
        optimizer: ``adam``, ``adamw`` or ``sgd``.
        lr: Peak learning rate.
        weight_decay: L2 penalty (decoupled for ``adamw``).
        momentum: Momentum for ``sgd`` (``beta1`` is not changed for Adam).
        nesterov: Nesterov momentum for ``sgd``.
        scheduler: ``none``, ``cosine`` (per-step cosine decay after warmup), ``onecycle`` or ``step``.
        warmup_epochs: Linear warmup length for ``cosine``.
        step_size: Epochs between decays for ``step``.
        gamma: Decay factor for ``step``.
    """

    #: Metric the launcher's checkpoint callback monitors unless the config says otherwise, and its mode.
    monitor: str = "val/acc"
    monitor_mode: Literal["min", "max"] = "max"

    def __init__(
        self,
        num_classes: int = 10,
        input_shape: Sequence[int] = (1, 28, 28),
        optimizer: OptimizerName = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        nesterov: bool = False,
        scheduler: SchedulerName = "none",
        warmup_epochs: float = 0.0,
        step_size: int = 10,
        gamma: float = 0.1,
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"model.lr must be positive, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"model.weight_decay must be >= 0, got {weight_decay}")
        if num_classes < 1:
            raise ValueError(f"model.num_classes must be >= 1, got {num_classes}")
        # Collects the arguments of every __init__ in the subclass chain.
        self.save_hyperparameters()
        self.num_classes = int(num_classes)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.example_input_array = torch.zeros(2, *self.input_shape)
        metrics = self.make_metrics()
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    # -- to be provided by task subclasses -------------------------------------------------------------------------
    def make_metrics(self) -> torchmetrics.MetricCollection:
        """Metrics computed at every stage (keys without the stage prefix, e.g. ``acc``)."""
        raise NotImplementedError

    def compute_loss(self, output: Tensor, target: Tensor) -> Tensor:
        """Scalar loss from the network output and the target batch."""
        raise NotImplementedError

    def metric_inputs(self, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Turn the raw output into what the metrics expect (probabilities, flattened predictions...)."""
        return output, target

    def predict_output(self, output: Tensor) -> Tensor:
        """Prediction from raw output: class index for classifiers, value for regressors."""
        return output

    # -- forward and the shared step -------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Run the network: ``(N, *input_shape) -> (N, num_outputs)``."""
        return self.net(x)

    def shared_step(self, batch: tuple[Tensor, Tensor], stage: Stage) -> Tensor:
        """One step for any stage: forward, loss, metric update, logging. Returns the loss."""
        x, y = batch
        output = self(x)
        loss = self.compute_loss(output, y)
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(*self.metric_inputs(output.detach(), y))
        is_train = stage == "train"
        # Per-step train loss for the curves; epoch values for everything else. sync_dist only on epoch-level
        # values, so DDP reduces them once per epoch, not per step.
        self.log(
            f"{stage}/loss",
            loss,
            on_step=is_train,
            on_epoch=not is_train,
            prog_bar=True,
            sync_dist=not is_train,
            batch_size=x.shape[0],
        )
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=not is_train)
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.shared_step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.shared_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.shared_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, list | tuple) else batch
        return self.predict_output(self(x))

    # -- optimization ----------------------------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        """Parameter groups for the optimizer; fine-tuning subclasses override this for per-group learning rates."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        groups = self.param_groups()
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(
                groups, lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov, weight_decay=hp.weight_decay
            )
        elif hp.optimizer == "adamw":
            opt = torch.optim.AdamW(groups, lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.Adam(groups, lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler == "none":
            return opt
        if hp.scheduler == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=hp.step_size, gamma=hp.gamma)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        total = max(1, int(self.trainer.estimated_stepping_batches))
        if hp.scheduler == "onecycle":
            max_lr = [g.get("lr", hp.lr) for g in opt.param_groups]
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=total)
        else:
            steps_per_epoch = total / max(1, self.trainer.max_epochs or 1)
            warmup = int(hp.warmup_epochs * steps_per_epoch)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(warmup, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _warmup_cosine(warmup: int, total: int):
    """LR multiplier: linear warmup over ``warmup`` steps, then cosine decay to zero at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class ClassifierModule(TaskModule):
    """Multi-class classifier: cross-entropy with optional label smoothing, accuracy and macro-F1.

    Args:
        label_smoothing: Cross-entropy label smoothing in ``[0, 1)``.
        **kwargs: See :class:`TaskModule`.
    """

    def __init__(self, label_smoothing: float = 0.0, **kwargs: Any) -> None:
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"model.label_smoothing must be in [0, 1), got {label_smoothing}")
        super().__init__(**kwargs)

    def make_metrics(self) -> torchmetrics.MetricCollection:
        n = self.hparams.num_classes
        return torchmetrics.MetricCollection(
            {
                "acc": torchmetrics.classification.MulticlassAccuracy(n, average="micro"),
                "f1": torchmetrics.classification.MulticlassF1Score(n, average="macro"),
            }
        )

    def compute_loss(self, output: Tensor, target: Tensor) -> Tensor:
        return nn.functional.cross_entropy(output, target, label_smoothing=self.hparams.label_smoothing)

    def predict_output(self, output: Tensor) -> Tensor:
        return output.argmax(dim=1)


class BinaryClassifierModule(TaskModule):
    """Binary classifier with a single logit: BCE-with-logits loss, accuracy, F1 and AUROC.

    The sigmoid lives in the loss (numerically stable) and in :meth:`predict_proba`; the exported graph ends
    in the logit.
    """

    def make_metrics(self) -> torchmetrics.MetricCollection:
        return torchmetrics.MetricCollection(
            {
                "acc": torchmetrics.classification.BinaryAccuracy(),
                "f1": torchmetrics.classification.BinaryF1Score(),
                "auroc": torchmetrics.classification.BinaryAUROC(),
            }
        )

    def compute_loss(self, output: Tensor, target: Tensor) -> Tensor:
        return nn.functional.binary_cross_entropy_with_logits(output.squeeze(1), target.float())

    def metric_inputs(self, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        return torch.sigmoid(output.squeeze(1)), target.long()

    def predict_output(self, output: Tensor) -> Tensor:
        return (output.squeeze(1) > 0).long()

    def predict_proba(self, x: Tensor) -> Tensor:
        """Probability of the positive class, shape ``(N,)``."""
        return torch.sigmoid(self(x).squeeze(1))


class RegressorModule(TaskModule):
    """Regressor: MSE loss; MSE, MAE and R2 metrics. ``num_classes`` is the number of regression targets."""

    monitor = "val/loss"
    monitor_mode = "min"

    def make_metrics(self) -> torchmetrics.MetricCollection:
        return torchmetrics.MetricCollection(
            {
                "mse": torchmetrics.MeanSquaredError(),
                "mae": torchmetrics.MeanAbsoluteError(),
                "r2": torchmetrics.R2Score(),
            }
        )

    def compute_loss(self, output: Tensor, target: Tensor) -> Tensor:
        return nn.functional.mse_loss(output.view_as(target), target)

    def metric_inputs(self, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        return output.view_as(target), target
