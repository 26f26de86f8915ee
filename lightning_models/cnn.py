"""A small configurable CNN for small images (digits 8x8, MNIST 28x28)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_models.base import ClassifierModule


class SmallCNN(ClassifierModule):
    """``[conv3x3 -> BN -> ReLU] x2 -> maxpool`` per stage, global average pool, dropout, linear head.

    Input ``(N, C, H, W)``; each stage halves ``H`` and ``W`` (pooling is skipped once they reach 1).

    Args:
        channels: Output channels of each stage, e.g. ``[32, 64]``.
        dropout: Dropout before the head.
        **kwargs: Optimizer, scheduler, shapes: see :class:`~lightning_models.base.TaskModule`.
    """

    def __init__(self, channels: list[int] = [32, 64], dropout: float = 0.1, **kwargs: Any) -> None:  # noqa: B006
        super().__init__(**kwargs)
        c_in, h, w = self.input_shape
        layers: list[nn.Module] = []
        for c_out in channels:
            layers += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            if min(h, w) >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c_in = c_out
        self.backbone = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(c_in, self.num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))
