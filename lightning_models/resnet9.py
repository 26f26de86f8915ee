"""ResNet-9 for 32x32 images: the residual network of the CIFAR-10 speed runs, with a width you can scale.

The layout is the DAWNBench-winning network (Myrtle.ai's "ResNet-9", refined by David Page and later by the
airbench runs)::

    prep    conv3x3(c_in -> w0)                        32x32
    layer1  conv3x3(w0 -> w1), pool, + residual(w1)    16x16
    layer2  conv3x3(w1 -> w2), pool                     8x8
    layer3  conv3x3(w2 -> w3), pool, + residual(w3)     4x4
    head    global max-pool, linear(w3 -> classes) * head_scale

where every conv is followed by BatchNorm and ReLU, the pool is a 2x2 max-pool placed before BatchNorm (a quarter
of the BatchNorm and ReLU work, as in airbench), and a residual block is two conv-BN-ReLU with an identity skip.
``widths=[64, 128, 256, 512]`` is the original (6.6 M parameters); halving it quarters the compute.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lightning_models.base import ClassifierModule


def conv_bn(c_in: int, c_out: int, pool: bool = False, bn_momentum: float = 0.1) -> nn.Sequential:
    """``conv3x3 (no bias) [-> maxpool 2x2] -> BatchNorm -> ReLU``: ``(N, c_in, H, W) -> (N, c_out, H', W')``."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(c_out, momentum=bn_momentum), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class Residual(nn.Module):
    """``x + f(x)`` with ``f`` two :func:`conv_bn` of the same width."""

    def __init__(self, width: int, bn_momentum: float = 0.1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(width, width, bn_momentum=bn_momentum), conv_bn(width, width, bn_momentum=bn_momentum)
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResNet9(ClassifierModule):
    """ResNet-9 (``self.backbone``: ``(N, C, H, W) -> (N, w3)``) and a scaled linear ``self.head``.

    Args:
        widths: Channels of prep, layer1, layer2 and layer3.
        head_scale: Multiplier of the logits. The speed runs use 0.125: with the max-pooled features the raw
            logits are large, and scaling them down keeps the softmax out of saturation early in training.
        bn_momentum: BatchNorm running-statistics momentum (PyTorch's convention: weight of the new batch).
        tta_flip: In evaluation, average the logits of each image and its mirror image (test-time augmentation;
            doubles the cost of inference, also in the exported ONNX graph). Only for data whose mirror image keeps
            its class.
        **kwargs: Optimizer, scheduler, ``channels_last``, shapes: see :class:`~lightning_models.base.TaskModule`.
    """

    def __init__(
        self,
        widths: list[int] = [64, 128, 256, 512],  # noqa: B006
        head_scale: float = 0.125,
        bn_momentum: float = 0.1,
        tta_flip: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if len(widths) != 4 or min(widths) < 1:
            raise ValueError(f"model.widths needs 4 positive channel counts (prep, layer1-3), got {list(widths)}")
        if head_scale <= 0:
            raise ValueError(f"model.head_scale must be positive, got {head_scale}")
        if min(self.input_shape[1:]) < 8:
            raise ValueError(f"ResNet9 pools 3 times: images need at least 8x8 pixels, got {self.input_shape}")
        w0, w1, w2, w3 = (int(w) for w in widths)
        m = bn_momentum
        self.backbone = nn.Sequential(
            conv_bn(self.input_shape[0], w0, bn_momentum=m),
            conv_bn(w0, w1, pool=True, bn_momentum=m),
            Residual(w1, m),
            conv_bn(w1, w2, pool=True, bn_momentum=m),
            conv_bn(w2, w3, pool=True, bn_momentum=m),
            Residual(w3, m),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(w3, self.num_classes, bias=False)
        self.head_scale = head_scale
        self.tta_flip = tta_flip

    def logits(self, x: Tensor) -> Tensor:
        """``(N, C, H, W) -> (N, num_classes)`` for one view of the batch."""
        return self.head(self.backbone(x)) * self.head_scale

    def forward(self, x: Tensor) -> Tensor:
        if self.tta_flip and not self.training:
            return 0.5 * (self.logits(x) + self.logits(x.flip(-1)))
        return self.logits(x)
