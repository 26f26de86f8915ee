"""Image datamodules with two pipelines over the same splits: in-memory batches or per-sample torchvision transforms.

The in-memory pipeline (:class:`~datamodules.base.InMemoryDataModule`) gathers, normalizes and augments whole
``uint8`` batches on the device. The per-sample pipeline is the classic one: PIL image -> torchvision transforms ->
``DataLoader`` workers; it serves datasets too large to decode into memory and transforms the batch path lacks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from datamodules.base import InMemoryDataModule


class SampleView(Dataset):
    """Per-sample view of a dataset returning ``(PIL image, label)``: ``indices`` picks samples, ``transform`` maps
    each image to a tensor. One decoded dataset serves several splits with different transforms."""

    def __init__(self, dataset: Any, indices: Sequence[int] | Tensor, transform: Callable) -> None:
        self.dataset = dataset
        self.indices = torch.as_tensor(indices, dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        img, label = self.dataset[int(self.indices[i])]
        return self.transform(img), int(label)


class ImagePipelineDataModule(InMemoryDataModule):
    """Image datamodule that serves its splits either in memory or per sample through torchvision transforms.

    Subclasses implement :meth:`load_splits` (in-memory ``uint8`` splits) and :meth:`load_views` (per-sample
    :class:`SampleView` per split) and set ``self.per_sample`` before :meth:`setup` loads anything.

    Args:
        mean: Per-channel mean of the [0, 1]-scaled pixels; ``None`` uses the dataset's ``default_mean``.
        std: Per-channel standard deviation; ``None`` uses ``default_std``.
        num_workers: ``DataLoader`` worker processes of the per-sample path.
        **kwargs: See :class:`~datamodules.base.InMemoryDataModule`.
    """

    default_mean: ClassVar[tuple[float, ...]] = (0.5,)
    default_std: ClassVar[tuple[float, ...]] = (0.5,)

    def __init__(
        self, mean: list[float] | None = None, std: list[float] | None = None, num_workers: int = 2, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.mean = tuple(float(m) for m in (mean if mean is not None else self.default_mean))
        self.std = tuple(float(s) for s in (std if std is not None else self.default_std))
        channels = len(self.default_mean)
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"data.mean and data.std need {channels} value(s), one per channel")
        if min(self.std) <= 0:
            raise ValueError(f"data.std must be positive, got {list(self.std)}")
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")
        self.num_workers = num_workers
        self.per_sample = False
        self.views: dict[str, SampleView] = {}

    def load_views(self) -> dict[str, SampleView]:
        """Per-sample datasets of the three splits (the per-sample pipeline's counterpart of :meth:`load_splits`)."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.per_sample:
            if not self.views:
                views = self.load_views()
                self.check_splits({name: len(view) for name, view in views.items()})
                self.views = views
        else:
            super().setup(stage)

    def sample_transform(self, train: bool) -> Callable:
        """PIL image -> normalized ``(C, H, W)`` float tensor, with the training augmentation when ``train``."""
        steps: list[Callable] = []
        if train and self.augment:
            size = self.input_shape[1:]
            if self.crop_padding > 0:
                steps.append(T.RandomCrop(size, padding=self.crop_padding))
            if self.hflip:
                steps.append(T.RandomHorizontalFlip())
            steps += self.affine_steps()
        return T.Compose([*steps, T.ToTensor(), T.Normalize(self.mean, self.std)])

    def affine_steps(self) -> list[Callable]:
        """The per-sample counterpart of :meth:`affine_augment`: a ``RandomAffine`` step, or none when disabled."""
        if not (self.rotation or self.scale or self.translate):
            return []
        h, w = self.input_shape[1:]
        scale = (1 - self.scale, 1 + self.scale) if self.scale else None
        return [T.RandomAffine(self.rotation, translate=(self.translate / w, self.translate / h), scale=scale)]

    def _loader(self, name: str, train: bool) -> Any:
        if not self.per_sample:
            return super()._loader(name, train)
        if not self.views:
            self.setup()
        workers = self.num_workers
        return DataLoader(
            self.views[name],
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=train and self.drop_last,
            # Seeded so the per-sample path's epoch orders are reproducible too (DDP swaps in its own sampler).
            generator=torch.Generator().manual_seed(self.seed) if train else None,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
        )
