"""Input kinds of ``experiments.predict``: how raw inputs (image files, table rows) become model input batches.

Each kind is one small class registered under the ``kind`` that a datamodule declares in its ``input_spec()``
(``image``, ``table``, ``text``); prediction picks the reader by that name alone, never by the model or dataset.
Adding a kind is one more class decorated with :func:`register`. Every kind reads inputs exactly as its datamodule
read training data, from the plain-data description saved with the model.
"""

from __future__ import annotations

import codecs
import contextlib
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS

from datamodules.table_io import TABLE_FORMATS
from experiments.rundir.console import UsageError
from fileio.errors import DataError


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
        x: Inputs as the model (or the ONNX graph) takes them: ``uint8`` images, ``float32`` features, ``int64``
            token ids.
        ids: Columns of the predictions file that say which input each row is (``file``, ``row``, kept columns;
            ``id`` for texts).
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
                if other is not None and other != self.name and path.suffix.lower() not in self.extensions:
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

    @property
    def target(self) -> str | None:
        """The predictions column holding the known answer (copied from the inputs), if any: the summary compares."""
        return self.spec.get("target")

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


# -- text ------------------------------------------------------------------------------------------------------------
#: Stands for standard input among the collected files (``-`` on the command line).
STDIN = Path("-")
#: Bytes read at a time from a text file or standard input: memory stays flat however large the input.
READ_CHUNK = 1 << 20
#: A line of a CSV, TSV or JSON Lines file longer than this (bytes) is refused rather than read whole.
MAX_ROW_BYTES = 16 << 20
#: Tokens beyond ``block_size`` that a cut text still holds, so that the kept tokens are those of the whole text.
WINDOW_MARGIN = 16
#: Characters tokenized in one call: a batch of long texts is tokenized in parts.
ENCODE_CHARS = 1 << 22


def text_window(tokenizer: Any, block_size: int) -> int:
    """Characters of a text that certainly hold ``block_size + WINDOW_MARGIN`` tokens, when the text has as many.

    A token stands for at most as many bytes as the vocabulary's longest token, and a character is at least one
    byte, so that many tokens times the longest token's bytes, in characters, is enough (generous for byte and char
    tokenizers, which give at least one token per character). Only this much of a text is read and tokenized: the
    model sees its first ``block_size`` tokens.
    """
    longest = max(tokenizer.token_bytes(), default=1)
    return (block_size + WINDOW_MARGIN) * max(1, longest)


def text_lines(stream: BinaryIO, where: str, keep: int) -> Iterator[tuple[int, str, bool]]:
    """``(line number, line, whether it has a non-blank character)`` for each line of a UTF-8 byte stream.

    The line is its first ``keep`` characters, without the line ending (``\\n`` or ``\\r\\n``); a byte-order mark
    is skipped. The stream is decoded a chunk at a time, so a line of any length costs ``keep`` characters.

    Raises:
        DataError: bytes that are not UTF-8 (their offset in the stream is named).
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    number, head, length, blank = 1, [], 0, True
    offset = 0
    while True:
        raw = stream.read(READ_CHUNK)  # a whole chunk unless at the end: a BOM is never split
        done = not raw
        if offset == 0 and raw.startswith(codecs.BOM_UTF8):
            raw, offset = raw[len(codecs.BOM_UTF8) :], len(codecs.BOM_UTF8)
        pending = len(decoder.getstate()[0])  # bytes of a character split by the previous chunk
        try:
            text = decoder.decode(raw, final=done)
        except UnicodeDecodeError as err:
            at = offset - pending + err.start
            raise DataError(f"{where} is not UTF-8 text ({err.reason} at byte {at}): save it as UTF-8") from None
        offset += len(raw)
        for i, piece in enumerate(text.split("\n")):
            if i:  # a line ended before this piece
                yield number, _line(head, length, keep), not blank
                number, head, length, blank = number + 1, [], 0, True
            if length <= keep:
                head.append(piece[: keep + 1 - length])
            length += len(piece)
            blank = blank and not piece.strip()
        if done:
            break
    yield number, _line(head, length, keep), not blank


def _line(head: list[str], length: int, keep: int) -> str:
    """The first ``keep`` characters of a line of ``length`` characters whose first ``keep + 1`` are ``head``.

    A ``\\r`` ending is removed only when it is the line's last character: in a longer line it is past the cut.
    """
    text = "".join(head)
    return (text.removesuffix("\r") if length <= keep + 1 else text)[:keep]


def check_row_lengths(path: Path) -> None:
    """Raises: DataError for a line longer than :data:`MAX_ROW_BYTES` (read a piece at a time to find out)."""
    with open(path, "rb") as f:
        for number, line in enumerate(iter(lambda: f.readline(MAX_ROW_BYTES + 1), b""), start=1):
            if len(line) > MAX_ROW_BYTES:
                raise DataError(
                    f"{path}, line {number} is longer than {MAX_ROW_BYTES >> 20} MiB: a row that long is not read; "
                    "split the text, or pass it as a .txt file (one text per line, read in pieces)"
                )


@register
class TextLines(InputKind):
    """Texts, tokenized, cut and padded by the datamodule's own :func:`~datamodules.text_classification.encode_texts`.

    A ``.txt`` file (or standard input, ``-``) holds one text per non-empty line, its id ``FILE:LINE``; a ``.csv``,
    ``.tsv`` or ``.jsonl`` file holds one per row in the text column training read (``data.text_column``), its id
    ``FILE:LINE`` too, and a row's label column, when there is one, is copied as ``true_label``. Files must be UTF-8.
    The tokenizer is the one the spec names, filled in by the loader from the checkpoint or the ONNX file.

    Inputs are streamed: a text is cut to :func:`text_window` characters before it is tokenized (the model sees its
    first ``block_size`` tokens only), and files are read in chunks, so memory does not grow with the input.
    """

    name = "text"
    extensions = frozenset({".txt", ".csv", ".tsv", ".jsonl"})
    noun = "a text file"
    unit = "texts"

    def __init__(self, spec: Mapping[str, Any], options: PredictOptions) -> None:
        from datamodules.tokenizer import tokenizer_from_dict

        super().__init__(spec, options)
        self.tokenizer = tokenizer_from_dict(dict(spec["tokenizer"]))
        self.block_size = int(spec["block_size"])
        self.text_column = spec.get("text_column", "text")
        self.label_column = spec.get("label_column", "label")
        self.window = text_window(self.tokenizer, self.block_size)
        self._stdin: BinaryIO | None = None

    def describe(self) -> str:
        return (
            f"text (lines of .txt files, or the '{self.text_column}' column of .csv/.tsv/.jsonl files; "
            f"{self.tokenizer.kind} tokens, the first {self.block_size} kept)"
        )

    @property
    def target(self) -> str | None:
        return "true_label"

    def collect(self, inputs: list[str]) -> list[Path]:
        files: list[Path] = []
        for raw in inputs:
            if raw == "-":
                if STDIN in files:
                    raise UsageError("- (standard input) is given twice: it can be read once")
                files.append(STDIN)
            else:
                files += super().collect([raw])
        return files

    def texts(self, path: Path) -> Iterator[tuple[str, str, str | None]]:
        """``(id, text, label or None)`` of each text of a file; each text cut to :attr:`window` characters.

        Raises:
            DataError: a file that is not UTF-8, has no text, lacks the text column, or has a row too long to read.
        """
        from datamodules.text_classification import TEXT_TABLE_FORMATS, read_rows

        found = 0
        where = "<stdin>" if path == STDIN else str(path)
        if path.suffix.lower() in TEXT_TABLE_FORMATS:
            check_row_lengths(path)
            for line, row in read_rows(path):
                if self.text_column not in row:
                    raise DataError(
                        f"{path}, line {line}: no column '{self.text_column}' (the text column the model was trained "
                        f"on); it has {sorted(row)}"
                    )
                text, label = row[self.text_column], row.get(self.label_column)
                if text is not None and str(text).strip():
                    found += 1
                    yield f"{path}:{line}", str(text)[: self.window], None if label is None else str(label).strip()
        else:
            with contextlib.ExitStack() as stack:
                stream = self._stdin_from_start() if path == STDIN else stack.enter_context(open(path, "rb"))
                for number, line, has_text in text_lines(stream, where, self.window):
                    if has_text:  # as training, which skips texts that are only blanks
                        found += 1
                        yield f"{where}:{number}", line, None
        if not found:
            if path.suffix.lower() in TEXT_TABLE_FORMATS:
                raise DataError(f"{where} has no rows with text in column '{self.text_column}': nothing to predict")
            what = "is empty" if path != STDIN and path.stat().st_size == 0 else "has only blank lines"
            raise DataError(f"{where} {what}: nothing to predict; pass files with one text per line")

    def _stdin_from_start(self) -> BinaryIO:
        """Standard input from its start: its copy while :meth:`batches` reads the texts twice, else the stream."""
        if self._stdin is None:
            return sys.stdin.buffer
        self._stdin.seek(0)
        return self._stdin

    def encode(self, ids: list[str], texts: list[str]) -> np.ndarray:
        """``(N, block_size)`` int64 ids, as training encoded its texts (tokenized in parts of at most
        :data:`ENCODE_CHARS` characters)."""
        parts, start = [], 0
        while start < len(texts):
            stop, size = start + 1, len(texts[start])
            while stop < len(texts) and size + len(texts[stop]) <= ENCODE_CHARS:
                size += len(texts[stop])
                stop += 1
            parts.append(self._encode(ids[start:stop], texts[start:stop]))
            start = stop
        return np.concatenate(parts) if parts else np.zeros((0, self.block_size), dtype=np.int64)

    def _encode(self, ids: list[str], texts: list[str]) -> np.ndarray:
        from datamodules.text_classification import encode_texts

        try:
            return encode_texts(self.tokenizer, [t[: self.window] for t in texts], self.block_size).numpy()
        except ValueError:  # a char tokenizer meets an unseen character: name the text
            for id_, text in zip(ids, texts, strict=True):
                try:
                    self.tokenizer.encode(text[: self.window])
                except ValueError as err:
                    raise DataError(f"{id_}: {err}; the model cannot read this text") from None
            raise

    def batches(self, files: list[Path], batch_size: int, on_skip: OnSkip) -> Iterator[Batch]:
        with contextlib.ExitStack() as stack:
            if STDIN in files:  # read twice: copied into a temporary file (in memory while small)
                self._stdin = stack.enter_context(tempfile.SpooledTemporaryFile(max_size=8 * READ_CHUNK))
                shutil.copyfileobj(sys.stdin.buffer, self._stdin, READ_CHUNK)
                stack.callback(setattr, self, "_stdin", None)
            # Every file is read once before the first forward pass: a bad file ends the command before any work is
            # done, and the known labels are a column of every batch or of none. Nothing is kept from this pass.
            labelled = False
            for path in files:
                for _, _, label in self.texts(path):
                    labelled = labelled or label is not None
            chunk: list[tuple[str, str, str | None]] = []
            for path in files:
                for item in self.texts(path):
                    chunk.append(item)
                    if len(chunk) == batch_size:
                        yield self._batch(chunk, labelled)
                        chunk = []
            if chunk:
                yield self._batch(chunk, labelled)

    def _batch(self, items: list[tuple[str, str, str | None]], labelled: bool) -> Batch:
        ids, texts, labels = (list(column) for column in zip(*items, strict=True))
        batch = Batch(self.encode(ids, texts), {"id": ids})
        if labelled:
            batch.ids["true_label"] = labels
        return batch
