"""zerotune's LightningDataModules: one file per dataset family, in-memory batching in :mod:`datamodules.base`."""

from datamodules.base import BatchLoader, InMemoryDataModule, Split
from datamodules.digits import DigitsDataModule
from datamodules.image_folder import ImageFolderDataModule
from datamodules.tabular import BreastCancerDataModule, CSVDataModule, DiabetesDataModule, TabularDataModule
from datamodules.text import TextDataModule
from datamodules.text_classification import TextClassificationDataModule
from datamodules.tokenizer import BPETokenizer, ByteTokenizer, CharTokenizer, Tokenizer
from datamodules.vision import (
    CIFAR10DataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    TorchvisionImageDataModule,
)

__all__ = [
    "BPETokenizer",
    "BatchLoader",
    "ByteTokenizer",
    "CharTokenizer",
    "BreastCancerDataModule",
    "CIFAR10DataModule",
    "CSVDataModule",
    "DiabetesDataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "InMemoryDataModule",
    "MNISTDataModule",
    "Split",
    "TabularDataModule",
    "TextClassificationDataModule",
    "TextDataModule",
    "Tokenizer",
    "TorchvisionImageDataModule",
]
