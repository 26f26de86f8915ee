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
        dropout: Dropout before the head's last layer.
        head_hidden: Width of a hidden ``Linear -> BN -> ReLU`` layer in the head (a projector); 0 for a linear
            head. For pre-training a backbone to fine-tune: the projector, not the backbone, specializes to the
            source classes, and it is dropped with the rest of the head (``pretrained_skip: [head.]``).
        **kwargs: Optimizer, scheduler, shapes: see :class:`~lightning_models.base.TaskModule`.
    """

    def __init__(
        self,
        channels: list[int] = [32, 64],  # noqa: B006
        dropout: float = 0.1,
        head_hidden: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if head_hidden < 0:
            raise ValueError(f"model.head_hidden must be >= 0 (0 for a linear head), got {head_hidden}")
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
        projector: list[nn.Module] = []
        if head_hidden:
            projector = [nn.Linear(c_in, head_hidden, bias=False), nn.BatchNorm1d(head_hidden), nn.ReLU(inplace=True)]
            c_in = head_hidden
        self.head = nn.Sequential(*projector, nn.Dropout(dropout), nn.Linear(c_in, self.num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))
