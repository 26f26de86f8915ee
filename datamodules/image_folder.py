"""Your own images, one folder per class (``root/CLASS/*.png``), in memory when they fit, else per sample.

When the decoded dataset fits in ``max_memory_mb`` every image is decoded and resized once into one ``uint8``
tensor and batches are augmented on the device; larger datasets go through torchvision transforms per sample in
``DataLoader`` workers. Unreadable images are skipped with a warning naming them (or rejected).
"""

from __future__ import annotations

import math
import warnings
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms.functional import pil_to_tensor

from datamodules.base import Split, split_indices
from datamodules.errors import DataError
from datamodules.image_pipeline import ImagePipelineDataModule, SampleView

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: What PIL raises on unreadable, truncated or corrupt image files.
BAD_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
Item = tuple[Path, int]


def load_rgb(path: Path) -> Image.Image:
    """Decode one image file as RGB."""
    with Image.open(path) as img:
        return img.convert("RGB")


class ImageFiles(Dataset):
    """``(path, label)`` items read as ``(RGB PIL image, label)``; a file that fails to decode raises DataError."""

    def __init__(self, items: list[Item]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        path, label = self.items[i]
        try:
            return load_rgb(path), label
        except BAD_IMAGE_ERRORS as err:
            raise DataError(f"cannot decode image {path}: {err}; delete or replace the file") from None


def random_resized_crop_flip(
    x: Tensor, scale: tuple[float, float], hflip: bool, gen: torch.Generator | None = None
) -> Tensor:
    """Per-sample random resized crop (area fraction in ``scale``, aspect 3/4-4/3) and optional flip of a batch.

    Args:
        x: Float images ``(N, C, H, W)``.
        scale: Range of the crop's area as a fraction of the image.
        hflip: Mirror each crop left-right with probability 0.5.
        gen: Generator on ``x``'s device.

    Returns:
        The crops resized back to ``H x W`` (bilinear), same shape as ``x``.
    """
    n, dev = x.shape[0], x.device
    u = torch.rand(5, n, device=dev, generator=gen)
    area = scale[0] + (scale[1] - scale[0]) * u[0]
    ratio = torch.exp(math.log(3 / 4) + math.log(16 / 9) * u[1])
    w = (area * ratio).sqrt().clamp(max=1.0)  # crop width and height as fractions of the image
    h = (area / ratio).sqrt().clamp(max=1.0)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0] = torch.where(u[4] < 0.5, -w, w) if hflip else w
    theta[:, 0, 2] = (1 - w) * (2 * u[2] - 1)  # crop centre, in [-1, 1] image coordinates
    theta[:, 1, 1] = h
    theta[:, 1, 2] = (1 - h) * (2 * u[3] - 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class ImageFolderDataModule(ImagePipelineDataModule):
    """Class-per-folder images: ``root/CLASS_A/*.png``, ``root/CLASS_B/*.jpg``... resized to ``image_size``.

    Class indices follow the sorted folder names. Validation and test come from ``val_dir``/``test_dir`` when
    given (same class folders), else are carved from ``root`` by fraction, deterministically by ``seed``.

    Args:
        root: Folder with one subfolder per class.
        image_size: Side of the square images the model sees.
        val_fraction: Fraction of ``root``'s images held out for validation (unless ``val_dir``).
        test_fraction: Fraction of ``root``'s images held out for test (unless ``test_dir``).
        val_dir: Separate validation folder, laid out like ``root``.
        test_dir: Separate test folder, laid out like ``root``.
        in_memory: Decode everything once into memory; ``None`` decides from ``max_memory_mb``.
        max_memory_mb: Largest decoded size (``N * 3 * image_size**2`` bytes) kept in memory when ``in_memory``
            is ``None``.
        skip_bad_images: Skip unreadable images with a warning naming each; ``False`` raises instead.
        crop_scale: Area range of the random resized crop (training augmentation).
        augment: Random resized crop (and flip, and ``rotation``/``scale``/``translate`` when set) of training
            images.
        hflip: Random horizontal flip, when ``augment``.
        **kwargs: ``mean``/``std`` (ImageNet's by default), ``num_workers``, batch size and seed: see
            :class:`~datamodules.image_pipeline.ImagePipelineDataModule`.
    """

    default_mean = IMAGENET_MEAN
    default_std = IMAGENET_STD

    def __init__(
        self,
        root: str,
        image_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        val_dir: str | None = None,
        test_dir: str | None = None,
        in_memory: bool | None = None,
        max_memory_mb: float = 2048,
        skip_bad_images: bool = True,
        crop_scale: tuple[float, float] = (0.25, 1.0),
        augment: bool = True,
        hflip: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(augment=augment, hflip=hflip, **kwargs)
        if image_size < 1:
            raise ValueError(f"data.image_size must be >= 1, got {image_size}")
        held_out = (0 if val_dir else val_fraction) + (0 if test_dir else test_fraction)
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and held_out < 1):
            raise ValueError("data.val_fraction and data.test_fraction must be in [0, 1) and sum to less than 1")
        if (not val_dir and val_fraction <= 0) or (not test_dir and test_fraction <= 0):
            raise ValueError("data.val_fraction/test_fraction must be positive unless data.val_dir/test_dir is given")
        if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError(f"data.crop_scale must satisfy 0 < min <= max <= 1, got {list(crop_scale)}")
        self.root = root
        self.image_size = image_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.val_dir = val_dir
        self.test_dir = test_dir
        self.in_memory = in_memory
        self.max_memory_mb = max_memory_mb
        self.skip_bad_images = skip_bad_images
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.input_shape = (3, image_size, image_size)
        self._items: dict[str, list[Item]] = {}

    # -- listing ---------------------------------------------------------------------------------------------------
    @cached_property
    def classes(self) -> list[str]:
        """Sorted class folder names of ``root``."""
        root = Path(self.root)
        if not root.is_dir():
            raise DataError(f"image folder not found: {root} (data.root)")
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise DataError(f"no class folders in {root}: expected one subfolder of images per class, e.g. {root}/cat")
        if len(classes) == 1:
            raise DataError(
                f"image folder {root} has a single class folder '{classes[0]}': a classifier needs at least two "
                f"classes, one subfolder of images per class (e.g. {root}/{classes[0]} and {root}/other)"
            )
        return classes

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        return len(self.classes)

    @property
    def source(self) -> str:
        return f"image folder {self.root}"

    @property
    def class_names(self) -> list[str]:  # type: ignore[override]
        return self.classes

    def input_spec(self) -> dict[str, Any]:
        """An RGB image; any image file is accepted and converted to RGB, as :func:`load_rgb` did in training."""
        return {**super().input_spec(), "convert_any_mode": True}

    def scan(self, folder: str) -> list[Item]:
        """``(path, class index)`` of every image file under ``folder/CLASS/``, sorted by class then name."""
        base = Path(folder)
        if not base.is_dir():
            raise DataError(f"image folder not found: {base}")
        index = {name: i for i, name in enumerate(self.classes)}
        unknown = sorted(
            p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in index
        )
        if unknown:
            raise DataError(f"{base} has class folder(s) {unknown} that {self.root} lacks; classes: {self.classes}")
        items: list[Item] = []
        for name in self.classes:
            files = sorted(p for p in (base / name).glob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
            if not files and base == Path(self.root):
                raise DataError(f"class folder {base / name} has no images ({', '.join(IMG_EXTENSIONS)})")
            items += [(p, index[name]) for p in files]
        return items

    def split_items(self) -> dict[str, list[Item]]:
        """The three splits' items: from ``val_dir``/``test_dir`` when given, else carved from ``root``."""
        items = self.scan(self.root)
        carved = [name for name, folder in (("val", self.val_dir), ("test", self.test_dir)) if not folder]
        fractions = {"val": self.val_fraction, "test": self.test_fraction}
        parts = [torch.arange(len(items))]
        if carved:
            train_fraction = 1 - sum(fractions[name] for name in carved)
            try:
                parts = split_indices(len(items), [train_fraction] + [fractions[n] for n in carved], self.seed)
            except ValueError:
                raise DataError(
                    f"{self.root}: {len(items)} images are too few for the validation/test fractions; "
                    f"each split needs at least one image"
                ) from None
        splits = {
            name: [items[i] for i in part.sort().values.tolist()]
            for name, part in zip(["train", *carved], parts, strict=True)
        }
        for name, folder in (("val", self.val_dir), ("test", self.test_dir)):
            if folder:
                splits[name] = self.scan(folder)
                if not splits[name]:
                    raise DataError(f"{folder} has no images in class folders named like those of {self.root}")
        return splits

    def _bad(self, path: Path, err: BaseException) -> None:
        if not self.skip_bad_images:
            raise DataError(f"cannot decode image {path}: {err}; delete or replace the file") from None
        warnings.warn(f"skipping unreadable image {path}: {err}", stacklevel=2)

    # -- pipelines -------------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if not self.splits and not self.views:
            self._items = self.split_items()
            in_memory = self.in_memory
            if in_memory is None:
                n = sum(len(v) for v in self._items.values())
                in_memory = n * math.prod(self.input_shape) / 2**20 < self.max_memory_mb
            self.per_sample = not in_memory
        super().setup(stage)

    def decode(self, items: list[Item]) -> Split:
        """Decode and resize every image once into ``(N, 3, S, S)`` uint8, skipping unreadable ones."""
        resize = T.Resize((self.image_size, self.image_size))
        x = torch.empty(len(items), *self.input_shape, dtype=torch.uint8)
        labels, n = [], 0
        for path, label in items:
            try:
                x[n] = pil_to_tensor(resize(load_rgb(path)))
            except BAD_IMAGE_ERRORS as err:
                self._bad(path, err)
                continue
            labels.append(label)
            n += 1
        return Split(x[:n].clone(), torch.tensor(labels, dtype=torch.long))

    def load_splits(self) -> dict[str, Split]:
        return {name: self.decode(items) for name, items in self._items.items()}

    def readable(self, items: list[Item]) -> list[Item]:
        """Items whose file passes PIL's integrity check (header and, for PNG, the chunk checksums)."""
        good = []
        for path, label in items:
            try:
                with Image.open(path) as img:
                    img.verify()
            except BAD_IMAGE_ERRORS as err:
                self._bad(path, err)
                continue
            good.append((path, label))
        return good

    def load_views(self) -> dict[str, SampleView]:
        views = {}
        for name, items in self._items.items():
            files = ImageFiles(self.readable(items))
            views[name] = SampleView(files, torch.arange(len(files)), self.sample_transform(train=name == "train"))
        return views

    def sample_transform(self, train: bool) -> Any:
        size = (self.image_size, self.image_size)
        if train and self.augment:
            steps: list[Any] = [T.RandomResizedCrop(size, scale=self.crop_scale)]
            if self.hflip:
                steps.append(T.RandomHorizontalFlip())
            steps += self.affine_steps()
        else:
            steps = [T.Resize(size)]
        return T.Compose([*steps, T.ToTensor(), T.Normalize(self.mean, self.std)])

    def train_transform(self, x: Tensor, gen: torch.Generator) -> Tensor:
        x = self.normalize(x)
        # Bilinear resampling is linear, so cropping the normalized batch equals normalizing the cropped one.
        if not self.augment:
            return x
        return self.affine_augment(random_resized_crop_flip(x, self.crop_scale, self.hflip, gen), gen)
