"""zerotune's LightningModules: one file per architecture, shared task bases in :mod:`lightning_models.base`."""

from lightning_models.backprop import HandBackpropMLP
from lightning_models.base import BinaryClassifierModule, ClassifierModule, RegressorModule, TaskModule
from lightning_models.binary_mlp import BinaryMLP
from lightning_models.cnn import SmallCNN
from lightning_models.lenet import LeNet
from lightning_models.linear import LinearRegression
from lightning_models.mlp import MLPClassifier
from lightning_models.mnist_cnn import MNISTCNN
from lightning_models.resnet import ResNet18Classifier
from lightning_models.resnet9 import ResNet9

__all__ = [
    "BinaryClassifierModule",
    "BinaryMLP",
    "ClassifierModule",
    "HandBackpropMLP",
    "LeNet",
    "LinearRegression",
    "MLPClassifier",
    "MNISTCNN",
    "RegressorModule",
    "ResNet18Classifier",
    "ResNet9",
    "SmallCNN",
    "TaskModule",
]
