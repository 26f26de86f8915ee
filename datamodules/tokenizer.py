"""Tokenizers for language models: bytes, characters, and byte-level BPE trained with the ``tokenizers`` library.

Every tokenizer turns text into integer ids and back exactly, knows its vocabulary size and how many bytes of UTF-8
text each token stands for (for bits per byte), and serializes to plain data (:meth:`Tokenizer.to_dict`: strings,
numbers, lists), which is what checkpoints and run folders store. A checkpoint therefore loads with
``weights_only=True`` and still brings its tokenizer along.

* ``byte``: the 256 byte values, no training; any text, any language.
* ``char``: the characters of the corpus, one id each (nanoGPT's ``shakespeare_char``).
* ``bpe``: byte-level BPE (GPT-2's scheme) trained on the training split, with a chosen vocabulary size; any text
  round-trips exactly, since unseen characters fall back to their bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fileio.errors import DataError
from fileio.hub import resolve_source

TokenizerKind = Literal["byte", "char", "bpe"]


class UnknownCharacterError(ValueError):
    """A ``char`` tokenizer met a character outside its alphabet; the character is :attr:`char`."""

    def __init__(self, message: str, char: str) -> None:
        super().__init__(message)
        self.char = char


class Tokenizer:
    """Text to ids and back; subclasses implement the methods below."""

    kind: str = ""

    @property
    def vocab_size(self) -> int:
        """Number of distinct token ids (ids are ``0 .. vocab_size - 1``)."""
        raise NotImplementedError

    def encode(self, text: str) -> np.ndarray:
        """Token ids of ``text``, a 1-D integer array."""
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str], max_length: int | None = None) -> list[np.ndarray]:
        """Token ids of several texts (faster than one by one where the backend batches), each cut to its first
        ``max_length`` tokens when given."""
        return [self.encode(t)[:max_length] for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``; incomplete or invalid UTF-8 byte sequences become U+FFFD."""
        raise NotImplementedError

    def token_bytes(self) -> list[int]:
        """UTF-8 bytes each token id stands for, indexed by id."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """Plain data that :func:`tokenizer_from_dict` turns back into an equal tokenizer."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A short hash of :meth:`to_dict`: equal for equal tokenizers."""
        text = json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class ByteTokenizer(Tokenizer):
    """One token per byte of the UTF-8 encoding: 256 ids, nothing to train."""

    kind = "byte"

    @property
    def vocab_size(self) -> int:
        return 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def token_bytes(self) -> list[int]:
        return [1] * 256

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "byte"}


class CharTokenizer(Tokenizer):
    """One token per character of a fixed alphabet (the corpus's characters, sorted).

    Args:
        chars: The alphabet; id ``i`` is ``chars[i]``.
    """

    kind = "char"

    def __init__(self, chars: str) -> None:
        if not chars or len(set(chars)) != len(chars):
            raise ValueError("a char tokenizer needs a non-empty alphabet without repeated characters")
        self.chars = chars
        self._ids = {c: i for i, c in enumerate(chars)}

    @classmethod
    def train(cls, texts: Iterable[str]) -> CharTokenizer:
        """The sorted set of characters in ``texts``."""
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        return cls("".join(sorted(seen)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        try:
            return np.fromiter((self._ids[c] for c in text), dtype=np.int32, count=len(text))
        except KeyError as err:
            raise UnknownCharacterError(
                f"character {err.args[0]!r} is not in this char tokenizer's alphabet of {len(self.chars)} characters "
                "(the characters of its training corpus)",
                err.args[0],
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def token_bytes(self) -> list[int]:
        return [len(c.encode("utf-8")) for c in self.chars]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "char", "chars": self.chars}


class BPETokenizer(Tokenizer):
    """Byte-level BPE (GPT-2's scheme) of the ``tokenizers`` library.

    Args:
        spec: The tokenizer in the ``tokenizers`` library's JSON format (``Tokenizer.to_str()``): one trained here,
            or a downloaded ``tokenizer.json`` such as GPT-2's.
    """

    kind = "bpe"

    def __init__(self, spec: str) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self.spec = spec
        self._tok = HFTokenizer.from_str(spec)
        # A BPE model adds tokens by merging; ids of tokens the library adds on top (special tokens) come last.
        self._size = self._tok.get_vocab_size(with_added_tokens=True)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        """Train a byte-level BPE of at most ``vocab_size`` tokens (256 bytes plus merges) on ``texts``."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        if vocab_size < 257:
            raise ValueError(f"a BPE vocabulary needs more than the 256 byte tokens, got vocab_size {vocab_size}")
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer)
        return cls(tok.to_str())

    @property
    def vocab_size(self) -> int:
        return self._size

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text).ids, dtype=np.int32)

    def encode_batch(self, texts: Sequence[str], max_length: int | None = None) -> list[np.ndarray]:
        return [np.asarray(e.ids[:max_length], dtype=np.int32) for e in self._tok.encode_batch_fast(list(texts))]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_bytes(self) -> list[int]:
        # A byte-level token's string spells one byte per character; added (special) tokens stand for no text.
        added = {t.content for t in self._tok.get_added_tokens_decoder().values()}
        tokens = [self._tok.id_to_token(i) or "" for i in range(self._size)]
        return [0 if t in added else len(t) for t in tokens]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "bpe", "tokenizer": json.loads(self.spec)}


class PretrainedTokenizer(BPETokenizer):
    """A pre-trained model's own ``tokenizer.json`` (WordPiece, byte-level BPE or Unigram, through ``tokenizers``):
    its normalizer (lower-casing, accents), its vocabulary and its special tokens, added as the model was trained
    (``[CLS] text [SEP]``, ``<s> text </s>``).

    Padding and truncation settings stored in the file are switched off: zerotune pads per batch (to the longest
    text, not to a fixed length) and truncates with :meth:`encode_batch`'s ``max_length``, which keeps the closing
    special token.

    Args:
        spec: The ``tokenizer.json`` text.
        special_tokens: Role -> token (``cls_token: [CLS]``, ``pad_token: [PAD]`` ...) from the model folder's
            ``special_tokens_map.json``; by default the file's special tokens whose text names a role.
    """

    kind = "pretrained"

    def __init__(self, spec: str, special_tokens: Mapping[str, str] | None = None) -> None:
        super().__init__(spec)
        self._tok.no_padding()
        self._tok.no_truncation()
        added = [t.content for t in self._tok.get_added_tokens_decoder().values() if t.special]
        if special_tokens is None:
            roles = {"cls": ("[CLS]", "<s>"), "sep": ("[SEP]", "</s>"), "pad": ("[PAD]", "<pad>"),
                     "mask": ("[MASK]", "<mask>"), "unk": ("[UNK]", "<unk>")}  # fmt: skip
            special_tokens = {f"{r}_token": t for r, names in roles.items() for t in names if t in added}
        self.special_tokens = {role: str(token) for role, token in special_tokens.items() if isinstance(token, str)}

    @property
    def special_ids(self) -> dict[str, int]:
        """Role -> token id of each special token (``pad_token: 0`` ...)."""
        ids = {role: self._tok.token_to_id(token) for role, token in self.special_tokens.items()}
        return {role: i for role, i in ids.items() if i is not None}

    def encode_batch(self, texts: Sequence[str], max_length: int | None = None) -> list[np.ndarray]:
        """Ids of each text with the model's special tokens, at most ``max_length`` of them in all."""
        if max_length is None:
            return super().encode_batch(texts)
        self._tok.enable_truncation(max_length)
        try:
            return super().encode_batch(texts, max_length)
        finally:
            self._tok.no_truncation()

    def token_bytes(self) -> list[int]:
        # Not byte-level: a token's text (WordPiece's "##" continuation marks left out) stands for its UTF-8 bytes.
        special = {t.content for t in self._tok.get_added_tokens_decoder().values() if t.special}
        tokens = [self._tok.id_to_token(i) or "" for i in range(self._size)]
        return [0 if t in special else len(t.removeprefix("##").encode("utf-8")) for t in tokens]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "pretrained", "tokenizer": json.loads(self.spec), "special_tokens": dict(self.special_tokens)}


def is_pretrained_spec(data: Mapping[str, Any]) -> bool:
    """Whether a ``tokenizers`` library ``tokenizer.json`` is a pre-trained model's (anything but the bare byte-level
    BPE that GPT-2 ships and zerotune trains): another model, or special tokens its post-processor adds."""
    model = data.get("model") if isinstance(data.get("model"), Mapping) else {}
    post = data.get("post_processor") if isinstance(data.get("post_processor"), Mapping) else {}
    return model.get("type", "BPE") != "BPE" or post.get("type") not in (None, "ByteLevel")


def tokenizer_from_dict(data: dict[str, Any]) -> Tokenizer:
    """The tokenizer :meth:`Tokenizer.to_dict` described; also accepts a ``tokenizers`` library ``tokenizer.json``.

    Raises:
        DataError: for data that describes no known tokenizer, or a malformed one (a repeated or empty alphabet, a
            BPE description the ``tokenizers`` library rejects).
    """
    kind = data.get("kind") if isinstance(data, dict) else None
    try:
        if kind == "byte":
            return ByteTokenizer()
        if kind == "char" and isinstance(data.get("chars"), str):
            return CharTokenizer(data["chars"])
        if kind == "bpe" and isinstance(data.get("tokenizer"), dict):
            return BPETokenizer(json.dumps(data["tokenizer"]))
        if kind == "pretrained" and isinstance(data.get("tokenizer"), dict):
            return PretrainedTokenizer(json.dumps(data["tokenizer"]), data.get("special_tokens"))
        if isinstance(data, dict) and isinstance(data.get("model"), dict):  # the tokenizers library's own format
            return (PretrainedTokenizer if is_pretrained_spec(data) else BPETokenizer)(json.dumps(data))
    except Exception as err:  # the tokenizers library raises a bare Exception for a description it cannot build
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise DataError(f"a malformed {kind or 'bpe'} tokenizer ({reason})") from None
    raise DataError(
        "no known tokenizer (expected kind byte, char or bpe, or a tokenizers library tokenizer.json): "
        f"{str(data)[:80]}"
    )


#: The checkpoint entry that holds the tokenizer a model was trained with, as :meth:`Tokenizer.to_dict` data: the one
#: place a checkpoint keeps it (the model writes it, see :meth:`lightning_models.base.TaskModule.on_save_checkpoint`).
CHECKPOINT_KEY = "tokenizer"


def checkpoint_tokenizer(checkpoint: Any) -> Tokenizer | None:
    """The tokenizer a loaded checkpoint holds (:data:`CHECKPOINT_KEY`), or ``None`` when it holds none.

    Raises:
        DataError: a malformed tokenizer (see :func:`tokenizer_from_dict`).
    """
    data = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, Mapping) else None
    return tokenizer_from_dict(data) if data else None


def read_tokenizer(path: str | Path, setting: str = "data.tokenizer_path") -> Tokenizer:
    """The tokenizer saved at ``path``: a run folder or its ``tokenizer.json``, a ``tokenizers`` library
    ``tokenizer.json`` (GPT-2's), a Hugging Face model folder or Hub name (``hf:ORG/NAME``, its ``tokenizer.json``
    with the special tokens of its ``special_tokens_map.json``), or a checkpoint of a model trained on text by
    zerotune.

    Raises:
        DataError: a missing file, or one that holds no usable tokenizer (malformed, not JSON, fewer than two
            tokens); the message names the file and ``setting``, the option it was given as.
    """
    path = resolve_source(path, setting)
    if path.is_dir() and (path / "tokenizer.json").is_file():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise DataError(f"tokenizer not found: '{path}' ({setting}); pass a tokenizer.json or a .ckpt")
    fix = "pass a run folder's tokenizer.json, a tokenizers library tokenizer.json or a language model's .ckpt"
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as err:  # not JSON, not UTF-8 (binary), nested beyond reason
            reason = " ".join(str(err).split())[:120] or type(err).__name__
            raise DataError(f"{path} ({setting}) is not a tokenizer file: not JSON ({reason}); {fix}") from None
        except OSError as err:
            raise DataError(f"cannot read {path} ({setting}): {err.strerror or err}") from None
    else:
        from fileio.checkpoints import load_checkpoint

        checkpoint = load_checkpoint(path)
        data = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, Mapping) else None
        if not data:
            raise DataError(f"checkpoint '{path}' holds no tokenizer (it was not trained on text by zerotune)")
    roles = path.parent / "special_tokens_map.json"
    if isinstance(data, dict) and isinstance(data.get("model"), dict) and is_pretrained_spec(data) and roles.is_file():
        # A model folder's tokenizer.json: the roles of its special tokens come from the file beside it.
        data = {"kind": "pretrained", "tokenizer": data, "special_tokens": read_special_tokens(roles)}
    try:
        tokenizer = tokenizer_from_dict(data)
    except DataError as err:
        raise DataError(f"{path} ({setting}) holds {err}; {fix}") from None
    if tokenizer.vocab_size < 2:
        raise DataError(
            f"{path} ({setting}) holds a {tokenizer.kind} tokenizer of {tokenizer.vocab_size} token: a language model "
            f"needs at least two; {fix}"
        )
    return tokenizer


def read_special_tokens(path: Path) -> dict[str, str]:
    """Role -> token of a ``special_tokens_map.json`` (values are strings, or objects with a ``content``).

    Raises:
        DataError: a file that is not a JSON object.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} is not a JSON object of special tokens")
    roles = {role: v.get("content") if isinstance(v, dict) else v for role, v in data.items()}
    return {role: token for role, token in roles.items() if isinstance(token, str)}


def missing_characters(tokenizer: Tokenizer, texts: Iterable[str]) -> list[str]:
    """The characters of ``texts`` that the ``char`` tokenizer ``tokenizer`` has no token for, sorted (empty for
    byte and BPE tokenizers, which read any text)."""
    if not isinstance(tokenizer, CharTokenizer):
        return []
    seen: set[str] = set()
    for text in texts:
        seen.update(text)
    return sorted(seen - set(tokenizer.chars))


def char_gap_message(model: str, saved: Tokenizer, data: Tokenizer) -> str | None:
    """Why ``model``, trained with the ``char`` tokenizer ``saved``, cannot read text whose characters are ``data``'s
    (a ``char`` tokenizer fitted to it): the characters it has no token for. ``None`` when there are none, or when
    either tokenizer is not ``char`` (byte-level tokenizers read any text)."""
    missing = missing_characters(saved, [data.chars]) if isinstance(data, CharTokenizer) else []
    if not missing:
        return None
    return (
        f"{model} reads a char tokenizer of {saved.vocab_size} characters, and this run's text has {len(missing)} "
        f"character(s) it has no token for ({describe_characters(missing)}), so not even --data.tokenizer_path can "
        "make the model read it: use text written with the model's characters, or a model trained with "
        "data.tokenizer byte or bpe, which read any text"
    )


def describe_characters(chars: Sequence[str], limit: int = 8) -> str:
    """``'T', 'W', 'Z'`` (and ``... and N more`` past ``limit``): characters for a one-line message."""
    shown = ", ".join(repr(c) for c in chars[:limit])
    return shown + (f" and {len(chars) - limit} more" if len(chars) > limit else "")


def train_tokenizer(kind: TokenizerKind, texts: Iterable[str], vocab_size: int = 4096) -> Tokenizer:
    """A tokenizer of ``kind`` fitted to ``texts`` (``byte`` ignores them; ``vocab_size`` is for ``bpe``)."""
    if kind == "byte":
        return ByteTokenizer()
    if kind == "char":
        return CharTokenizer.train(texts)
    if kind == "bpe":
        return BPETokenizer.train(texts, vocab_size)
    raise ValueError(f"tokenizer must be one of byte, char, bpe; got {kind!r}")


class StreamDecoder:
    """Turns tokens arriving one at a time into text that is safe to print as it comes.

    A byte or BPE token can end in the middle of a multi-byte character; such a tail is held back until the
    character is complete, so the printed stream equals the decoded whole.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._ids: list[int] = []
        self._done = 0

    def push(self, ids: Iterable[int]) -> str:
        """Add tokens; return the new text that is complete."""
        self._ids.extend(int(i) for i in ids)
        text = self.tokenizer.decode(self._ids)
        if text.endswith("\ufffd"):
            return ""
        new, self._done = text[self._done :], len(text)
        return new

    def flush(self) -> str:
        """The rest, incomplete characters included (as U+FFFD)."""
        text = self.tokenizer.decode(self._ids)
        new, self._done = text[self._done :], len(text)
        return new
