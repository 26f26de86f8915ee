"""Binary classifier MLP: one hidden ReLU layer and a single logit (sigmoid in the loss and in predict_proba)."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from lightning_models.base import BinaryClassifierModule
from lightning_models.mlp import mlp


class BinaryMLP(BinaryClassifierModule):
    """``(N, *input_shape) -> flatten -> Linear -> ReLU [-> Dropout] -> Linear -> (N, 1)`` logit.

    The sigmoid lives in the BCE-with-logits loss and :meth:`predict_proba`, not in the network, so training is
    numerically stable and the exported graph ends in the logit. Metrics: accuracy, F1, AUROC.

    Args:
        hidden: Width of the hidden layer.
        dropout: Dropout after the hidden activation.
        **kwargs: Optimizer, scheduler, shapes: see :class:`~lightning_models.base.TaskModule`. ``num_classes``
            (linked from the datamodule) must be 1 or 2: both mean one positive-class logit.
    """

    def __init__(self, hidden: int = 32, dropout: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.num_classes > 2:
            raise ValueError(
                f"BinaryMLP is a binary classifier but the data has {self.num_classes} classes: "
                "use lightning_models.MLPClassifier for multi-class data"
            )
        if hidden < 1:
            raise ValueError(f"model.hidden must be >= 1, got {hidden}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")
        self.net = nn.Sequential(nn.Flatten(), mlp(math.prod(self.input_shape), [hidden], 1, dropout))
