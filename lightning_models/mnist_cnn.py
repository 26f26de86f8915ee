"""The classic MNIST CNN: 5x5 conv-ReLU-maxpool stages, then a fully connected ``128 -> 10`` head.

The recipe this model comes from is often printed as::

    conv1 = nn.Conv2d(1, 32, 5)          # 28x28 -> 24x24
    pool = nn.MaxPool2d(2)               # 24x24 -> 12x12
    fc1 = nn.Linear(32 * 7 * 7, 128)     # expects 7x7 maps
    fc2 = nn.Linear(128, 10)

and cannot run: after one unpadded 5x5 conv and one pool, the features are ``32 * 12 * 12 = 4608``, not
``32 * 7 * 7 = 1568``. ``7 = 28 / 4`` shows the intent: two "same"-padded 5x5 conv-pool stages, each halving the
map, ``28 -> 14 -> 7``. :class:`MNISTCNN` builds exactly that; ``channels=[32, 32]`` reproduces the printed
``fc1`` (``32 * 7 * 7 -> 128``), the default ``[32, 64]`` is the wider second stage of the common variant.
Batch normalization and dropout are switches, so the same class serves the classic and the tuned recipe.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from lightning_models.base import ClassifierModule
from lightning_models.mlp import mlp


def conv_pool_stages(
    input_shape: Sequence[int],
    channels: Sequence[int],
    kernel_size: int = 5,
    padding: int = 0,
    batch_norm: bool = False,
) -> tuple[nn.Sequential, tuple[int, int, int]]:
    """``conv -> [BN ->] ReLU -> maxpool 2x2`` per width in ``channels``.

    Args:
        input_shape: ``(C, H, W)`` of one input image.
        channels: Output channels of each stage.
        kernel_size: Square kernel of every conv (stride 1).
        padding: Zero padding of every conv; ``kernel_size // 2`` keeps the size ("same").
        batch_norm: Batch normalization after each conv (the conv then has no bias, BN provides it).

    Returns:
        The stages and the ``(C, H, W)`` shape they produce.

    Raises:
        ValueError: if the image becomes smaller than 1x1 on the way.
    """
    c, h, w = (int(s) for s in input_shape)
    layers: list[nn.Module] = []
    for c_out in channels:
        layers.append(nn.Conv2d(c, c_out, kernel_size, padding=padding, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        # conv: size + 2 * padding - kernel + 1 (stride 1); pool: floor(size / 2).
        h, w = (h + 2 * padding - kernel_size + 1) // 2, (w + 2 * padding - kernel_size + 1) // 2
        if h < 1 or w < 1:
            raise ValueError(
                f"input {tuple(input_shape)} is too small for {len(channels)} conv{kernel_size}x{kernel_size}-pool "
                f"stages with padding {padding}: use fewer model.channels or more model.padding"
            )
        c = c_out
    return nn.Sequential(*layers), (c, h, w)


class MNISTCNN(ClassifierModule):
    """Conv-pool feature stages (``self.backbone``) and an MLP head (``self.head``).

    Input ``(N, C, H, W)``, e.g. ``(N, 1, 28, 28)``; output ``(N, num_classes)`` logits. With the defaults:
    ``28x28 -> conv5x5(32) -> pool -> 14x14 -> conv5x5(64) -> pool -> 7x7 -> fc 3136->128 -> ReLU -> fc 128->10``.

    Args:
        channels: Output channels of each conv-pool stage.
        kernel_size: Square kernel of every conv.
        padding: Conv zero padding; ``None`` means ``kernel_size // 2`` (size-preserving), which makes two stages
            end at 7x7 on MNIST, as the classic ``fc1`` expects.
        hidden: Widths of the fully connected hidden layers before the ``num_classes`` output.
        batch_norm: Batch normalization after each conv.
        dropout: Dropout after each hidden fully connected activation.
        **kwargs: Optimizer, scheduler, shapes: see :class:`~lightning_models.base.TaskModule`.
    """

    def __init__(
        self,
        channels: list[int] = [32, 64],  # noqa: B006
        kernel_size: int = 5,
        padding: int | None = None,
        hidden: list[int] = [128],  # noqa: B006
        batch_norm: bool = False,
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")
        if not channels:
            raise ValueError("model.channels must list at least one conv stage, e.g. [32, 64]")
        pad = kernel_size // 2 if padding is None else padding
        stages, (c, h, w) = conv_pool_stages(self.input_shape, channels, kernel_size, pad, batch_norm)
        self.backbone = nn.Sequential(stages, nn.Flatten())
        self.head = mlp(c * h * w, hidden, self.num_classes, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))
