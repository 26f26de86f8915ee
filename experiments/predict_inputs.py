"""Input kinds of ``experiments.predict``: how raw inputs (image files, table rows) become model input batches.

Each kind is one small class registered under the ``kind`` that a datamodule declares in its ``input_spec()``
(``image``, ``table``); prediction picks the reader by that name alone, never by the model or dataset. Adding a
kind (text lines for language models) is one more class decorated with :func:`register`. Every kind reads inputs
exactly as its datamodule read training data, from the plain-data description saved with the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS

from datamodules.errors import DataError
from datamodules.table_io import TABLE_FORMATS
from experiments.console import UsageError


@dataclass
class PredictOptions:
    """Options of the prediction command that input kinds use.

    Attributes:
        strict: Fail on the first unreadable file instead of listing and skipping it.
        unknown_categories: ``error`` (a table cell holding a category never seen in training is an error) or
            ``ignore`` (encode it as training encoded unseen categories: no category).
        keep: Table columns copied into the predictions.
        workers: Threads decoding images.
    """

    strict: bool = False
    unknown_categories: str = "error"
    keep: list[str] = field(default_factory=list)
    workers: int = 4


@dataclass
class Batch:
    """Model inputs and what identifies them.

    Attributes:
        x: Inputs as the model (or the ONNX graph) takes them: ``uint8`` images, ``float32`` features.
        ids: Columns of the predictions file that say which input each row is (``file``, ``row``, kept columns).
    """

    x: np.ndarray
    ids: dict[str, np.ndarray | list[Any]]


#: Called with a file that cannot be read and the reason; raises under ``--strict``.
OnSkip = Callable[[Path, str], None]

KINDS: dict[str, type[InputKind]] = {}


def register(cls: type[InputKind]) -> type[InputKind]:
    """Make an input kind available under its ``name`` (the ``kind`` of a datamodule's ``input_spec``)."""
    KINDS[cls.name] = cls
    return cls


def input_kind(spec: Mapping[str, Any], options: PredictOptions) -> InputKind:
    """The reader for the inputs a model takes, chosen by ``spec["kind"]``.

    Raises:
        UsageError: no reader for that kind.
    """
    kind = spec.get("kind")
    if kind not in KINDS:
        raise UsageError(
            f"this model takes inputs of kind '{kind}', which experiments.predict cannot read yet "
            f"(it reads: {', '.join(sorted(KINDS))})"
        )
    return KINDS[kind](spec, options)


def kind_of_file(path: Path) -> str | None:
    """The registered kind whose files have ``path``'s suffix, if any."""
    suffix = path.suffix.lower()
    return next((name for name, cls in KINDS.items() if suffix in cls.extensions), None)


class InputKind:
    """One kind of model input: which files hold it, and how they become batches.

    Args:
        spec: The datamodule's ``input_spec()``, as saved with the model.
        options: The command's options.
    """

    #: The ``kind`` in ``input_spec``.
    name: ClassVar[str] = ""
    #: Suffixes of the files of this kind (lower case, with the dot).
    extensions: ClassVar[frozenset[str]] = frozenset()
    #: What one file of this kind is called in messages ("an image").
    noun: ClassVar[str] = ""
    #: What the items are called in progress lines and summaries.
    unit: ClassVar[str] = "inputs"
    #: Items per forward pass unless ``--batch_size`` says otherwise.
    batch_size: ClassVar[int] = 256

    def __init__(self, spec: Mapping[str, Any], options: PredictOptions) -> None:
        self.spec = spec
        self.options = options

    def describe(self) -> str:
        """What the model takes, in a few words (for messages)."""
        raise NotImplementedError

    def collect(self, inputs: list[str]) -> list[Path]:
        """The files to read: given files, and the files of this kind inside given folders (recursively).

        Raises:
            UsageError: an input that does not exist, is of another kind, or a folder with no file of this kind.
        """
        files: list[Path] = []
        for raw in inputs:
            path = Path(raw)
            if path.is_dir():
                found = sorted(
                    p
                    for p in path.rglob("*")
                    if p.is_file() and p.suffix.lower() in self.extensions and not p.name.startswith(".")
                )
                if not found:
                    others = {kind_of_file(p) for p in path.rglob("*") if p.is_file()} - {None, self.name}
                    holds = f" (it holds {' and '.join(sorted(others))} files)" if others else ""
                    raise UsageError(
                        f"{path} has no {self.unit} ({', '.join(sorted(self.extensions))} files){holds}; this model "
                        f"takes {self.describe()}"
                    )
                files += found
            elif path.is_file():
                other = kind_of_file(path)
                if other is not None and other != self.name:
                    raise UsageError(
                        f"{path} is {KINDS[other].noun}, but this model takes {self.describe()}: pass "
                        f"{self.unit} or folders of them"
                    )
                files.append(path)
            else:
                raise UsageError(f"input not found: {path}")
        return files

    def total(self, files: list[Path]) -> int | None:
        """How many items the files hold, when known before reading them (for the progress line)."""
        return None

    def batches(self, files: list[Path], batch_size: int, on_skip: OnSkip) -> Iterator[Batch]:
        """Model input batches of at most ``batch_size`` items; unreadable files go to ``on_skip``."""
        raise NotImplementedError


# -- images ----------------------------------------------------------------------------------------------------------
def colour_channels(img: Any) -> int:
    """1 for a grayscale image (palette images whose colours are all grays included), else 3; alpha not counted."""
    if img.mode in ("P", "PA"):
        rgb = np.asarray(img.convert("RGB"))
        return 1 if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all() else 3
    return 1 if set(img.getbands()) - {"A"} <= {"1", "L", "I", "F"} else 3


@register
class ImageFiles(InputKind):
    """Image files (anything PIL decodes), read as the datamodule read training images.

    Each file is converted to the model's mode (grayscale ``L`` or ``RGB``) and resized to its input size with
    torchvision's ``Resize`` (bilinear, antialiased), exactly as image-folder training data; the result is the
    ``uint8`` ``(C, H, W)`` array the model's graph normalizes itself. A file of another channel count than the
    model's is refused, unless the datamodule converted any image in training (image folders convert to RGB).
    """

    name = "image"
    extensions = frozenset(IMG_EXTENSIONS)
    noun = "an image"
    unit = "images"

    def __init__(self, spec: Mapping[str, Any], options: PredictOptions) -> None:
        super().__init__(spec, options)
        self.channels, self.height, self.width = (int(s) for s in spec["shape"])
        self.mode = spec.get("mode") or ("L" if self.channels == 1 else "RGB")

    def describe(self) -> str:
        colour = "grayscale" if self.channels == 1 else "RGB"
        return f"{colour} images ({self.channels}x{self.height}x{self.width})"

    def total(self, files: list[Path]) -> int | None:
        return len(files)

    def load(self, path: Path) -> np.ndarray:
        """One file as ``uint8`` ``(C, H, W)``.

        Raises:
            DataError: the image has another channel count than the model's.
            OSError, ValueError...: PIL cannot decode it (see ``BAD_IMAGE_ERRORS``).
        """
        from PIL import Image
        from torchvision import transforms as T
        from torchvision.transforms.functional import pil_to_tensor

        with Image.open(path) as img:
            channels = colour_channels(img)
            if channels != self.channels and not self.spec.get("convert_any_mode"):
                kinds = {1: "grayscale", 3: "colour"}
                raise DataError(
                    f"{path} is a {kinds[channels]} image (mode {img.mode}), but the model was trained on "
                    f"{self.describe()}: pass {kinds[self.channels]} images"
                )
            img = img.convert(self.mode)
        return pil_to_tensor(T.Resize((self.height, self.width))(img)).numpy()

    def batches(self, files: list[Path], batch_size: int, on_skip: OnSkip) -> Iterator[Batch]:
        from datamodules.image_folder import BAD_IMAGE_ERRORS

        def attempt(path: Path) -> np.ndarray | BaseException:
            try:
                return self.load(path)
            except BAD_IMAGE_ERRORS as err:  # DataError is a ValueError: told apart below
                return err

        with ThreadPoolExecutor(max(1, self.options.workers)) as pool:
            for start in range(0, len(files), batch_size):
                chunk = files[start : start + batch_size]
                arrays, names = [], []
                for path, got in zip(chunk, pool.map(attempt, chunk), strict=True):
                    if isinstance(got, DataError):
                        raise got
                    if isinstance(got, BaseException):
                        on_skip(path, _reason(got, path))
                        continue
                    arrays.append(got)
                    names.append(str(path))
                if arrays:
                    yield Batch(np.stack(arrays), {"file": names})


def _reason(err: BaseException, path: Path) -> str:
    """PIL's message, without the path it repeats."""
    text = " ".join(str(err).replace(f" '{path}'", "").replace(str(path), "").split())
    return text[:160] or type(err).__name__


# -- tables ----------------------------------------------------------------------------------------------------------
@register
class TableFiles(InputKind):
    """Rows of CSV or Parquet files, read and preprocessed with the preprocessing fitted in training.

    The files must hold every column the model was trained on (other columns are ignored); numeric cells must be
    numbers, and a category never seen in training is an error unless ``unknown_categories`` is ``ignore``. A file
    that holds the target column also gets it in the predictions, and the summary compares.
    """

    name = "table"
    extensions = frozenset(TABLE_FORMATS)
    noun = "a table"
    unit = "tables"
    batch_size = 4096  # rows are small: large batches keep the per-call overhead negligible

    def __init__(self, spec: Mapping[str, Any], options: PredictOptions) -> None:
        from datamodules.table_prep import TablePreprocessing

        super().__init__(spec, options)
        self.prep = TablePreprocessing(spec["preprocessing"])
        self.read = dict(spec.get("read") or {})

    def describe(self) -> str:
        return f"table rows with the columns {self.prep.columns}"

    def batches(self, files: list[Path], batch_size: int, on_skip: OnSkip) -> Iterator[Batch]:
        from datamodules.table_io import read_table, texts

        target = self.spec.get("target")
        for path in files:
            try:
                table, source = read_table(
                    path, delimiter=self.read.get("delimiter"), na_values=self.read.get("na_values") or ()
                )
            except DataError as err:
                on_skip(path, str(err).removeprefix(f"{path}: ").removeprefix(f"{path} "))
                continue
            absent = [c for c in self.options.keep if c not in table.column_names]
            if absent:
                raise DataError(f"{path} has no column(s) {absent} (--keep); columns: {table.column_names}")
            data = self.prep.arrays(table, source)
            unknown = self.prep.unknown_categories(data)
            if unknown and self.options.unknown_categories != "ignore":
                name, i, value, count = unknown[0]
                known = self.prep.known_categories(name)
                shown = ", ".join(known[:12]) + (f" and {len(known) - 12} more" if len(known) > 12 else "")
                more = f" ({count} rows)" if count > 1 else ""
                raise DataError(
                    f"{path}: column '{name}', row {source.row(i)}: category '{value}'{more} was never seen in "
                    f"training (known: {shown}); fix the value, or pass --unknown_categories ignore to encode it as "
                    "no category"
                )
            x = self.prep.transform(data)
            ids: dict[str, np.ndarray] = {
                "file": np.full(table.num_rows, str(path), dtype=object),
                "row": source.row(0) + np.arange(table.num_rows),
            }
            for column in self.options.keep:
                ids[column] = texts(table.column(column))
            if target and target in table.column_names and target not in ids:
                ids[target] = texts(table.column(target))
            for start in range(0, table.num_rows, batch_size):
                stop = start + batch_size
                yield Batch(x[start:stop], {k: v[start:stop] for k, v in ids.items()})
