"""Hugging Face model sources: a local model folder, or ``hf:ORG/NAME`` fetched from the Hub into its cache.

A Hugging Face model folder holds ``config.json``, the weights (``model.safetensors`` or ``pytorch_model.bin``) and
the tokenizer files (``tokenizer.json`` ...). ``--model.pretrained`` and ``--data.tokenizer_path`` accept such a
folder or a Hub name; :func:`resolve_source` turns either into the local folder. A Hub name is downloaded once with
``huggingface_hub.snapshot_download`` (only the files zerotune reads) into the Hub's own cache (``HF_HOME``,
``HF_HUB_CACHE``), so a second run, or one with ``HF_HUB_OFFLINE=1``, reads the cached copy without the network.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from fileio.errors import DataError

#: The prefix that names a Hub repository instead of a path: ``hf:ORG/NAME`` or ``hf:ORG/NAME@REVISION``.
HUB_PREFIX = "hf:"
#: Weights files of a model folder, in the order they are looked for: safetensors first (tensors only, fast).
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")
#: What is fetched from the Hub: the config, the weights and the tokenizer files, never other formats' copies.
HUB_FILES = ("config.json", *WEIGHTS_FILES, "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def is_hub_name(source: str | os.PathLike) -> bool:
    """Whether ``source`` names a Hub repository (``hf:ORG/NAME``) rather than a path."""
    return str(source).startswith(HUB_PREFIX)


def is_model_folder(source: str | os.PathLike | None) -> bool:
    """Whether ``source`` is a Hugging Face model: a Hub name, or a folder holding ``config.json``."""
    if source is None:
        return False
    return is_hub_name(source) or (Path(source).is_dir() and (Path(source) / "config.json").is_file())


def resolve_source(source: str | os.PathLike, setting: str = "model.pretrained") -> Path:
    """The local folder of ``source``: a path as it is, a Hub name downloaded (or found in the cache).

    Raises:
        DataError: a malformed Hub name, or one that can be neither downloaded nor found in the cache; the message
            names ``setting``, the option it came from.
    """
    if not is_hub_name(source):
        return Path(source)
    name = str(source)[len(HUB_PREFIX) :]
    repo, _, revision = name.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise DataError(f"{setting} '{source}' is not a Hub name: write hf:ORG/NAME (or hf:ORG/NAME@REVISION)")
    from huggingface_hub import constants
    from huggingface_hub.errors import HFValidationError

    try:
        folder = _snapshot(repo, revision or None, constants.HF_HUB_CACHE)
    except HFValidationError as err:
        raise DataError(f"{setting} '{source}': {err}") from None
    except Exception as err:  # no network, no such repository, a gated one: huggingface_hub has many error types
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise DataError(
            f"{setting} '{source}' could not be fetched from the Hugging Face Hub and is not in its cache "
            f"({reason}); download it where the Hub is reachable, or pass the model's local folder"
        ) from None
    return Path(folder)


@functools.cache
def _snapshot(repo: str, revision: str | None, cache_dir: str) -> str:
    """The local snapshot folder of ``repo`` at ``revision`` in ``cache_dir``, fetched once per process: a run asks
    for its model from the launcher, the model, the data and the weights loader, and each ask would otherwise be a
    round trip to the Hub."""
    from huggingface_hub import snapshot_download

    return snapshot_download(repo, revision=revision, allow_patterns=list(HUB_FILES), cache_dir=cache_dir)


def weights_file(folder: str | os.PathLike) -> Path:
    """The weights file of a model folder (:data:`WEIGHTS_FILES`, the first present).

    Raises:
        DataError: the folder holds none.
    """
    folder = Path(folder)
    found = next((folder / name for name in WEIGHTS_FILES if (folder / name).is_file()), None)
    if found is None:
        raise DataError(f"'{folder}' holds no weights: expected {' or '.join(WEIGHTS_FILES)} beside config.json")
    return found
