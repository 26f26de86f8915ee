"""Text classification data: texts with labels from CSV, TSV or JSON Lines, tokenized into padded id tensors.

:class:`TextClassificationDataModule` reads a ``text`` and a ``label`` column (names configurable), splits the rows
into train/val/test (stratified by class, by ``seed``; or separate files), tokenizes every text once with the
tokenizer of a pre-trained model (``tokenizer_path``: a zerotune checkpoint, or a Hugging Face model's own
``tokenizer.json`` with its special tokens) or one fitted to the training texts, truncates it to ``block_size``
tokens and right-pads it with :data:`PAD_ID` (:func:`encode_texts`). Splits are in-memory tensors served by the
shared :class:`~datamodules.base.BatchLoader`, each batch cut to its longest text (dynamic padding) and training
batches drawn by length (``bucket_batches``), so little compute goes to padding. ``data_dir`` reads a folder in
GLUE's layout (``train.tsv``, ``dev.tsv``: ``sentence<TAB>label`` with a header), such as SST-2's.
:meth:`~TextClassificationDataModule.input_spec` describes that encoding for ``experiments.predict``, which
encodes new texts with the same function.

**The offline default** (no ``path``): snippets of the running Python's standard library source, labelled with the
top-level package they come from. Each ``.py`` file of eight packages present in every CPython install
(:data:`STDLIB_PACKAGES`; test folders left out) is cut into consecutive pieces of ``snippet_lines`` lines; pieces
with fewer than ``min_chars`` non-blank characters are dropped, and at most ``max_per_class`` pieces per package are
kept (drawn by ``seed``). The task is "which package does this code come from": real text, real labels, nothing
downloaded. Snippets are split at random, so pieces of one file can fall in different splits: a model can win by
recognizing a package's own vocabulary (its class and function names), not only its style.
"""

from __future__ import annotations

import csv
import json
import random
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from datamodules.base import InMemoryDataModule, Split
from datamodules.tabular import encode_labels
from datamodules.tokenizer import (
    Tokenizer,
    TokenizerKind,
    UnknownCharacterError,
    describe_characters,
    missing_characters,
    read_tokenizer,
    train_tokenizer,
)
from fileio.errors import DataError

#: Id of padding positions (right padding); models treat every negative id as padding.
PAD_ID = -1
#: Packages of the default task: large enough for hundreds of snippets each, and in every CPython install.
STDLIB_PACKAGES = ("asyncio", "email", "http", "importlib", "logging", "multiprocessing", "unittest", "xml")
_SKIP = {"test", "tests", "idle_test", "__pycache__"}
#: Files of texts with labels, one row per text.
TEXT_TABLE_FORMATS = (".csv", ".tsv", ".jsonl")


class TextClassificationDataModule(InMemoryDataModule):
    """``(x, y)`` batches: ``(B, T)`` int64 token ids (``-1`` = padding; ``T`` the batch's longest text, at most
    ``block_size``) and ``(B,)`` class indices.

    Args:
        path: A ``.csv``, ``.tsv`` or ``.jsonl`` file with a header (CSV/TSV) or one JSON object per line; ``null``
            uses ``data_dir`` or, without it, the standard-library snippets described above.
        data_dir: A folder in GLUE's layout: ``train``, ``dev`` (or ``validation``) and optionally a labelled
            ``test`` file, each ``.tsv``, ``.csv`` or ``.jsonl``; dev is the validation split. Without a labelled
            test file (GLUE's test labels are not public) the test stage measures the dev split again, and every
            training row trains. GLUE names the text column ``sentence`` (``text_column: sentence``).
        text_column: Column (key) holding the text.
        label_column: Column (key) holding the label (any string; numbers sort numerically).
        val_path: Separate validation file (same format); default: ``val_fraction`` of ``path``.
        test_path: Separate test file; default: ``test_fraction`` of ``path``.
        val_fraction: Share of each class held out for validation when there is no ``val_path``.
        test_fraction: Share of each class held out for testing when there is no ``test_path``.
        train_per_class: Keep only this many training examples per class (few-shot), drawn by ``seed``.
        tokenizer: ``byte``, ``char`` or ``bpe`` (trained on the training texts) when there is no ``tokenizer_path``.
        bpe_vocab_size: Vocabulary size of a ``bpe`` tokenizer.
        tokenizer_path: The tokenizer of the model being fine-tuned: its checkpoint (``.ckpt``), its run folder, a
            ``tokenizer.json`` (GPT-2's included). Required to fine-tune a pre-trained model.
        block_size: Most tokens per text (special tokens included): longer texts are cut (keeping a pre-trained
            tokenizer's closing token), shorter ones padded.
        bucket_batches: Length bucketing of training batches: each run of this many batches is sorted by length
            before it is cut (see :class:`~datamodules.base.BatchLoader`); 0 draws batches at random.
        packages: Default task only: the standard-library packages to tell apart.
        snippet_lines: Default task only: lines per snippet.
        min_chars: Default task only: fewest non-blank characters a snippet needs.
        max_per_class: Default task only: most snippets kept per package.
        **kwargs: Batch size, seed: see :class:`~datamodules.base.InMemoryDataModule`.
    """

    def __init__(
        self,
        path: str | None = None,
        data_dir: str | None = None,
        text_column: str = "text",
        label_column: str = "label",
        val_path: str | None = None,
        test_path: str | None = None,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        train_per_class: int | None = None,
        tokenizer: TokenizerKind = "bpe",
        bpe_vocab_size: int = 4096,
        tokenizer_path: str | None = None,
        block_size: int = 128,
        bucket_batches: int = 50,
        packages: list[str] = list(STDLIB_PACKAGES),  # noqa: B006
        snippet_lines: int = 12,
        min_chars: int = 120,
        max_per_class: int = 500,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError("data.val_fraction and data.test_fraction must be in [0, 1) and sum to less than 1")
        if (val_path is None and val_fraction == 0) or (test_path is None and test_fraction == 0):
            raise ValueError("data.val_fraction/test_fraction must be positive unless data.val_path/test_path is given")
        if path is not None and data_dir is not None:
            raise ValueError("give data.path or data.data_dir, not both")
        if bucket_batches < 0:
            raise ValueError(f"data.bucket_batches must be >= 0, got {bucket_batches}")
        if block_size < 1 or snippet_lines < 1 or max_per_class < 1:
            raise ValueError("data.block_size, snippet_lines and max_per_class must be >= 1")
        if train_per_class is not None and train_per_class < 1:
            raise ValueError(f"data.train_per_class must be >= 1 (or null for all), got {train_per_class}")
        if tokenizer == "bpe" and bpe_vocab_size < 257:
            raise ValueError(f"data.bpe_vocab_size must be above 256 (the bytes, then merges), got {bpe_vocab_size}")
        self.data_dir = data_dir
        if data_dir is not None:
            path, val_path, test_path = glue_files(Path(data_dir), label_column, val_path, test_path)
        self.path, self.val_path, self.test_path = path, val_path, test_path
        self.bucket_batches = bucket_batches
        self.text_column, self.label_column = text_column, label_column
        self.val_fraction, self.test_fraction, self.train_per_class = val_fraction, test_fraction, train_per_class
        self.tokenizer_kind, self.bpe_vocab_size, self.tokenizer_path = tokenizer, bpe_vocab_size, tokenizer_path
        self.block_size = block_size
        self.input_shape = (block_size,)
        self.packages, self.snippet_lines, self.min_chars = list(packages), snippet_lines, min_chars
        self.max_per_class = max_per_class
        self._texts: dict[str, tuple[list[str], list[str]]] | None = None
        self._tokenizer: Tokenizer | None = None

    def __str__(self) -> str:
        source = self.path or f"standard-library snippets of {len(self.packages)} packages"
        return f"{type(self).__name__}({source}, block_size={self.block_size})"

    # -- what the model is linked to ---------------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:  # type: ignore[override]
        """The labels, sorted (numerically when they are all numbers); class ``i`` is ``class_names[i]``."""
        return encode_labels(self.texts()["train"][1])[1]

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        return len(self.class_names)

    @property
    def vocab_size(self) -> int:
        """Rows the model's embedding needs (the tokenizer's size; for ``bpe`` an upper bound until trained)."""
        if self.tokenizer_path is None and self.tokenizer_kind == "byte":
            return 256
        if self.tokenizer_path is None and self.tokenizer_kind == "bpe":
            return self.bpe_vocab_size
        return self.tokenizer.vocab_size

    @property
    def tokenizer(self) -> Tokenizer:  # type: ignore[override]
        """The given tokenizer (``tokenizer_path``), or one fitted to the training texts."""
        if self._tokenizer is None:
            if self.tokenizer_path is not None:
                self._tokenizer = read_tokenizer(self.tokenizer_path)
            else:
                self._tokenizer = train_tokenizer(self.tokenizer_kind, self.texts()["train"][0], self.bpe_vocab_size)
        return self._tokenizer

    # -- reading -----------------------------------------------------------------------------------------------------
    def texts(self) -> dict[str, tuple[list[str], list[str]]]:
        """``{split: (texts, labels)}``, read and split once."""
        if self._texts is None:
            if self.path is None:
                texts, labels = stdlib_snippets(
                    self.packages, self.snippet_lines, self.min_chars, self.max_per_class, self.seed
                )
            else:
                texts, labels = self.read_file(self.path)
            held = {"val": self.val_path, "test": self.test_path}
            fractions = {s: f for s, f in (("val", self.val_fraction), ("test", self.test_fraction)) if not held[s]}
            parts = stratified_split(labels, fractions, self.seed)
            splits = {s: ([texts[i] for i in idx], [labels[i] for i in idx]) for s, idx in parts.items()}
            for split, file in held.items():
                if file:
                    splits[split] = self.read_file(file)
            if self.train_per_class is not None:
                splits["train"] = _per_class(*splits["train"], self.train_per_class, self.seed)
            unseen = sorted((set(splits["val"][1]) | set(splits["test"][1])) - set(splits["train"][1]))
            if unseen:
                raise DataError(f"label(s) {unseen} appear in validation/test data but never in training data")
            self._texts = splits
        return self._texts

    def read_file(self, path: str) -> tuple[list[str], list[str]]:
        """Texts and labels of a ``.csv``, ``.tsv`` or ``.jsonl`` file; rows with empty text are skipped."""
        file = Path(path)
        if not file.is_file():
            raise DataError(f"text classification file not found: {file}")
        texts, labels = [], []
        for line, row in read_rows(file):
            missing = [c for c in (self.text_column, self.label_column) if c not in row]
            if missing:
                raise DataError(
                    f"{file}, line {line}: no column {missing} (data.text_column / data.label_column); it has "
                    f"{sorted(row)}"
                )
            text, label = row[self.text_column], row[self.label_column]
            if label is None or str(label).strip() == "":
                raise DataError(f"{file}, line {line}: empty label in column '{self.label_column}'")
            if text is not None and str(text).strip():
                texts.append(str(text))
                labels.append(str(label).strip())
        if not texts:
            raise DataError(f"{file} has no rows with text")
        return texts, labels

    def load_splits(self) -> dict[str, Split]:
        names = self.class_names
        index = {name: i for i, name in enumerate(names)}
        splits = {}
        for split, (texts, labels) in self.texts().items():
            try:
                x = encode_texts(self.tokenizer, texts, self.block_size)
            except UnknownCharacterError:
                raise self._unknown_characters(split, texts) from None
            y = torch.tensor([index[label] for label in labels], dtype=torch.long)
            splits[split] = Split(x, y, lengths=(x != PAD_ID).sum(dim=1))
        return splits

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        self.save_tokenizer()

    def _unknown_characters(self, split: str, texts: list[str]) -> DataError:
        """The error for texts with characters the ``char`` tokenizer has no token for (a given one, or the one
        fitted to the training texts meeting a character only the validation or test texts have)."""
        missing = missing_characters(self.tokenizer, texts)
        source = {"val": self.val_path, "test": self.test_path}.get(split) or self.path or "the snippets"
        tokenizer = (
            f"of data.tokenizer_path {self.tokenizer_path}" if self.tokenizer_path else "fitted to the training texts"
        )
        return DataError(
            f"the {split} texts of {source} have {len(missing)} character(s) that the char tokenizer {tokenizer} has "
            f"no token for ({describe_characters(missing)}): a char tokenizer reads only the characters of the text "
            "it was made from. Use data.tokenizer byte or bpe, which read any text"
            + (", or texts written with its characters" if self.tokenizer_path else "")
        )

    # -- what a raw input is, for prediction and export -------------------------------------------------------------
    def input_spec(self) -> dict[str, Any]:
        """Text: how a text becomes the model's ``(block_size,)`` ids (:func:`encode_texts`), and the class names.

        The tokenizer is named by its fingerprint, not copied: the classifier's checkpoints carry it
        (``checkpoint["tokenizer"]``) and so does its ONNX file (``metadata_props`` ``tokenizer``).
        """
        tokenizer = self.tokenizer
        return {
            "kind": "text",
            "shape": [self.block_size],
            "dtype": "int64",
            "block_size": self.block_size,
            "pad_id": PAD_ID,
            "truncation": "the first block_size tokens are kept",
            "padding": "right, with pad_id",
            "tokenizer": {
                "kind": tokenizer.kind,
                "vocab_size": tokenizer.vocab_size,
                "fingerprint": tokenizer.fingerprint(),
            },
            "text_column": self.text_column,
            "label_column": self.label_column,
            "class_names": self.class_names,
        }


def encode_texts(tokenizer: Tokenizer, texts: list[str], block_size: int) -> torch.Tensor:
    """``(N, block_size)`` int64 ids of ``texts``: each cut to ``block_size`` tokens (a pre-trained tokenizer keeps its
    closing special token), right-padded with :data:`PAD_ID`. Training and prediction both encode with this.

    Raises:
        ValueError: a ``char`` tokenizer meets a character outside its alphabet.
    """
    x = torch.full((len(texts), block_size), PAD_ID, dtype=torch.long)
    for i, ids in enumerate(tokenizer.encode_batch(texts, block_size)):
        ids = torch.as_tensor(ids, dtype=torch.long)
        x[i, : len(ids)] = ids
    return x


def glue_files(
    folder: Path, label_column: str, val_path: str | None = None, test_path: str | None = None
) -> tuple[str, str | None, str | None]:
    """The training, validation and (labelled) test files of a folder in GLUE's layout; given paths win.

    Raises:
        DataError: no such folder, or no training or validation file in it.
    """
    if not folder.is_dir():
        raise DataError(f"data.data_dir '{folder}' is not a folder; pass one holding train.tsv and dev.tsv")

    def find(*stems: str) -> Path | None:
        files = (folder / f"{stem}{ext}" for stem in stems for ext in TEXT_TABLE_FORMATS)
        return next((f for f in files if f.is_file()), None)

    train, val, test = find("train"), find("dev", "validation", "val"), find("test")
    if train is None or (val is None and val_path is None):
        raise DataError(
            f"data.data_dir '{folder}' needs a train and a dev (or validation) file ({', '.join(TEXT_TABLE_FORMATS)})"
            f"; it has {sorted(p.name for p in folder.iterdir())[:8]}"
        )
    if test is not None:  # GLUE's test files are unlabelled: held out of training, never read as a test split
        test = test if label_column in next((row for _, row in read_rows(test)), {}) else None
    val_path = val_path or str(val)
    return str(train), val_path, test_path or (str(test) if test else val_path)


def read_rows(file: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` of each row of a ``.csv``, ``.tsv`` (with a header) or ``.jsonl`` file.

    Raises:
        DataError: another format, a file that is not UTF-8, malformed CSV or a line that is not a JSON object.
    """
    suffix = file.suffix.lower()
    if suffix not in TEXT_TABLE_FORMATS:
        raise DataError(f"{file}: unknown format '{suffix}'; use a .csv, .tsv or .jsonl file")
    try:
        with open(file, newline="", encoding="utf-8-sig") as f:
            yield from _json_rows(f, file) if suffix == ".jsonl" else _csv_rows(f, "\t" if suffix == ".tsv" else ",")
    except UnicodeDecodeError as err:
        raise DataError(f"{file} is not UTF-8 text: {err.reason}") from None
    except csv.Error as err:
        raise DataError(f"{file} is malformed: {err}") from None


def _csv_rows(f: Any, delimiter: str):
    reader = csv.DictReader(f, delimiter=delimiter, strict=True)
    for row in reader:
        yield reader.line_num, row


def _json_rows(f: Any, file: Path):
    for line, raw in enumerate(f, start=1):
        if raw.strip():
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as err:
                raise DataError(f"{file}, line {line} is not JSON: {err.msg}") from None
            if not isinstance(row, dict):
                raise DataError(f"{file}, line {line}: expected a JSON object with text and label keys")
            yield line, row


def stratified_split(labels: list[str], fractions: dict[str, float], seed: int) -> dict[str, list[int]]:
    """Row indices of ``train`` and each held-out split: every class shuffled by ``seed`` and cut by ``fractions``.

    Raises:
        DataError: when a class has too few rows to give each split one.
    """
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    rng = random.Random(seed)
    parts: dict[str, list[int]] = {"train": [], **{s: [] for s in fractions}}
    for label, rows in sorted(by_class.items()):
        rng.shuffle(rows)
        if len(rows) < len(fractions) + 1:
            raise DataError(f"class '{label}' has {len(rows)} row(s): too few to split into {['train', *fractions]}")
        start = 0
        for split, fraction in fractions.items():
            n = max(1, round(fraction * len(rows)))
            parts[split] += rows[start : start + n]
            start += n
        parts["train"] += rows[start:]
    return {s: sorted(idx) for s, idx in parts.items()}


def _per_class(texts: list[str], labels: list[str], k: int, seed: int) -> tuple[list[str], list[str]]:
    order = list(range(len(texts)))
    random.Random(seed + 1).shuffle(order)
    taken: dict[str, int] = {}
    keep = []
    for i in order:
        if taken.get(labels[i], 0) < k:
            taken[labels[i]] = taken.get(labels[i], 0) + 1
            keep.append(i)
    short = {label: n for label, n in taken.items() if n < k}
    if short:
        raise DataError(f"data.train_per_class={k}, but some classes have fewer training rows: {short}")
    keep.sort()
    return [texts[i] for i in keep], [labels[i] for i in keep]


def stdlib_snippets(
    packages: list[str], snippet_lines: int, min_chars: int, max_per_class: int, seed: int
) -> tuple[list[str], list[str]]:
    """Snippets of ``snippet_lines`` lines of each package's ``.py`` files and the package they come from.

    Raises:
        DataError: for a package missing from this Python, or one with no snippet long enough.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    texts, labels = [], []
    for package in packages:
        folder = root / package
        files = sorted(p for p in folder.rglob("*.py") if not _SKIP & set(p.relative_to(root).parts))
        if not files:
            raise DataError(f"data.packages: '{package}' is not a package of this Python's standard library ({root})")
        pieces = []
        for file in files:
            lines = file.read_text(encoding="utf-8", errors="replace").splitlines()
            for start in range(0, len(lines), snippet_lines):
                piece = "\n".join(lines[start : start + snippet_lines])
                if sum(not c.isspace() for c in piece) >= min_chars:
                    pieces.append(piece)
        if not pieces:
            raise DataError(f"data.packages: '{package}' has no snippet of {min_chars} or more characters")
        random.Random(f"{seed}-{package}").shuffle(pieces)
        texts += pieces[:max_per_class]
        labels += [package] * len(pieces[:max_per_class])
    return texts, labels
