"""Linear regression as a LightningModule: one ``nn.Linear`` trained with MSE."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from lightning_models.base import RegressorModule


class LinearRegression(RegressorModule):
    """``y = x W^T + b``: flattens ``(N, *input_shape)`` to ``(N, F)`` and maps it to ``(N, num_classes)`` targets.

    ``num_classes`` is the number of regression targets (1 for a single target); the launcher links it from the
    datamodule. Loss and metrics (MSE, MAE, R2) come from :class:`~lightning_models.base.RegressorModule`.

    Args:
        bias: Learn an intercept.
        **kwargs: Optimizer, scheduler, shapes: see :class:`~lightning_models.base.TaskModule`.
    """

    def __init__(self, bias: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(self.input_shape), self.num_classes, bias=bias))
