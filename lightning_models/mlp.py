"""Multi-layer perceptron classifier."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn

from lightning_models.base import ClassifierModule


def mlp(in_features: int, hidden: Sequence[int], out_features: int, dropout: float = 0.0) -> nn.Sequential:
    """``Linear -> ReLU [-> Dropout]`` per hidden width, then a linear head. Input ``(N, in_features)``."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


class MLPClassifier(ClassifierModule):
    """Flatten the input, then an MLP: e.g. ``784-128-64-10`` with ReLU for MNIST.

    Args:
        hidden: Widths of the hidden layers.
        dropout: Dropout after each hidden activation.
        **kwargs: Optimizer, scheduler, shapes: see :class:`~lightning_models.base.TaskModule`.
    """

    def __init__(self, hidden: list[int] = [128, 64], dropout: float = 0.0, **kwargs: Any) -> None:  # noqa: B006
        super().__init__(**kwargs)
        self.net = nn.Sequential(nn.Flatten(), mlp(math.prod(self.input_shape), hidden, self.num_classes, dropout))
