"""zerotune's LightningModules: one file per architecture, shared task bases in :mod:`lightning_models.base`."""

from lightning_models.backprop import HandBackpropMLP
from lightning_models.base import BinaryClassifierModule, ClassifierModule, RegressorModule, TaskModule
from lightning_models.bert import BERT
from lightning_models.binary_mlp import BinaryMLP
from lightning_models.cnn import SmallCNN
from lightning_models.gpt import GPT
from lightning_models.hf_encoders import load_hf_encoder
from lightning_models.language_model import CausalLMModule
from lightning_models.lenet import LeNet
from lightning_models.linear import LinearRegression
from lightning_models.mlp import MLPClassifier
from lightning_models.mnist_cnn import MNISTCNN
from lightning_models.peft import FinetuneMethods, LoRALinear
from lightning_models.resnet import ResNet18Classifier
from lightning_models.resnet9 import ResNet9
from lightning_models.sequence_classifier import SequenceClassifier
from lightning_models.vit import ViT

__all__ = [
    "BERT",
    "BinaryClassifierModule",
    "BinaryMLP",
    "CausalLMModule",
    "ClassifierModule",
    "FinetuneMethods",
    "GPT",
    "HandBackpropMLP",
    "LeNet",
    "LinearRegression",
    "LoRALinear",
    "MLPClassifier",
    "MNISTCNN",
    "RegressorModule",
    "ResNet18Classifier",
    "SequenceClassifier",
    "ResNet9",
    "SmallCNN",
    "TaskModule",
    "ViT",
    "load_hf_encoder",
]
