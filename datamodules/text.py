"""Text corpora for language models: read once, split by document, tokenized once into memory-mapped token files.

A corpus is a file, a folder of files, a file downloaded from a URL, or (the offline default) the running Python's
own standard library source. :class:`TextDataModule`

1. splits it by document (file) into train/val/test, deterministically from ``seed`` (a single-file corpus is split
   by position instead: the first part trains, the last ones validate and test, as nanoGPT splits Shakespeare);
2. trains the tokenizer on the training split (``bpe``) or the corpus's characters (``char``), or takes a saved one;
3. tokenizes each split once into ``<cache_dir>/<corpus>-<key>/{train,val,test}.bin`` (``uint16``, or ``int32`` for
   vocabularies over 65,536; nanoGPT's ``train.bin``), keyed on the corpus files (names, sizes, modification
   times), the tokenizer and the split, so a changed corpus or setting builds a new cache and an unchanged one is
   reused; a damaged cache (a file truncated, emptied or overwritten, ``meta.json`` unreadable) is found by its sizes
   and CRC-32 checksums, once per process, and rebuilt with a warning naming the file;
4. serves training batches as random contiguous windows of ``block_size + 1`` tokens gathered on the training
   device, and evaluation batches as fixed, non-overlapping blocks, so validation loss is exact and repeatable.

The token files are memory-mapped: with ``on_device: false`` they stay on disk and only the gathered windows are
read, so corpora larger than memory work.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import sys
import sysconfig
import tempfile
import urllib.request
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from datamodules.base import DataModule
from datamodules.tokenizer import (
    Tokenizer,
    TokenizerKind,
    UnknownCharacterError,
    describe_characters,
    missing_characters,
    read_tokenizer,
    tokenizer_from_dict,
    train_tokenizer,
)
from fileio.errors import DataError

SPLITS = ("train", "val", "test")
#: Packages of the standard-library corpus held out of pre-training by default (a fine-tuning target).
STDLIB_HOLDOUT = ("email",)
#: Folders of the standard library that are not library source: tests, bundled third-party code, caches.
_STDLIB_SKIP = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "ensurepip"}
#: Bumped when the cache layout or the tokenization changes, so old caches are not reused (2: checksums in meta).
_CACHE_VERSION = 2
#: Bytes read from the start of each file of a folder corpus to tell text files from binary ones.
_SNIFF_BYTES = 8192
#: Token caches found intact in this process, by their files' names, sizes and modification times: each cache is
#: checksummed once per process.
_intact: set[tuple[str, tuple[tuple[str, int, int], ...]]] = set()
# Between documents of a split: a blank line, so files do not run into each other mid-line.
_DOC_SEPARATOR = "\n\n"


@dataclass
class Corpus:
    """Where the text comes from: its documents, in a fixed order, read lazily.

    Attributes:
        name: Short name, for the cache folder and messages (``stdlib-py3.11``, ``input``, ``my_texts``).
        root: The file, or the folder document names are relative to.
        documents: Document names (paths relative to ``root``; ``""`` for a single-file corpus).
    """

    name: str
    root: Path
    documents: list[str]
    #: Files of a folder corpus left out because they are not UTF-8 text (images, archives, compiled files).
    skipped: list[str] = field(default_factory=list)

    def path(self, doc: str) -> Path:
        return self.root / doc if doc else self.root

    def read(self, doc: str) -> str | None:
        """The document's text, or ``None`` when it is not UTF-8 text (binary files in a folder are skipped)."""
        try:
            return self.path(doc).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            return None
        except OSError as err:
            raise DataError(f"cannot read {self.path(doc)}: {err.strerror or err}") from None

    def fingerprint(self) -> list[tuple[str, int, int]]:
        """``(name, size, modification time)`` of every document: what the token cache is keyed on."""
        out = []
        for doc in self.documents:
            st = self.path(doc).stat()
            out.append((doc, st.st_size, st.st_mtime_ns))
        return out


class TextDataModule(DataModule):
    """Language-modelling data: ``(x, y)`` batches of ``(B, block_size)`` token ids, ``y`` shifted by one.

    The corpus is ``path`` when given, else the file at ``url`` (downloaded into ``data_dir`` in
    :meth:`prepare_data`), else the Python standard library's source (test folders and the packages in ``exclude``
    left out). ``vocab_size`` and ``block_size`` are linked into the model by the launcher.

    Args:
        path: A text file or a folder of text files (read recursively, see ``glob``).
        url: Where to download a single-file corpus, when ``path`` is not given; it is stored as
            ``data_dir/<folder of the URL>/<file name>`` (Tiny Shakespeare: ``data/tinyshakespeare/input.txt``).
        data_dir: Folder for downloaded corpora and, by default, the token cache.
        download: Download a missing ``url`` file in :meth:`prepare_data`.
        glob: Files of a folder corpus, relative to it (e.g. ``**/*.py``); hidden files and files that are not
            UTF-8 text are skipped.
        include: Keep only documents under these top-level names (``email`` keeps ``email/...`` and ``email.py``).
        exclude: Leave out documents under these top-level names; default: nothing for ``path``/``url``, and
            the held-out package ``email`` for the standard library.
        tokenizer: ``byte``, ``char`` or ``bpe``.
        bpe_vocab_size: Vocabulary size of a ``bpe`` tokenizer (``byte`` has 256, ``char`` the corpus's
            characters); the model's ``vocab_size`` is linked from :attr:`vocab_size`, whatever the tokenizer.
        tokenizer_path: Use this saved tokenizer instead of fitting one: a run folder's ``tokenizer.json``, a
            checkpoint of a language model, or a ``tokenizers`` library ``tokenizer.json`` (GPT-2's).
        block_size: Tokens per training window (the model's context length).
        batch_size: Windows per training batch.
        eval_batch_size: Blocks per evaluation batch (default ``2 * batch_size``).
        val_fraction: Share of the corpus's bytes held out for validation.
        test_fraction: Share held out for testing; ``0`` tests on the validation split (nanoGPT's 90/10 split).
        val_blocks: Evaluate validation on this many blocks spread evenly over the split (the same ones every
            time) instead of all of them; the test split is always evaluated whole.
        seed: Seed of the document split and of the training windows.
        on_device: Hold each split's tokens on the training device and gather windows there; ``false`` keeps them
            memory-mapped on disk (corpora larger than memory).
        cache_dir: Folder of token caches (default ``data_dir/tokens``).
    """

    def __init__(
        self,
        path: str | None = None,
        url: str | None = None,
        data_dir: str = "data/",
        download: bool = True,
        glob: str = "**/*",
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        tokenizer: TokenizerKind = "bpe",
        bpe_vocab_size: int = 4096,
        tokenizer_path: str | None = None,
        block_size: int = 256,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        val_blocks: int | None = None,
        seed: int = 0,
        on_device: bool = True,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if tokenizer not in ("byte", "char", "bpe"):
            raise ValueError(f"data.tokenizer must be one of byte, char, bpe; got {tokenizer!r}")
        if tokenizer == "bpe" and bpe_vocab_size < 257:
            raise ValueError(f"data.bpe_vocab_size must be above 256 (the bytes, then merges), got {bpe_vocab_size}")
        if block_size < 1 or batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(
                f"data.block_size, batch_size and eval_batch_size must be >= 1, got {block_size}, {batch_size}, "
                f"{eval_batch_size}"
            )
        if not (0 < val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(
                "data.val_fraction must be in (0, 1), data.test_fraction in [0, 1), and together below 1; got "
                f"{val_fraction} and {test_fraction}"
            )
        if val_blocks is not None and val_blocks < 1:
            raise ValueError(f"data.val_blocks must be >= 1 (or null for all), got {val_blocks}")
        self.path, self.url, self.data_dir, self.download = path, url, Path(data_dir), download
        self.glob, self.include, self.exclude = glob, include, exclude
        self.tokenizer_kind, self.bpe_vocab_size, self.tokenizer_path = tokenizer, bpe_vocab_size, tokenizer_path
        self.block_size, self.batch_size = block_size, batch_size
        self.eval_batch_size = eval_batch_size or 2 * batch_size
        self.val_fraction, self.test_fraction, self.val_blocks = val_fraction, test_fraction, val_blocks
        self.seed, self.on_device = seed, on_device
        self.cache_dir = Path(cache_dir) if cache_dir else self.data_dir / "tokens"
        self._tokenizer: Tokenizer | None = None
        #: A tokenizer that must be used (from ``tokenizer_path`` or a resumed checkpoint).
        self._fixed_tokenizer: Tokenizer | None = None
        self._cache: Path | None = None
        self._corpus: Corpus | None = None
        self.meta: dict[str, Any] = {}
        self.tokens: dict[str, np.ndarray] = {}
        self._device_tokens: dict[str, Tensor] = {}

    def __str__(self) -> str:
        # Lightning's own __str__ builds every dataloader to report their sizes: far too much work for a name.
        source = self.path or self.url or "the Python standard library"
        return f"{type(self).__name__}({source}, tokenizer={self.tokenizer_kind}, block_size={self.block_size})"

    # -- what the model is linked to -----------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Rows the model's embedding needs: 256 for bytes, the BPE size, the corpus's characters, or the size of
        the saved tokenizer (``tokenizer_path``)."""
        if self.tokenizer_path is not None:
            self._fixed_tokenizer = self._fixed_tokenizer or self._read_tokenizer_path()
            return self._fixed_tokenizer.vocab_size
        if self.tokenizer_kind == "byte":
            return 256
        if self.tokenizer_kind == "bpe":
            return self.bpe_vocab_size  # an upper bound: a small corpus may yield fewer merges
        return self.tokenizer.vocab_size  # char: the corpus decides, so the data is prepared now

    @property
    def tokenizer(self) -> Tokenizer:  # type: ignore[override]
        """The tokenizer of this corpus and setting (prepared and cached on first use)."""
        if self._tokenizer is None:
            self.prepare_data()
            self._load_meta()
        return self._tokenizer

    # -- corpus ------------------------------------------------------------------------------------------------------
    def url_file(self) -> Path:
        """Where the ``url`` corpus is stored: ``data_dir/<folder of the URL>/<file name>``."""
        parts = [p for p in self.url.split("?")[0].split("/") if p]
        folder = parts[-2] if len(parts) >= 2 else "text"
        return self.data_dir / folder / parts[-1]

    def corpus(self) -> Corpus:
        """The corpus's documents: names, the files of a folder that are not UTF-8 text left out (each file's first
        bytes are read to tell); listed once per datamodule.

        Raises:
            DataError: a missing path or URL file, or a folder without text files.
        """
        if self._corpus is None:
            self._corpus = self._list_corpus()
            if self._corpus.skipped:
                skipped, total = self._corpus.skipped, len(self._corpus.skipped) + len(self._corpus.documents)
                warnings.warn(
                    f"skipped {len(skipped)} of the {total} files in {self._corpus.root} that are not UTF-8 text "
                    f"({describe_files(skipped)}); the corpus is the other {total - len(skipped)}",
                    stacklevel=2,
                )
        return self._corpus

    def _list_corpus(self) -> Corpus:
        if self.path is not None:
            root = Path(self.path)
            if not root.exists():
                raise DataError(f"text corpus not found: '{root}' (data.path); pass a text file or a folder of them")
            name = root.stem if root.is_file() else root.resolve().name
            exclude = self.exclude or []
        elif self.url is not None:
            root = self.url_file()
            if not root.is_file():
                why = " (data.download is false)" if not self.download else ""
                raise DataError(
                    f"text corpus missing: {root}{why}. Download {self.url} to that file, or rerun with "
                    "data.download true where the network is reachable"
                )
            name, exclude = root.parent.name or root.stem, self.exclude or []
        else:
            root = Path(sysconfig.get_paths()["stdlib"])
            name = f"stdlib-py{sys.version_info[0]}.{sys.version_info[1]}"
            exclude = list(STDLIB_HOLDOUT) if self.exclude is None else self.exclude
        if root.is_file():
            return Corpus(name, root, [""])
        pattern = self.glob if self.path is not None else "**/*.py"
        docs, skipped = [], []
        for rel in _files(root, pattern, skip=_STDLIB_SKIP if self.path is None else set()):
            top = rel.parts[0].removesuffix(".py")
            if (self.include and top not in self.include) or top in exclude:
                continue
            # Before splitting: a binary file would count its bytes towards a split it adds no text to.
            (docs if _is_text(root / rel) else skipped).append(rel.as_posix())
        if not docs:
            raise DataError(
                f"no text files in {root} matching '{pattern}'"
                + (f" under {self.include}" if self.include else "")
                + (f" ({len(skipped)} file(s) that are not UTF-8 text skipped)" if skipped else "")
                + "; pass a folder of text files (data.path) or another data.glob"
            )
        return Corpus(name, root, docs, skipped)

    def split_documents(self, corpus: Corpus) -> dict[str, list[str]]:
        """Documents of each split: whole files drawn at random (by ``seed``) until each held-out split has its
        share of the corpus's bytes; the rest train. A single-file corpus is split by position in
        :meth:`split_texts`."""
        if len(corpus.documents) == 1:
            return {s: corpus.documents for s in SPLITS}
        sizes = {d: corpus.path(d).stat().st_size for d in corpus.documents}
        order = list(corpus.documents)
        random.Random(self.seed).shuffle(order)
        total = sum(sizes.values())
        parts: dict[str, list[str]] = {s: [] for s in SPLITS}
        held = [("val", self.val_fraction), ("test", self.test_fraction)]
        for split, fraction in held:
            taken = 0
            while fraction > 0 and order and taken < fraction * total:
                doc = order.pop()
                parts[split].append(doc)
                taken += sizes[doc]
        parts["train"] = order
        empty = [s for s in SPLITS if not parts[s] and (s != "test" or self.test_fraction > 0)]
        if empty:
            raise DataError(
                f"corpus {corpus.root} has {len(corpus.documents)} documents: too few to split by document into "
                f"train, val{' and test' if self.test_fraction else ''} (the {', '.join(empty)} split would be "
                "empty); add documents or join them into one file (a single file is split by position)"
            )
        return {s: sorted(docs) for s, docs in parts.items()}

    def split_texts(self, corpus: Corpus, split: str, docs: list[str]) -> Iterator[str]:
        """The texts of one split, document by document."""
        if len(corpus.documents) == 1:
            text = corpus.read(corpus.documents[0])
            if text is None:
                raise DataError(f"{corpus.path(corpus.documents[0])} is not UTF-8 text")
            n = len(text)
            # nanoGPT's cut: the first int(0.9 * n) characters train.
            cuts = {"train": 0, "val": int(n * (1 - self.val_fraction - self.test_fraction)), "test": None, None: n}
            cuts["test"] = int(n * (1 - self.test_fraction)) if self.test_fraction else n
            following = {"train": "val", "val": "test", "test": None}
            yield text[cuts[split] : cuts[following[split]]]
            return
        for i, doc in enumerate(docs):
            text = corpus.read(doc)
            if text is None:
                continue
            yield text if i == 0 else _DOC_SEPARATOR + text

    # -- preparation (local rank 0), cached ----------------------------------------------------------------------------
    def _tokenizer_spec(self) -> Any:
        fixed = self._fixed_tokenizer or self._read_tokenizer_path()
        if fixed is not None:
            self._fixed_tokenizer = fixed
            return {"fixed": fixed.fingerprint()}
        size = self.bpe_vocab_size if self.tokenizer_kind == "bpe" else None
        return {"kind": self.tokenizer_kind, "vocab_size": size}

    def _read_tokenizer_path(self) -> Tokenizer | None:
        return read_tokenizer(self.tokenizer_path) if self.tokenizer_path is not None else None

    def cache_folder(self) -> Path:
        """The cache folder of this corpus, tokenizer and split: ``cache_dir/<corpus>-<key>``."""
        if self._cache is None:
            corpus = self.corpus()
            key = {
                "version": _CACHE_VERSION,
                "corpus": str(corpus.root.resolve()),
                "files": corpus.fingerprint(),
                "tokenizer": self._tokenizer_spec(),
                "split": [self.val_fraction, self.test_fraction, self.seed],
            }
            digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
            self._cache = self.cache_dir / f"{corpus.name}-{digest}"
        return self._cache

    def prepare_data(self) -> None:
        """Download the ``url`` corpus if missing (and allowed); build the token cache unless an intact one exists
        (a damaged one is rebuilt, with a warning naming the file at fault)."""
        if self.path is None and self.url is not None and not self.url_file().is_file() and self.download:
            _download(self.url, self.url_file())
        folder = self.cache_folder()
        if folder.exists():
            problem = cache_problem(folder)
            if problem is None:
                return
            warnings.warn(f"token cache {problem}; rebuilding the cache from the corpus", stacklevel=2)
            _remove_folder(folder)
        corpus = self.corpus()
        docs = self.split_documents(corpus)
        tokenizer = self._fixed_tokenizer
        if tokenizer is None:
            fit_splits = ("train",) if self.tokenizer_kind == "bpe" else SPLITS
            texts = (t for s in fit_splits for t in self.split_texts(corpus, s, docs[s]))
            tokenizer = train_tokenizer(self.tokenizer_kind, texts, self.bpe_vocab_size)
        dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.int32
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=_mkdir(self.cache_dir)))
        try:
            splits = {}
            for split in SPLITS:
                if split == "test" and self.test_fraction == 0:
                    continue
                texts = self.split_texts(corpus, split, docs[split])
                try:
                    splits[split] = _tokenize_to_file(tokenizer, texts, tmp / f"{split}.bin", dtype)
                except UnknownCharacterError:
                    raise self._unknown_characters(corpus, tokenizer) from None
                splits[split]["documents"] = len(docs[split])
            if sum(s["bytes"] for s in splits.values()) == 0:
                raise DataError(
                    f"the corpus {corpus.root} holds no text (its {len(corpus.documents)} file(s) are empty or not "
                    "UTF-8 text); pass a corpus with text in it"
                )
            meta = {
                "corpus": corpus.name,
                "root": str(corpus.root),
                "tokenizer": tokenizer.to_dict(),
                "dtype": np.dtype(dtype).name,
                "splits": splits,
            }
            (tmp / "meta.json").write_text(json.dumps(meta))
            try:
                os.replace(tmp, folder)
            except OSError:
                if not (folder / "meta.json").is_file():  # another process finished first: use its cache
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _unknown_characters(self, corpus: Corpus, tokenizer: Tokenizer) -> DataError:
        """The error for a corpus with characters the fixed ``char`` tokenizer lacks: which ones, and where first."""
        missing: list[str] = []
        first = ""
        for doc in corpus.documents:
            found = missing_characters(tokenizer, [corpus.read(doc) or ""])
            if found and not first:
                first = str(corpus.path(doc))
            missing = sorted(set(missing) | set(found))
        source = f"data.tokenizer_path {self.tokenizer_path}" if self.tokenizer_path else "the resumed checkpoint"
        where = f"; first in {first}" if len(corpus.documents) > 1 else ""
        return DataError(
            f"the corpus {corpus.root} has {len(missing)} character(s) that the char tokenizer of {source} has no "
            f"token for ({describe_characters(missing)}{where}): a char tokenizer reads only the "
            f"characters of the text it was made from. Use text written with its {tokenizer.vocab_size} characters, "
            "or a model trained with data.tokenizer byte or bpe, which read any text"
        )

    def _load_meta(self) -> None:
        path = self.cache_folder() / "meta.json"
        try:
            self.meta = json.loads(path.read_text())
            self._tokenizer = tokenizer_from_dict(self.meta["tokenizer"])
        except (OSError, ValueError, KeyError, TypeError) as err:  # changed since prepare_data checked it
            raise DataError(
                f"cannot read the token cache {path} ({err}); delete {path.parent} and run again to rebuild it"
            ) from None

    # -- splits --------------------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Memory-map the token files and check every split holds at least one block."""
        if self.tokens:
            return
        if self._tokenizer is None or not self.meta:
            self.prepare_data()
            self._load_meta()
        folder = self.cache_folder()
        dtype = np.dtype(self.meta["dtype"])
        need = self.block_size + 1
        for split, info in self.meta["splits"].items():
            n = int(info["tokens"])
            if n < need:
                raise DataError(
                    f"the {split} split of corpus {self.meta['root']} has {n} tokens, fewer than one block of "
                    f"block_size + 1 = {need}: use a longer corpus, a smaller --data.block_size, or a larger "
                    f"--data.{split}_fraction"
                    if split != "train"
                    else f"the train split of corpus {self.meta['root']} has {n} tokens, fewer than one block of "
                    f"block_size + 1 = {need}: use a longer corpus or a smaller --data.block_size"
                )
            self.tokens[split] = np.memmap(folder / f"{split}.bin", dtype=dtype, mode="r", shape=(n,))
        self.save_tokenizer()

    def _split_tokens(self, split: str) -> Tensor | np.ndarray:
        """A split's tokens: an int32 tensor on the training device, or the memory map with ``on_device: false``."""
        if split == "test" and "test" not in self.tokens:
            split = "val"  # test_fraction 0: the test stage evaluates the validation split
        if not self.on_device:
            return self.tokens[split]
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        cached = self._device_tokens.get(split)
        if cached is None or cached.device != device:
            cached = torch.from_numpy(self.tokens[split].astype(np.int32)).to(device)
            self._device_tokens[split] = cached
        return cached

    def split_info(self, split: str) -> dict[str, int]:
        """Tokens, bytes and documents of a split."""
        self.setup()
        return dict(self.meta["splits"][split])

    # -- loaders -------------------------------------------------------------------------------------------------------
    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> RandomWindows:
        self.setup()
        rank, world = self._rank_world()
        trainer = self.trainer
        tokens = self._split_tokens("train")
        # One "epoch" is as many windows as the split has blocks, shared out over the processes.
        steps = max(1, len(tokens) // (self.batch_size * self.block_size * world))
        return RandomWindows(
            tokens,
            self.block_size,
            self.batch_size,
            steps,
            seed=self.seed,
            rank=rank,
            epoch_fn=(lambda: trainer.current_epoch) if trainer is not None else None,
            world_size=world,
        )

    def _eval_loader(self, split: str, limit: int | None) -> FixedBlocks:
        self.setup()
        rank, world = self._rank_world()
        return FixedBlocks(self._split_tokens(split), self.block_size, self.eval_batch_size, limit, rank, world)

    def val_dataloader(self) -> FixedBlocks:
        return self._eval_loader("val", self.val_blocks)

    def test_dataloader(self) -> FixedBlocks:
        return self._eval_loader("test", None)

    def predict_dataloader(self) -> FixedBlocks:
        return self.test_dataloader()

    def teardown(self, stage: str) -> None:
        self._device_tokens.clear()

    # -- checkpoints: the model keeps the tokenizer (``checkpoint["tokenizer"]``) and hands it back on restore ------
    def use_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Use ``tokenizer``, the checkpoint's, from now on; the splits are re-tokenized if it differs from this one."""
        if self._tokenizer is not None and tokenizer == self._tokenizer:
            return
        self._fixed_tokenizer, self._tokenizer, self._cache, self.meta = tokenizer, None, None, {}
        self.tokens, self._device_tokens = {}, {}
        self.setup()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Checkpoints of earlier versions also kept the tokenizer here (``{"tokenizer": ...}``): it is used as
        :meth:`use_tokenizer` does. This datamodule saves no state of its own now."""
        if state.get("tokenizer"):
            self.use_tokenizer(tokenizer_from_dict(state["tokenizer"]))


class RandomWindows:
    """Training batches: ``batch_size`` windows of ``block_size + 1`` tokens at random offsets, ``(x, y)`` each
    ``(B, block_size)`` int64, gathered where the tokens are (the training device, or the memory map).

    Each epoch draws one stream of random window offsets from ``seed`` and the epoch alone (as many as the split has
    blocks), the same stream whatever the number of processes. Batch ``i`` of the run is the stream's windows
    ``i * B * W`` to ``(i + 1) * B * W`` (``W`` processes, ``B`` windows each), shared out among the processes with
    none repeated: rank ``r`` takes every ``W``-th of them from the ``r``-th on. A run on one process with batches of
    ``B * W`` windows therefore trains on exactly the windows ``W`` processes do together. The position within the
    epoch is saved in checkpoints (:meth:`state_dict`), so a resumed run draws exactly the windows the uninterrupted
    run would have.

    Args:
        tokens: The split's tokens.
        block_size: ``T``.
        batch_size: ``B``, windows per batch and process.
        steps: Batches per epoch and process.
        seed: Seed of the offsets.
        rank: This process's rank.
        world_size: ``W``, the number of processes sharing each batch.
        epoch_fn: Returns the current epoch (the trainer's), so offsets follow resumed runs.
    """

    def __init__(
        self,
        tokens: Tensor | np.ndarray,
        block_size: int,
        batch_size: int,
        steps: int,
        seed: int = 0,
        rank: int = 0,
        epoch_fn=None,
        world_size: int = 1,
    ) -> None:
        self.tokens, self.block_size, self.batch_size, self.steps = tokens, block_size, batch_size, steps
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch_fn = epoch_fn or (lambda: 0)
        self._epoch, self._yielded = 0, 0
        self._resume_from: dict[str, int] | None = None

    def __len__(self) -> int:
        return self.steps

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "batches": self._yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_from = dict(state)

    def offsets(self, epoch: int) -> Tensor:
        """The epoch's stream of window offsets, ``(max(blocks, steps * B * W),)`` int64 on the tokens' device."""
        device = self.tokens.device if isinstance(self.tokens, Tensor) else torch.device("cpu")
        n, T = len(self.tokens), self.block_size
        count = max(n // T, self.steps * self.batch_size * self.world_size)
        gen = torch.Generator(device=device)
        gen.manual_seed((self.seed + 1) * 1_000_003 + epoch * 7919)
        return torch.randint(n - T, (count,), generator=gen, device=device)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch = self.epoch_fn()
        stream = self.offsets(epoch)
        skip = 0
        if self._resume_from is not None and self._resume_from.get("epoch") == epoch:
            skip = int(self._resume_from.get("batches", 0))
        self._resume_from = None
        self._epoch, self._yielded = epoch, skip
        span = torch.arange(self.block_size + 1, device=stream.device)
        per_batch = self.batch_size * self.world_size
        for i in range(skip, self.steps):
            # (B,) offsets: this rank's share of the run's batch i.
            start = stream[i * per_batch + self.rank : (i + 1) * per_batch : self.world_size]
            self._yielded = i + 1
            windows = _gather(self.tokens, start, span)
            yield windows[:, :-1], windows[:, 1:]


class FixedBlocks:
    """Evaluation batches over fixed, non-overlapping blocks: block ``k`` predicts tokens ``k*T + 1 .. (k+1)*T`` from
    the ones before them, so every token of the split after the first (up to the last whole block) is scored once.

    Args:
        tokens: The split's tokens.
        block_size: ``T``.
        batch_size: Blocks per batch.
        limit: Use only this many blocks, spread evenly over the split (always the same ones).
        rank: This process's rank; processes take disjoint, unpadded shares of the blocks.
        world_size: Number of processes.
    """

    def __init__(
        self,
        tokens: Tensor | np.ndarray,
        block_size: int,
        batch_size: int,
        limit: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        count = (len(tokens) - 1) // block_size
        starts = torch.arange(count) * block_size
        if limit is not None and limit < count:
            starts = starts[torch.linspace(0, count - 1, limit).round().long()]
        self.starts = starts[rank::world_size]

    def __len__(self) -> int:
        return -(-len(self.starts) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        device = self.tokens.device if isinstance(self.tokens, Tensor) else torch.device("cpu")
        span = torch.arange(self.block_size + 1, device=device)
        starts = self.starts.to(device)
        for i in range(0, len(starts), self.batch_size):
            blocks = _gather(self.tokens, starts[i : i + self.batch_size], span)
            yield blocks[:, :-1], blocks[:, 1:]


def _gather(tokens: Tensor | np.ndarray, starts: Tensor, span: Tensor) -> Tensor:
    """``(len(starts), len(span))`` int64 windows ``tokens[start + span]``: one indexing op on a tensor, or one
    slice per window from a memory map (only those bytes are read from disk)."""
    if isinstance(tokens, Tensor):
        return tokens[starts[:, None] + span].long()
    n = len(span)
    return torch.from_numpy(np.stack([tokens[s : s + n] for s in starts.tolist()]).astype(np.int64))


def _tokenize_to_file(tokenizer: Tokenizer, texts: Iterator[str], path: Path, dtype: Any) -> dict[str, int]:
    """Write the tokens of ``texts`` to ``path``, tokenized in batches; returns token and byte counts and the
    CRC-32 of the file (what :func:`cache_problem` checks)."""
    tokens = n_bytes = crc = 0
    with open(path, "wb") as f:
        batch: list[str] = []

        def flush() -> None:
            nonlocal tokens, crc
            for ids in tokenizer.encode_batch(batch):
                data = np.asarray(ids, dtype=dtype).tobytes()
                f.write(data)
                crc = zlib.crc32(data, crc)
                tokens += len(ids)
            batch.clear()

        for text in texts:
            batch.append(text)
            n_bytes += len(text.encode("utf-8"))
            if len(batch) >= 64:
                flush()
        flush()
    return {"tokens": tokens, "bytes": n_bytes, "crc32": crc}


def cache_problem(folder: Path) -> str | None:
    """What is wrong with the token cache ``folder`` (naming the file), or ``None`` when it is intact.

    ``meta.json`` must parse and describe a tokenizer, the splits and their sizes; each ``SPLIT.bin`` must hold
    exactly its tokens and match its CRC-32. The checksums are computed once per process per cache (about 0.1 s per
    100 MB); the sizes are checked every time.
    """
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return f"{folder} has no meta.json (an interrupted build?)"
    try:
        meta = json.loads(meta_path.read_text())
        itemsize = np.dtype(meta["dtype"]).itemsize
        splits = {name: (int(info["tokens"]), int(info["crc32"])) for name, info in meta["splits"].items()}
        tokenizer_from_dict(meta["tokenizer"])
        if not {"train", "val"} <= set(splits) <= set(SPLITS) or np.dtype(meta["dtype"]).kind not in "iu":
            raise ValueError("unexpected splits or token type")
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:
        reason = " ".join(str(err).split())[:120] or type(err).__name__
        return f"file {meta_path} is damaged ({type(err).__name__}: {reason})"
    stamps = [("meta.json", *_stamp(meta_path))]
    for name, (tokens, _) in splits.items():
        path = folder / f"{name}.bin"
        if not path.is_file():
            return f"file {path} is missing"
        size, mtime = _stamp(path)
        if size != tokens * itemsize:
            return f"file {path} is damaged ({size} bytes, expected {tokens * itemsize} for {tokens} tokens)"
        stamps.append((path.name, size, mtime))
    key = (str(folder.resolve()), tuple(stamps))
    if key in _intact:
        return None
    for name, (_, crc) in splits.items():
        if _crc32_file(folder / f"{name}.bin") != crc:
            return f"file {folder / f'{name}.bin'} is damaged (its checksum does not match meta.json)"
    _intact.add(key)
    return None


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _crc32_file(path: Path, chunk: int = 1 << 24) -> int:
    crc = 0
    with open(path, "rb") as f:
        while data := f.read(chunk):
            crc = zlib.crc32(data, crc)
    return crc


def _remove_folder(folder: Path) -> None:
    """Remove a damaged cache folder: renamed away first, so no reader ever sees it half deleted."""
    trash = Path(tempfile.mkdtemp(prefix=f".{folder.name}.damaged-", dir=folder.parent))
    with contextlib.suppress(FileNotFoundError):  # another process removed it first
        os.replace(folder, trash)  # onto the new, empty folder
    shutil.rmtree(trash, ignore_errors=True)


def _is_text(path: Path) -> bool:
    """Whether the file looks like UTF-8 text: its first bytes decode and hold no NUL byte (binary formats do).

    A file that cannot be opened counts as text here, so that reading it reports the error."""
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError:
        return True
    if b"\0" in head:
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # a character cut at the end is fine
    except UnicodeDecodeError:
        return False
    return True


def describe_files(names: list[str], limit: int = 3) -> str:
    """``a.jpg, b.png, c.bin`` (and ``... and N more`` past ``limit``): file names for a one-line message."""
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _files(root: Path, pattern: str, skip: set[str]) -> list[Path]:
    """Files under ``root`` matching the glob ``pattern`` (``**/`` spans folders), relative and sorted; hidden files
    and folders, and folders named in ``skip``, are left out without being walked."""
    regex = re.compile(_glob_regex(pattern))
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in skip]
        base = Path(folder).relative_to(root)
        found += [base / n for n in names if not n.startswith(".") and regex.fullmatch((base / n).as_posix())]
    return sorted(found)


def _glob_regex(pattern: str) -> str:
    """A regular expression for a glob pattern: ``**/`` is any number of folders, ``*`` and ``?`` stay in one."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


def _mkdir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _download(url: str, dest: Path) -> None:
    """Fetch ``url`` to ``dest`` atomically (a temporary file, then a rename)."""
    _mkdir(dest.parent)
    tmp = dest.with_name(f".{dest.name}.part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
            shutil.copyfileobj(response, f)
        os.replace(tmp, dest)
    except OSError as err:
        raise DataError(
            f"cannot download {url} to {dest}: {getattr(err, 'reason', None) or err}. Download it by hand to that "
            "file, or pass data.path with a text file you have"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
