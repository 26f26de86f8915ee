"""zerotune's LightningDataModules: one file per dataset family, in-memory batching in :mod:`datamodules.base`.

Names are imported from their modules on first use (PEP 562), so a run on images never imports the tabular stack
(pandas and pyarrow, 0.16 s of every start on 2 CPU cores) and a tabular run never imports torchvision's datasets.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the module of this package that defines it.
_EXPORTS = {
    "BPETokenizer": "tokenizer",
    "BatchLoader": "base",
    "BreastCancerDataModule": "tabular",
    "ByteTokenizer": "tokenizer",
    "CIFAR10DataModule": "vision",
    "CSVDataModule": "tabular",
    "CharTokenizer": "tokenizer",
    "DataModule": "base",
    "DiabetesDataModule": "tabular",
    "DigitsDataModule": "digits",
    "FashionMNISTDataModule": "vision",
    "ImageFolderDataModule": "image_folder",
    "InMemoryDataModule": "base",
    "MNISTDataModule": "vision",
    "Split": "base",
    "TabularDataModule": "tabular",
    "TextClassificationDataModule": "text_classification",
    "TextDataModule": "text",
    "Tokenizer": "tokenizer",
    "TorchvisionImageDataModule": "vision",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"datamodules.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
