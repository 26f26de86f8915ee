"""scikit-learn's bundled handwritten digits: 1,797 images of 8x8 pixels, 10 classes, no download."""

from __future__ import annotations

import torch

from datamodules.base import InMemoryDataModule, Split, split_indices
from fileio.errors import DataError


class DigitsDataModule(InMemoryDataModule):
    """8x8 digits from :func:`sklearn.datasets.load_digits`, split train/val/test deterministically by ``seed``.

    Pixels (0-16 in the source) are rescaled to ``uint8`` 0-255 so the images share the image pipeline.

    Args:
        val_fraction: Fraction of all samples held out for validation.
        test_fraction: Fraction of all samples held out for test.
        classes: Keep only these digits, relabelled ``0..len(classes)-1`` in the given order (e.g. ``[5, 6, 7,
            8, 9]`` for a transfer task). ``None`` keeps all ten.
        train_per_class: Keep only this many training images per class (few-shot fine-tuning), drawn from the
            training split by ``seed``; validation and test splits are unchanged. ``None`` keeps them all.
        **kwargs: See :class:`~datamodules.base.InMemoryDataModule` (batch size, seed, augmentation...).
    """

    input_shape = (1, 8, 8)
    mean = (0.3051,)
    std = (0.3750,)

    def __init__(
        self,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        classes: list[int] | None = None,
        train_per_class: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError("data.val_fraction and data.test_fraction must be in (0, 1) and sum to less than 1")
        if classes is not None and (len(set(classes)) != len(classes) or not set(classes) <= set(range(10))):
            raise ValueError(f"data.classes must be distinct digits 0-9, got {classes}")
        if classes is not None and len(classes) < 2:
            raise ValueError(
                f"data.classes must name at least two digits (a classifier needs two classes), got {classes}"
            )
        if train_per_class is not None and train_per_class < 1:
            raise ValueError(f"data.train_per_class must be >= 1 (or null for all), got {train_per_class}")
        self.train_per_class = train_per_class
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.classes = list(classes) if classes is not None else None
        self.num_classes = len(self.classes) if self.classes is not None else 10
        self.class_names = [str(c) for c in (self.classes or range(10))]

    @property
    def source(self) -> str:
        return "scikit-learn's digits"

    def load_arrays(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All digits as ``(N, 1, 8, 8)`` uint8 images and ``(N,)`` int64 labels (after class filtering)."""
        from sklearn.datasets import load_digits

        data = load_digits()
        x = torch.from_numpy(data.images).mul(255.0 / 16.0).round().to(torch.uint8).unsqueeze(1)
        y = torch.from_numpy(data.target).long()
        if self.classes is not None:
            keep = torch.isin(y, torch.tensor(self.classes))
            x, y = x[keep], y[keep]
            remap = torch.full((10,), -1, dtype=torch.long)
            remap[torch.tensor(self.classes)] = torch.arange(len(self.classes))
            y = remap[y]
        return x, y

    def _per_class(self, train: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``train_per_class`` indices of each class from ``train``, the same for the same ``seed``."""
        k = self.train_per_class
        order = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(self.seed + 1))]
        picked = []
        for c in range(self.num_classes):
            of_class = order[y[order] == c]
            if len(of_class) < k:
                raise DataError(
                    f"data.train_per_class={k}, but class '{self.class_names[c]}' has only {len(of_class)} training "
                    f"images; pass at most {len(of_class)}"
                )
            picked.append(of_class[:k])
        return torch.cat(picked).sort().values

    def load_splits(self) -> dict[str, Split]:
        x, y = self.load_arrays()
        fractions = (1 - self.val_fraction - self.test_fraction, self.val_fraction, self.test_fraction)
        train, val, test = split_indices(len(y), fractions, self.seed)
        if self.train_per_class is not None:
            train = self._per_class(train, y)
        return {"train": Split(x[train], y[train]), "val": Split(x[val], y[val]), "test": Split(x[test], y[test])}
