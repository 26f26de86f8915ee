"""ResNet-18 (torchvision) with a fresh head, an optional CIFAR stem and a frozen-backbone switch."""

from __future__ import annotations

from typing import Any

import torchvision
from torch import Tensor, nn

from lightning_models.base import ClassifierModule


class ResNet18Classifier(ClassifierModule):
    """torchvision's ResNet-18 body (``self.backbone``, ``(N, C, H, W) -> (N, 512)``) and a linear ``self.head``.

    Weights are never downloaded: the network starts from scratch unless ``model.pretrained`` names a local file
    (see :meth:`~lightning_models.base.TaskModule.setup`). torchvision's ResNet-18 state_dicts load as they are:
    their ``fc.*`` keys map onto ``head.*`` and every other key onto ``backbone.*``; entries whose shape differs
    (a head for another class count, the ImageNet stem under ``cifar_stem``) are skipped, reported and keep their
    fresh initialization.

    Args:
        cifar_stem: Replace the ImageNet stem (7x7 stride-2 conv + max-pool, which shrinks a 32x32 image to 8x8
            before the first block) by a 3x3 stride-1 conv without pooling, the usual adaptation for small images.
        freeze_backbone: Train only the head: the backbone's parameters get ``requires_grad=False`` and the
            backbone stays in eval mode, so its BatchNorm running statistics do not move either.
        **kwargs: Optimizer, scheduler, ``pretrained``, shapes: see :class:`~lightning_models.base.TaskModule`.
    """

    pretrained_key_map = {"fc.": "head."}
    #: Train the head only (set from the ``freeze_backbone`` argument).
    freeze_backbone: bool = False

    def __init__(self, cifar_stem: bool = True, freeze_backbone: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        body = torchvision.models.resnet18(weights=None)
        in_channels = self.input_shape[0]
        if cifar_stem:
            body.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            body.maxpool = nn.Identity()
        elif in_channels != 3:
            body.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        width = body.fc.in_features
        body.fc = nn.Identity()
        self.backbone = body
        self.head = nn.Linear(width, self.num_classes)
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            self.backbone.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))

    def train(self, mode: bool = True) -> ResNet18Classifier:
        """Switch train/eval mode, keeping a frozen backbone (and its BatchNorm statistics) in eval mode."""
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def on_train_epoch_start(self) -> None:
        # Lightning leaves modules in the mode it finds them (and restores that mode after validation) without
        # calling train(): the frozen backbone is switched to eval mode here, not at construction, where Lightning
        # would warn about modules found in eval mode when training starts.
        if self.freeze_backbone:
            self.backbone.eval()
