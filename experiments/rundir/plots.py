"""Figures drawn into a run's TensorBoard: matplotlib off-screen (the Agg canvas, never pyplot, so no display and
no global backend switch), and the helpers that find the writer and undo a datamodule's normalization."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from datamodules.base import DataModule


def figure(width: float, height: float, nrows: int = 1, ncols: int = 1) -> tuple[Any, Any]:
    """A matplotlib figure of ``width`` x ``height`` inches and its axes (one, or an array of ``nrows`` x ``ncols``)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=80, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=nrows == 1 and ncols == 1)


def render(fig: Any) -> np.ndarray:
    """Draw ``fig`` off-screen; returns ``(H, W, 3)`` uint8 RGB."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def displayable(image: Tensor, mean_std: tuple[Tensor, Tensor] | None) -> np.ndarray:
    """``(C, H, W)`` normalized image -> ``(H, W)`` or ``(H, W, 3)`` in [0, 1]: undo the datamodule's normalization,
    or stretch to the image's own range when its statistics are unknown."""
    if mean_std is not None and mean_std[0].numel() == image.shape[0]:
        mean, std = mean_std
        image = image * std.view(-1, 1, 1) + mean.view(-1, 1, 1)
    else:
        lo, hi = image.min(), image.max()
        image = (image - lo) / (hi - lo) if hi > lo else image * 0
    image = image.clamp(0, 1)
    return image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()


def tensorboard_writer(trainer: L.Trainer) -> Any:
    """The SummaryWriter of the trainer's first TensorBoard logger, or ``None``."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def mean_std(trainer: L.Trainer) -> tuple[Tensor, Tensor] | None:
    """The datamodule's per-channel image mean and standard deviation, or ``None`` when it has none."""
    dm = trainer.datamodule
    if not isinstance(dm, DataModule) or dm.mean is None or dm.std is None:
        return None
    mean, std = dm.mean, dm.std
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
