"""LeNet-5 as used on CIFAR-10: two unpadded 5x5 conv-ReLU-maxpool stages and a ``120 -> 84 -> 10`` head."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lightning_models.base import ClassifierModule
from lightning_models.mlp import mlp
from lightning_models.mnist_cnn import conv_pool_stages


class LeNet(ClassifierModule):
    """``conv(3->6, 5) -> pool -> conv(6->16, 5) -> pool -> fc 120 -> fc 84 -> fc num_classes``, ReLU throughout.

    On ``(N, 3, 32, 32)`` the maps go ``32 -> 28 -> 14 -> 10 -> 5``, so the head sees ``16 * 5 * 5 = 400``
    features. Any ``input_shape`` whose maps stay at least 1x1 works (e.g. ``(1, 28, 28)`` gives ``16 * 4 * 4``).

    Args:
        channels: Output channels of the conv-pool stages.
        kernel_size: Square kernel of every conv (unpadded, as in the original).
        hidden: Widths of the fully connected hidden layers.
        batch_norm: Batch normalization after each conv (off in the classic network).
        dropout: Dropout after each hidden fully connected activation (off in the classic network).
        **kwargs: Optimizer, scheduler, shapes: see :class:`~lightning_models.base.TaskModule`.
    """

    def __init__(
        self,
        channels: list[int] = [6, 16],  # noqa: B006
        kernel_size: int = 5,
        hidden: list[int] = [120, 84],  # noqa: B006
        batch_norm: bool = False,
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")
        stages, (c, h, w) = conv_pool_stages(self.input_shape, channels, kernel_size, 0, batch_norm)
        self.backbone = nn.Sequential(stages, nn.Flatten())
        self.head = mlp(c * h * w, hidden, self.num_classes, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))
