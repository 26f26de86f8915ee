"""TensorBoard dashboards beyond scalars: confusion matrix and misclassified images, or predicted-vs-true scatter.

:class:`Dashboards` reads the model's validation outputs through a forward hook (no second forward pass), so it
costs one figure per chosen epoch. Figures are drawn off-screen with matplotlib's Agg canvas, never pyplot, so
no display and no global backend switch are needed (:mod:`experiments.rundir.plots`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from datamodules.base import DataModule
from experiments.rundir.plots import displayable, figure, mean_std, render, tensorboard_writer
from lightning_models.base import TaskModule

#: Tasks the figures are made for; models without a ``task`` attribute are judged by their targets' dtype.
_FIGURE_TASKS = (None, "classification", "regression")


class Dashboards(Callback):
    """Validation figures in TensorBoard's Images tab, every ``every_n_epochs`` epochs and after the last one.

    * Classifiers (integer targets): ``val/confusion_matrix``, and for image inputs ``val/misclassified``: a grid
      of up to ``max_images`` wrong predictions titled with true and predicted class names
      (``datamodule.class_names``).
    * Regressors (float targets): ``val/pred_vs_true``, a scatter with the identity line and R2.

    The network's output comes from the ``output`` entry of what ``validation_step`` returns (every zerotune task
    module returns it: no second forward pass); a step that returns none costs one extra forward pass. Predictions
    come from ``pl_module.predict_output`` when the module has it (argmax or sign of the logit otherwise). Under
    DDP every rank collects its own shard and rank 0 draws from the gathered whole, so the figures cover the whole
    validation split exactly as in one process. Does nothing without a TensorBoard logger, during the sanity check,
    for batches that are not ``(x, y)`` pairs of tensors, and for models whose ``task`` attribute names another
    task (a language model's next-token "classes" are its whole vocabulary).

    Args:
        enabled: Draw the figures at all.
        every_n_epochs: Draw every N-th validation epoch (the last epoch is always drawn).
        max_images: Misclassified images shown in the grid.
        max_points: Points drawn in the regression scatter (a random subset beyond that).
    """

    def __init__(
        self, enabled: bool = True, every_n_epochs: int = 1, max_images: int = 16, max_points: int = 2000
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"dashboards.every_n_epochs must be >= 1, got {every_n_epochs}")
        if max_images < 0:
            raise ValueError(f"dashboards.max_images must be >= 0, got {max_images}")
        self.enabled = enabled
        self.every_n_epochs = every_n_epochs
        self.max_images = max_images
        self.max_points = max_points
        self._active = False
        self._seen = 0
        self._targets: list[Tensor] = []
        self._preds: list[Tensor] = []
        #: ``(position in this rank's shard, image, true class, predicted class)`` of wrong predictions.
        self._wrong: list[tuple[int, Tensor, int, int]] = []
        #: The confusion matrix counts of the last figure drawn (rank 0), ``(C, C)``; row = true class.
        self.last_confusion: Tensor | None = None

    # -- collecting ------------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()
        # A model of zerotune's declares its task; any other LightningModule gets the figures it may fit.
        task = pl_module.task if isinstance(pl_module, TaskModule) else None
        self._active = task in _FIGURE_TASKS and self._should_draw(trainer)

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._active or not (isinstance(batch, list | tuple) and len(batch) >= 2):
            return
        x, y = batch[0], batch[1]
        if not isinstance(x, Tensor) or not isinstance(y, Tensor) or y.dim() == 0:
            return
        output = outputs.get("output") if isinstance(outputs, Mapping) else None
        if not isinstance(output, Tensor) or output.dim() == 0 or output.shape[0] != y.shape[0]:
            with torch.no_grad():
                output = pl_module(x)
        pred = _predict(pl_module, output, classify=not y.is_floating_point())
        self._targets.append(y.detach().cpu())
        self._preds.append(pred.detach().cpu())
        if not y.is_floating_point() and _is_image(x) and len(self._wrong) < self.max_images:
            pred_flat, y_flat = pred.view(-1), y.view(-1)
            for i in torch.nonzero(pred_flat != y_flat).view(-1)[: self.max_images - len(self._wrong)].tolist():
                self._wrong.append((self._seen + i, x[i].detach().float().cpu(), int(y_flat[i]), int(pred_flat[i])))
        self._seen += int(y.shape[0])

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active:
            self._reset()
            return
        targets, preds, wrong = self._targets, self._preds, self._wrong
        if trainer.world_size > 1:
            # Every rank joins the gather, also one whose shard was empty; rank 0 then holds the whole split.
            targets, preds, wrong = _gather_shards(targets, preds, wrong, trainer.world_size, self.max_images)
        self._reset()
        writer = tensorboard_writer(trainer)
        if not trainer.is_global_zero or writer is None or not targets:
            return
        targets, preds = torch.cat(targets), torch.cat(preds)
        step, epoch = trainer.global_step, trainer.current_epoch
        if targets.is_floating_point():
            writer.add_image("val/pred_vs_true", self._scatter(preds, targets, epoch), step, dataformats="HWC")
            return
        names = _class_names(trainer, pl_module, targets, preds)
        self.last_confusion = confusion_matrix(targets.view(-1), preds.view(-1), len(names))
        writer.add_image(
            "val/confusion_matrix", _confusion_figure(self.last_confusion, names, epoch), step, dataformats="HWC"
        )
        if wrong:
            grid = _misclassified_figure([w[1:] for w in wrong], names, mean_std(trainer), epoch)
            writer.add_image("val/misclassified", grid, step, dataformats="HWC")

    # -- helpers ---------------------------------------------------------------------------------------------------
    def _should_draw(self, trainer: L.Trainer) -> bool:
        if not self.enabled or trainer.sanity_checking or tensorboard_writer(trainer) is None:
            return False
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and trainer.max_epochs > 0 and epoch >= trainer.max_epochs
        return epoch % self.every_n_epochs == 0 or last

    def _reset(self) -> None:
        self._targets, self._preds, self._wrong = [], [], []
        self._seen = 0

    def _scatter(self, preds: Tensor, targets: Tensor, epoch: int) -> np.ndarray:
        p, t = preds.float().reshape(-1), targets.float().reshape(-1)
        ss_res = float(((p - t) ** 2).sum())
        ss_tot = float(((t - t.mean()) ** 2).sum())
        r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
        if p.numel() > self.max_points:
            keep = torch.randperm(p.numel(), generator=torch.Generator().manual_seed(0))[: self.max_points]
            p, t = p[keep], t[keep]
        fig, ax = figure(5, 5)
        ax.scatter(t.numpy(), p.numpy(), s=8, alpha=0.5, edgecolors="none")
        lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
        ax.plot([lo, hi], [lo, hi], color="black", linewidth=1, linestyle="--", label="prediction = truth")
        ax.set_xlabel("true")
        ax.set_ylabel("predicted")
        ax.set_title(f"validation, epoch {epoch}: R2 = {r2:.3f}")
        ax.legend(loc="upper left")
        return render(fig)


# -- figures (module level: plain functions of tensors, reusable and testable) ---------------------------------------


def confusion_matrix(targets: Tensor, preds: Tensor, num_classes: int) -> Tensor:
    """``(num_classes, num_classes)`` counts; row = true class, column = predicted class."""
    index = targets.long() * num_classes + preds.long()
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def _confusion_figure(cm: Tensor, names: list[str], epoch: int) -> np.ndarray:
    """Draw the ``(C, C)`` counts ``cm`` (row = true class) with the class ``names``."""
    n = len(names)
    acc = float(cm.diag().sum()) / max(1, int(cm.sum()))
    side = min(12.0, max(4.5, 0.45 * n + 2.5))
    fig, ax = figure(side, side)
    ax.imshow(cm.numpy(), cmap="Blues")
    if n <= 20:
        peak = max(1, int(cm.max()))
        for i in range(n):
            for j in range(n):
                count = int(cm[i, j])
                if count:
                    color = "white" if count > peak / 2 else "black"
                    ax.text(j, i, str(count), ha="center", va="center", fontsize=8, color=color)
    ticks = range(n) if n <= 40 else []
    ax.set_xticks(list(ticks), [names[i] for i in ticks], rotation=45 if max(map(len, names)) > 2 else 0)
    ax.set_yticks(list(ticks), [names[i] for i in ticks])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"validation, epoch {epoch}: accuracy {acc:.3f} ({int(cm.sum())} samples)")
    return render(fig)


def _misclassified_figure(
    wrong: list[tuple[Tensor, int, int]], names: list[str], mean_std: tuple[Tensor, Tensor] | None, epoch: int
) -> np.ndarray:
    """The wrong images, up to 8 per row, each titled with its true and predicted class; ``(H, W, 3)`` uint8 RGB.

    Drawn on one Axes that covers the figure, in inches: one small Axes per image under a layout solver took 0.41 s
    per validation epoch on a CPU, a tenth of an MNIST epoch; this takes a few hundredths.
    """
    cols = min(8, len(wrong))
    rows = math.ceil(len(wrong) / cols)
    cell_w, cell_h, side, top = 1.5, 1.7, 1.15, 0.4  # inches: a cell holds the 2-line title above its image
    # At least 4 inches wide, so that the heading fits above a single image.
    width, height = max(cell_w * cols, 4.0), cell_h * rows + top
    left = (width - cell_w * cols) / 2
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=80)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.axis("off")
    for k, (image, true, pred) in enumerate(wrong):
        x = left + (k % cols) * cell_w + (cell_w - side) / 2
        y = top + (k // cols) * cell_h + (cell_h - side)
        ax.imshow(
            displayable(image, mean_std),
            cmap="gray" if image.shape[0] == 1 else None,
            vmin=0,
            vmax=1,
            extent=(x, x + side, y + side, y),
            interpolation="nearest",
        )
        title = f"true {_name(names, true)}\npred {_name(names, pred)}"
        ax.text(x + side / 2, y - 0.04, title, ha="center", va="bottom", fontsize=8, color="#b00020")
    ax.text(width / 2, top / 2, f"misclassified validation images, epoch {epoch}", ha="center", va="center", fontsize=9)
    return render(fig)


def _gather_shards(
    targets: list[Tensor], preds: list[Tensor], wrong: list[tuple[int, Tensor, int, int]], world: int, limit: int
) -> tuple[list[Tensor], list[Tensor], list[tuple[int, Tensor, int, int]]]:
    """Every rank's validation targets, predictions and wrong images, on every rank (a collective call).

    Evaluation shards are strided (rank ``r`` holds samples ``r, r + world, ...``), so a sample at position ``i`` of
    rank ``r``'s shard is sample ``i * world + r`` of the split: sorting by that index gives the wrong images in the
    order one process would have met them. Shards may differ in size (they are not padded), which
    ``all_gather_object`` allows.
    """
    import torch.distributed as dist

    shards: list[Any] = [None] * world
    local = (torch.cat(targets) if targets else None, torch.cat(preds) if preds else None, wrong)
    dist.all_gather_object(shards, (dist.get_rank(), local))
    all_targets, all_preds, all_wrong = [], [], []
    for rank, (t, p, w) in shards:
        if t is not None:
            all_targets.append(t)
            all_preds.append(p)
        all_wrong += [(i * world + rank, *rest) for i, *rest in w]
    return all_targets, all_preds, sorted(all_wrong, key=lambda item: item[0])[:limit]


def _predict(pl_module: L.LightningModule, output: Tensor, classify: bool) -> Tensor:
    if isinstance(pl_module, TaskModule):
        return pl_module.predict_output(output)
    if not classify:
        return output
    if output.dim() == 2 and output.shape[1] > 1:
        return output.argmax(dim=1)
    return (output.reshape(output.shape[0]) > 0).long()


def _is_image(x: Tensor) -> bool:
    return x.dim() == 4 and x.shape[1] in (1, 3)


def _class_names(trainer: L.Trainer, pl_module: L.LightningModule, targets: Tensor, preds: Tensor) -> list[str]:
    dm = trainer.datamodule
    names = list(dm.class_names or []) if isinstance(dm, DataModule) else []
    declared = pl_module.num_classes if isinstance(pl_module, TaskModule) else 0
    n = max(len(names), declared, int(targets.max()) + 1, int(preds.max()) + 1)
    return [names[i] if i < len(names) else str(i) for i in range(n)]


def _name(names: list[str], index: int) -> str:
    return names[index] if 0 <= index < len(names) else str(index)
