"""Your own images, one folder per class (``root/CLASS/*.png``), in memory when they fit, else per sample.

When the decoded dataset fits in ``max_memory_mb`` every image is decoded and resized once into one ``uint8``
tensor, by a pool of threads on every core, cached outside the folder for the next run (see
:mod:`datamodules.image_cache`), and batches are augmented on the device; larger datasets go through torchvision
transforms per sample in ``DataLoader`` workers. Unreadable images are skipped with a warning naming them (or
rejected).
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

from datamodules.augment import random_crop_flip
from datamodules.base import Split, split_indices
from datamodules.image_cache import BAD_IMAGE_ERRORS, FileStamp, default_cache_dir, list_images, load_folder
from datamodules.image_pipeline import ImagePipelineDataModule, SampleView
from fileio.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: An image file and its class index.
Item = tuple[str, int]


def load_rgb(path: str | Path) -> Image.Image:
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
        crop_padding: With ``augment``, a random crop of the image padded by this many black pixels (CIFAR's
            standard shift) instead of the random resized crop; 0 keeps the resized crop.
        augment: Random resized crop (and flip, and ``rotation``/``scale``/``translate`` when set) of training
            images.
        hflip: Random horizontal flip, when ``augment``.
        cache: Keep the decoded images of the in-memory pipeline in a cache file outside the folder, keyed on the
            file list, sizes and modification times, so the next run of an unchanged folder skips decoding.
        cache_dir: Folder of the cache files; ``None`` is ``$ZEROTUNE_CACHE_DIR``, else
            ``$XDG_CACHE_HOME/zerotune``, else ``~/.cache/zerotune``. It must not lie inside an image folder.
        decode_threads: Threads decoding the images; ``None`` uses every available core.
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
        crop_padding: int = 0,
        augment: bool = True,
        hflip: bool = True,
        cache: bool = True,
        cache_dir: str | None = None,
        decode_threads: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(augment=augment, hflip=hflip, crop_padding=crop_padding, **kwargs)
        if image_size < 1:
            raise ValueError(f"data.image_size must be >= 1, got {image_size}")
        held_out = (0 if val_dir else val_fraction) + (0 if test_dir else test_fraction)
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and held_out < 1):
            raise ValueError("data.val_fraction and data.test_fraction must be in [0, 1) and sum to less than 1")
        if (not val_dir and val_fraction <= 0) or (not test_dir and test_fraction <= 0):
            raise ValueError("data.val_fraction/test_fraction must be positive unless data.val_dir/test_dir is given")
        if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError(f"data.crop_scale must satisfy 0 < min <= max <= 1, got {list(crop_scale)}")
        if crop_padding < 0:
            raise ValueError(f"data.crop_padding must be >= 0, got {crop_padding}")
        if decode_threads is not None and decode_threads < 1:
            raise ValueError(f"data.decode_threads must be >= 1 (or null for every core), got {decode_threads}")
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
        self.cache = cache
        self.cache_dir = cache_dir
        self.decode_threads = decode_threads
        self.input_shape = (3, image_size, image_size)
        self._items: dict[str, list[Item]] = {}
        self._scans: dict[str, list[Item]] = {}
        self._stamps: dict[str, list[FileStamp]] = {}
        #: Whether each folder's images came from the cache in the last :meth:`load_splits` (folder -> hit).
        self.cache_hits: dict[str, bool] = {}

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
        if folder not in self._scans:
            self._scans[folder] = self._scan(folder)
        return self._scans[folder]

    def _scan(self, folder: str) -> list[Item]:
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
        stamps: list[FileStamp] = []
        for name in self.classes:
            files = list_images(base / name)
            if not files and base == Path(self.root):
                raise DataError(f"class folder {base / name} has no images ({', '.join(IMG_EXTENSIONS)})")
            items += [(stamp.path, index[name]) for stamp in files]
            stamps += files
        self._stamps[folder] = stamps
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

    def _bad(self, path: str, err: BaseException | str) -> None:
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

    def _cache_dir(self) -> Path:
        """The cache folder, refused when it lies inside one of the image folders (it would become a class)."""
        cache_dir = Path(self.cache_dir) if self.cache_dir else default_cache_dir()
        for folder in filter(None, (self.root, self.val_dir, self.test_dir)):
            if cache_dir.resolve().is_relative_to(Path(folder).resolve()):
                raise DataError(
                    f"data.cache_dir {cache_dir} lies inside the image folder {folder}; choose a folder outside it"
                )
        return cache_dir

    def load_splits(self) -> dict[str, Split]:
        """Decode each folder once (or read it from the cache) and gather the splits' rows from it."""
        folders = {"train": self.root, "val": self.val_dir or self.root, "test": self.test_dir or self.root}
        cache_dir = self._cache_dir() if self.cache else None
        decoded, rows = {}, {}
        for folder in dict.fromkeys(folders.values()):
            paths = [path for path, _ in self.scan(folder)]
            decoded[folder] = load_folder(
                folder, self._stamps[folder], self.image_size, cache_dir, cache=self.cache, threads=self.decode_threads
            )
            rows[folder] = {path: i for i, path in enumerate(paths)}
            self.cache_hits[folder] = decoded[folder].cache_hit
        splits = {}
        for name, items in self._items.items():
            folder = decoded[folders[name]]
            index, labels = [], []
            for path, label in items:
                row = rows[folders[name]][path]
                if row in folder.errors:
                    self._bad(path, folder.errors[row])
                    continue
                index.append(row)
                labels.append(label)
            idx = torch.tensor(index, dtype=torch.long)
            splits[name] = Split(folder.images.index_select(0, idx), torch.tensor(labels, dtype=torch.long))
        return splits

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
            if self.crop_padding:
                steps: list[Any] = [T.Resize(size), T.RandomCrop(size, padding=self.crop_padding)]
            else:
                steps = [T.RandomResizedCrop(size, scale=self.crop_scale)]
            if self.hflip:
                steps.append(T.RandomHorizontalFlip())
            steps += self.affine_steps()
        else:
            steps = [T.Resize(size)]
        return T.Compose([*steps, T.ToTensor(), T.Normalize(self.mean, self.std)])

    def train_transform(self, x: Tensor, gen: torch.Generator) -> Tensor:
        if self.augment and self.crop_padding:
            # The padded crop on the uint8 batch, as the torchvision datasets' pipeline does it.
            x = random_crop_flip(x, self.crop_padding, self.hflip, gen)
            return self.affine_augment(self.normalize(x), gen)
        x = self.normalize(x)
        # Bilinear resampling is linear, so cropping the normalized batch equals normalizing the cropped one.
        if not self.augment:
            return x
        return self.affine_augment(random_resized_crop_flip(x, self.crop_scale, self.hflip, gen), gen)
