"""MNIST, Fashion-MNIST and CIFAR-10 read by torchvision's dataset classes, with two pipelines over the same splits.

``pipeline="memory"`` (default) decodes each split once into one ``uint8`` tensor and gathers, normalizes and
augments whole batches on the training device. ``pipeline="torchvision"`` is the classic per-sample path
(PIL image -> ``ToTensor``/``Normalize``/``RandomCrop``/``RandomHorizontalFlip`` -> ``DataLoader`` workers) over the
same split indices and normalization, kept for comparison and for transforms the batch path lacks.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torchvision
from torch import Tensor
from torchvision.datasets import mnist
from torchvision.datasets.utils import calculate_md5, download_and_extract_archive
from torchvision.datasets.vision import VisionDataset

from datamodules.base import Split
from datamodules.image_pipeline import ImagePipelineDataModule, SampleView
from fileio.errors import DataError
from fileio.pickles import restricted_unpickle

Pipeline = Literal["memory", "torchvision"]
_REFETCH = "Delete it and rerun with data.download true to fetch it again."
#: What torchvision's readers raise on truncated or malformed files (IDX asserts and reshapes, pickle errors).
READ_ERRORS = (AssertionError, AttributeError, EOFError, ImportError, LookupError, OSError, RuntimeError, TypeError)
READ_ERRORS += (ValueError, pickle.UnpicklingError)


class TorchvisionImageDataModule(ImagePipelineDataModule):
    """A torchvision image-classification dataset: official train split (minus validation) and official test split.

    Files are downloaded only in :meth:`prepare_data`, and only when some are missing. Missing files offline, or
    truncated/corrupt ones, raise :class:`~fileio.errors.DataError` naming the folder or file and the fix.

    Subclasses set ``dataset_cls`` and implement :meth:`folder`, :meth:`expected_files`, :meth:`fetch_hint`,
    :meth:`reader`, :meth:`images` and :meth:`bad_file`.

    Args:
        data_dir: Root folder of the datasets (torchvision's ``root``).
        download: Download missing files in :meth:`prepare_data`.
        val_size: Validation samples carved from the official training set: a fraction if below 1, else a count.
            Drawn deterministically from ``seed``.
        pipeline: ``memory`` (one ``uint8`` tensor per split, batches on the device) or ``torchvision``
            (per-sample transforms and a ``DataLoader`` with ``num_workers``).
        **kwargs: ``mean``/``std``/``num_workers`` (:class:`ImagePipelineDataModule`), batch size, seed and
            augmentation (:class:`~datamodules.base.InMemoryDataModule`).
    """

    dataset_cls: ClassVar[type]
    num_classes = 10

    def __init__(
        self,
        data_dir: str = "data/",
        download: bool = True,
        val_size: float = 0.1,
        pipeline: Pipeline = "memory",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if val_size <= 0:
            raise ValueError(f"data.val_size must be positive (a fraction below 1 or a count), got {val_size}")
        if pipeline not in ("memory", "torchvision"):
            raise ValueError(f"data.pipeline must be 'memory' or 'torchvision', got {pipeline!r}")
        self.data_dir = data_dir
        self.download = download
        self.val_size = val_size
        self.pipeline = pipeline
        self.per_sample = pipeline == "torchvision"
        if getattr(self.dataset_cls, "classes", None):
            self.class_names = list(self.dataset_cls.classes)

    # -- per-dataset hooks -----------------------------------------------------------------------------------------
    def folder(self) -> Path:
        """Folder holding the files torchvision reads."""
        raise NotImplementedError

    def expected_files(self) -> list[str]:
        """Names of the files torchvision reads, inside :meth:`folder`."""
        raise NotImplementedError

    def fetch_hint(self) -> str:
        """How to get the files by hand: what to download from which URL, and where to put it."""
        raise NotImplementedError

    def reader(self, train: bool) -> Any:
        """torchvision's dataset for one official split, reading existing files (never downloading)."""
        return self.dataset_cls(self.data_dir, train=train, download=False)

    def fetch(self) -> None:
        """Download and unpack the dataset into ``data_dir`` (torchvision checks the archives' md5)."""
        # torchvision downloads on construction; the test split is the small one.
        self.dataset_cls(self.data_dir, train=False, download=True)

    def images(self, dataset: Any) -> Tensor:
        """The split's decoded images as one ``(N, C, H, W)`` uint8 tensor."""
        raise NotImplementedError

    def bad_file(self, train: bool) -> Path:
        """The file of this split that torchvision failed to read (called after a read error)."""
        raise NotImplementedError

    @property
    def source(self) -> str:
        return f"{self.dataset_cls.__name__} in {self.folder()}"

    # -- files -----------------------------------------------------------------------------------------------------
    def missing_files(self) -> list[str]:
        return [name for name in self.expected_files() if not (self.folder() / name).is_file()]

    def missing_message(self, missing: list[str], reason: str) -> str:
        return (
            f"{self.dataset_cls.__name__} files missing in {self.folder()} ({reason}): {', '.join(missing)}. "
            f"{self.fetch_hint()}, or rerun with data.download true where the network is reachable."
        )

    def prepare_data(self) -> None:
        """Download the dataset when files are missing and ``download`` is on; never touches the network otherwise."""
        missing = self.missing_files()
        if not missing or not self.download:
            return
        try:
            self.fetch()
        except (OSError, RuntimeError) as err:
            # torchvision lists every mirror it tried; the last line holds the final error.
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            cause = (lines[-1] if lines else type(err).__name__)[:160]
            raise DataError(self.missing_message(self.missing_files(), f"download failed: {cause}")) from None

    def read(self, train: bool) -> tuple[Any, Tensor]:
        """torchvision's dataset of one official split and its ``(N,)`` int64 labels, files and labels checked.

        Raises:
            DataError: files missing, or a file truncated/corrupt (named, with the fix).
        """
        missing = self.missing_files()
        if missing:
            reason = "data.download is false" if not self.download else "not downloaded yet: prepare_data not run"
            raise DataError(self.missing_message(missing, reason))
        try:
            dataset = self.reader(train)
            labels = torch.as_tensor(np.asarray(dataset.targets), dtype=torch.long)
            count_ok = len(dataset.data) == len(labels)
        except DataError:
            raise  # already names the file and the fix (a refused pickle, a file that fails its md5 check)
        except READ_ERRORS as err:
            raise self.corrupt(self.bad_file(train), err) from None
        if not count_ok or len(labels) == 0 or labels.min() < 0 or labels.max() >= self.num_classes:
            raise self.corrupt(self.bad_file(train), ValueError("image and label counts or label values disagree"))
        if getattr(dataset, "classes", None):
            self.class_names = list(dataset.classes)
        return dataset, labels

    def corrupt(self, path: Path, err: BaseException) -> DataError:
        cause = " ".join(str(err).split())[:160] or type(err).__name__
        return DataError(f"cannot read {path}: the file is truncated or corrupt ({cause}). {_REFETCH}")

    # -- splits ----------------------------------------------------------------------------------------------------
    def train_val_indices(self, n: int) -> tuple[Tensor, Tensor]:
        """Sorted train and validation indices into the official training set, drawn from ``seed``."""
        n_val = int(round(self.val_size * n)) if self.val_size < 1 else int(self.val_size)
        if not 0 < n_val < n:
            raise DataError(
                f"data.val_size={self.val_size} leaves no training or no validation samples out of the {n} "
                f"training samples in {self.folder()}"
            )
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        return order[n_val:].sort().values, order[:n_val].sort().values

    def load_splits(self) -> dict[str, Split]:
        (train_set, y), (test_set, test_y) = self.read(True), self.read(False)
        x = self.images(train_set)
        train, val = self.train_val_indices(len(y))
        return {
            "train": Split(x[train], y[train]),
            "val": Split(x[val], y[val]),
            "test": Split(self.images(test_set), test_y),
        }

    def load_views(self) -> dict[str, SampleView]:
        (train_set, y), (test_set, test_y) = self.read(True), self.read(False)
        train, val = self.train_val_indices(len(y))
        return {
            "train": SampleView(train_set, train, self.sample_transform(train=True)),
            "val": SampleView(train_set, val, self.sample_transform(train=False)),
            "test": SampleView(test_set, torch.arange(len(test_y)), self.sample_transform(train=False)),
        }


class MNISTDataModule(TorchvisionImageDataModule):
    """MNIST handwritten digits, 28x28 grayscale: 60,000 training (minus validation) and 10,000 test images.

    Args:
        augment: Random shift of training images by up to ``crop_padding`` pixels (off by default).
        crop_padding: Padding of the random crop, in pixels.
        hflip: Random horizontal flip; refused for digits, whose mirror images change meaning.
        **kwargs: See :class:`TorchvisionImageDataModule`.
    """

    dataset_cls = torchvision.datasets.MNIST
    input_shape = (1, 28, 28)
    #: Size of the official training split (before validation is carved out).
    official_train_size: ClassVar[int] = 60_000
    default_mean = (0.1307,)
    default_std = (0.3081,)
    #: Whether a mirrored image keeps its class (not for digits).
    mirror_safe: ClassVar[bool] = False

    def __init__(self, augment: bool = False, crop_padding: int = 2, hflip: bool = False, **kwargs: Any) -> None:
        if hflip and not self.mirror_safe:
            raise ValueError(f"data.hflip must be false for {self.dataset_cls.__name__}: mirroring changes the class")
        super().__init__(augment=augment, crop_padding=crop_padding, hflip=hflip, **kwargs)

    def folder(self) -> Path:
        return Path(self.data_dir) / self.dataset_cls.__name__ / "raw"

    def expected_files(self) -> list[str]:
        return [os.path.splitext(name)[0] for name, _ in self.dataset_cls.resources]

    def fetch_hint(self) -> str:
        archives = ", ".join(name for name, _ in self.dataset_cls.resources)
        return f"Download {archives} from {self.dataset_cls.mirrors[0]} and gunzip them into {self.folder()}"

    def images(self, dataset: Any) -> Tensor:
        return dataset.data.unsqueeze(1).contiguous()  # (N, 28, 28) -> (N, 1, 28, 28)

    def bad_file(self, train: bool) -> Path:
        prefix = "train" if train else "t10k"
        image_file = self.folder() / f"{prefix}-images-idx3-ubyte"
        # torchvision reads the images first; if they parse on their own, the labels are at fault.
        try:
            mnist.read_image_file(str(image_file))
        except READ_ERRORS:
            return image_file
        return self.folder() / f"{prefix}-labels-idx1-ubyte"


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST: 28x28 grayscale clothing images in 10 classes, MNIST's layout and sizes.

    Same arguments as :class:`MNISTDataModule`; ``hflip`` is allowed (a mirrored garment keeps its class).
    """

    dataset_cls = torchvision.datasets.FashionMNIST
    mirror_safe = True
    default_mean = (0.2860,)
    default_std = (0.3530,)


class _CIFAR10Files(torchvision.datasets.CIFAR10):
    """torchvision's CIFAR-10 dataset (``data``, ``targets``, ``classes`` and its per-sample ``__getitem__``), read
    with :func:`restricted_unpickle` instead of ``pickle.load``.

    The md5 of each file is checked by :class:`CIFAR10DataModule` (once per process, and only when
    ``verify_md5``), not here: the stock class hashes all 180 MB on every construction.
    """

    def __init__(self, root: str | Path, train: bool = True) -> None:
        VisionDataset.__init__(self, root)
        self.train = train
        folder = Path(self.root) / self.base_folder
        names = [name for name, _ in (self.train_list if train else self.test_list)]
        entries = [restricted_unpickle(folder / name, fix=_REFETCH) for name in names]
        # Each file: "data" (N, 3072) uint8 rows in CHW order, "labels" a list of N ints.
        for name, entry in zip(names, entries, strict=True):
            data = entry["data"]
            if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
                raise ValueError(f"{name}: 'data' is not an (N, 3072) uint8 array")
        self.data = np.vstack([entry["data"] for entry in entries]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        self.targets = [int(label) for entry in entries for label in entry["labels"]]
        self.classes = list(restricted_unpickle(folder / self.meta["filename"], fix=_REFETCH)[self.meta["key"]])
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


#: CIFAR-10 files whose md5 matched in this process, by (resolved path, size, modification time).
_verified: set[tuple[str, int, int]] = set()


class CIFAR10DataModule(TorchvisionImageDataModule):
    """CIFAR-10: 32x32 colour images in 10 classes, 50,000 training (minus validation) and 10,000 test.

    Args:
        augment: Augment training batches (on by default).
        crop_padding: Padding of the random crop, in pixels (4, the standard CIFAR shift).
        hflip: Random horizontal flip (on by default).
        verify_md5: Check every batch file against the md5 torchvision lists for the official archive (once per
            process, about a second for the 180 MB). ``false`` reads files you made yourself in CIFAR-10's format;
            either way the files are unpickled by :func:`restricted_unpickle`, which builds numpy arrays and plain
            data only.
        **kwargs: See :class:`TorchvisionImageDataModule`.
    """

    dataset_cls = torchvision.datasets.CIFAR10
    input_shape = (3, 32, 32)
    official_train_size: ClassVar[int] = 50_000
    # torchvision reads the names from batches.meta; these are the official ones until then.
    class_names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    default_mean = (0.4914, 0.4822, 0.4465)
    default_std = (0.2470, 0.2435, 0.2616)

    def __init__(
        self, augment: bool = True, crop_padding: int = 4, hflip: bool = True, verify_md5: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(augment=augment, crop_padding=crop_padding, hflip=hflip, **kwargs)
        self.verify_md5 = verify_md5

    def folder(self) -> Path:
        return Path(self.data_dir) / self.dataset_cls.base_folder

    def expected_files(self) -> list[str]:
        cls = self.dataset_cls
        return [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]

    def fetch_hint(self) -> str:
        return f"Download {self.dataset_cls.url} and extract it into {self.data_dir}"

    def fetch(self) -> None:
        # What the stock class's download does, without its constructor's plain pickle.load of the files.
        cls = self.dataset_cls
        download_and_extract_archive(cls.url, self.data_dir, filename=cls.filename, md5=cls.tgz_md5)

    def reader(self, train: bool) -> Any:
        if self.verify_md5:
            cls = self.dataset_cls
            self.check_md5([*(cls.train_list if train else cls.test_list), [cls.meta["filename"], cls.meta["md5"]]])
        return _CIFAR10Files(self.data_dir, train=train)

    def check_md5(self, files: list[list[str]]) -> None:
        """Check ``[name, md5]`` files of :meth:`folder` against the official md5s; each file once per process.

        Raises:
            DataError: a file whose md5 differs, named with the fix.
        """
        for name, want in files:
            path = self.folder() / name
            st = path.stat()
            stamp = (str(path.resolve()), st.st_size, st.st_mtime_ns)
            if stamp in _verified:
                continue
            got = calculate_md5(path)
            if got != want:
                raise DataError(
                    f"{path} does not match the official CIFAR-10 archive (md5 {got}, expected {want}): it is damaged "
                    "or was replaced. Delete it and rerun with data.download true to fetch it again (or set "
                    "data.verify_md5 false for files you wrote yourself in CIFAR-10's format)"
                )
            _verified.add(stamp)

    def images(self, dataset: Any) -> Tensor:
        return torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> (N, 3, 32, 32)

    def bad_file(self, train: bool) -> Path:
        cls = self.dataset_cls
        names = [name for name, _ in (cls.train_list if train else cls.test_list)]
        for name in [*names, cls.meta["filename"]]:
            path = self.folder() / name
            try:
                entry = restricted_unpickle(path, fix=_REFETCH)
                if name == cls.meta["filename"]:
                    ok = isinstance(entry.get(cls.meta["key"]), list)
                else:
                    data = np.asarray(entry["data"])
                    ok = data.size % 3072 == 0 and data.size // 3072 == len(entry["labels"])
            except READ_ERRORS:
                ok = False
            if not ok:
                return path
        return self.folder()
