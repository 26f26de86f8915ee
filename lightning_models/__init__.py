"""zerotune's LightningModules: one file per architecture, shared task bases in :mod:`lightning_models.base`."""

from lightning_models.base import BinaryClassifierModule, ClassifierModule, RegressorModule, TaskModule
from lightning_models.cnn import SmallCNN
from lightning_models.mlp import MLPClassifier

__all__ = [
    "BinaryClassifierModule",
    "ClassifierModule",
    "MLPClassifier",
    "RegressorModule",
    "SmallCNN",
    "TaskModule",
]
