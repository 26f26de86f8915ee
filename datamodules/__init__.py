"""zerotune's LightningDataModules: one file per dataset family, in-memory batching in :mod:`datamodules.base`."""

from datamodules.base import BatchLoader, InMemoryDataModule, Split
from datamodules.digits import DigitsDataModule

__all__ = ["BatchLoader", "DigitsDataModule", "InMemoryDataModule", "Split"]
