"""Safe reading of checkpoint and weights files: clear errors, no code execution unless the user trusts the file.

Every place zerotune reads a ``.ckpt``/``.pt`` file goes through :func:`load_checkpoint` (whole checkpoint) or
:func:`load_state_dict_file` (just the tensors); ``.safetensors`` files through :func:`load_safetensors`. Files are
read with ``torch.load(weights_only=True)``: tensors, numbers, strings and containers only, so a file from elsewhere
cannot run code when it is opened. A file that needs more (a pickled class) is refused with an explanation, unless
the user passes ``--trust_checkpoint true`` (the launcher sets :data:`TRUST_ENV`, which the default ``trust=None``
follows) or ``trust=True`` is given explicitly.

This package sits below ``datamodules`` and ``lightning_models``: both read files the user gave through it.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fileio.errors import DataError

#: Set to ``1`` by the launcher's ``--trust_checkpoint true``; read when ``trust`` is left to its default.
TRUST_ENV = "ZEROTUNE_TRUST_CHECKPOINT"


def trusted_by_default() -> bool:
    """Whether the user allowed loading checkpoints that need arbitrary code (``--trust_checkpoint true``)."""
    return os.environ.get(TRUST_ENV, "").lower() in ("1", "true", "yes")


def load_checkpoint(path: str | os.PathLike, *, trust: bool | None = None, map_location: Any = "cpu") -> Any:
    """Read a checkpoint or weights file, turning every way it can be unusable into a :class:`DataError`.

    Args:
        path: A Lightning ``.ckpt`` or a ``torch.save`` file.
        trust: Allow unpickling arbitrary objects (runs code from the file). ``None`` follows
            ``--trust_checkpoint`` (:data:`TRUST_ENV`).
        map_location: Passed to :func:`torch.load`; ``"cpu"`` keeps GPU checkpoints loadable anywhere.

    Raises:
        DataError: missing file, a folder, an empty/truncated/corrupt file, a file that is not a checkpoint, or
            one that needs code to load while not trusted. The message names the file.
    """
    path = Path(path)
    if trust is None:
        trust = trusted_by_default()
    if not path.exists():
        raise DataError(f"checkpoint file not found: '{path}'")
    if path.is_dir():
        raise DataError(f"'{path}' is a folder, not a checkpoint file (look inside it for a .ckpt file)")
    if path.stat().st_size == 0:
        raise DataError(f"checkpoint '{path}' is empty (0 bytes): it was not written completely")
    try:
        return torch.load(path, map_location=map_location, weights_only=not trust)
    except pickle.UnpicklingError as err:
        # A pickled class needs code; other refusals of the safe unpickler inside torch.save's zip mean damage.
        # torch names what it refused: "Unsupported global: GLOBAL x.y" or "unsupported GLOBAL posix.system whose
        # module posix is blocked" (a callable such as os.system, the classic payload of a malicious pickle).
        needs_code = "unsupported global" in str(err).lower() or (not zipfile.is_zipfile(path) and _is_pickle(path))
        if not trust and "Weights only load failed" in str(err) and needs_code:
            raise DataError(_untrusted_message(path, str(err))) from None
        raise DataError(_corrupt_message(path, err)) from None
    except PermissionError as err:
        raise DataError(f"cannot read checkpoint '{path}': {err.strerror}") from None
    except (OSError, RuntimeError, EOFError, KeyError, ValueError, IndexError, AttributeError, ImportError) as err:
        # torch.load reports truncation and garbage through whichever exception its reader hits first.
        raise DataError(_corrupt_message(path, err)) from None


def load_state_dict_file(path: str | os.PathLike, *, trust: bool | None = None) -> dict[str, Tensor]:
    """The tensors of a Lightning checkpoint (its ``state_dict``) or of a plain ``state_dict`` file.

    Args:
        path: The file.
        trust: See :func:`load_checkpoint`.

    A ``.safetensors`` file (Hugging Face's format: tensors only, no pickle) is read with the ``safetensors``
    library and needs no trust.

    Raises:
        DataError: as :func:`load_checkpoint`, or when the file holds no mapping of names to tensors.
    """
    if Path(path).suffix == ".safetensors":
        return load_safetensors(path)
    obj = load_checkpoint(path, trust=trust)
    state = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None
    if isinstance(state, nn.Module):  # a trusted file holding a whole pickled model
        state = state.state_dict()
    if not isinstance(state, Mapping):
        raise DataError(f"'{path}' holds a {type(obj).__name__}, not a checkpoint or state_dict (names -> tensors)")
    tensors = {str(k): v for k, v in state.items() if isinstance(v, Tensor)}
    if not tensors:
        raise DataError(f"'{path}' holds no tensors: it is not a checkpoint or state_dict")
    return tensors


def load_safetensors(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file, with the same one-line errors as :func:`load_checkpoint`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise DataError(f"weights file not found: '{path}'" if not path.exists() else f"'{path}' is not a file")
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"cannot read '{path}': not a complete safetensors file ({first[:120]})") from None
    if not tensors:
        raise DataError(f"'{path}' holds no tensors")
    return tensors


def readable_checkpoint(preferred: str | os.PathLike, *, trust: bool | None = None) -> tuple[Path, str | None]:
    """``preferred`` if it loads; otherwise the newest readable ``.ckpt`` beside it, and a warning saying so.

    Used to resume: a ``last.ckpt`` left truncated (a crash mid-write before writes were atomic, a bad copy) falls
    back to the best checkpoint rather than ending the run.

    Returns:
        The checkpoint to use and ``None``, or the fallback and a one-line warning naming the unreadable file.

    Raises:
        DataError: when no checkpoint in the folder is readable.
    """
    preferred = Path(preferred)
    try:
        load_checkpoint(preferred, trust=trust)
        return preferred, None
    except DataError as err:
        problem = str(err)
    others = [p for p in preferred.parent.glob("*.ckpt") if p != preferred]
    for path in sorted(others, key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            ckpt = load_checkpoint(path, trust=trust)
        except DataError:
            continue
        if not isinstance(ckpt, Mapping) or "loops" not in ckpt:
            continue  # a weights-only file cannot restore the training state
        epoch, step = ckpt.get("epoch"), ckpt.get("global_step")
        return path, f"{problem}; resuming from {path} instead (epoch {epoch}, global step {step})"
    raise DataError(f"{problem}, and no other readable checkpoint is in {preferred.parent}")


def _untrusted_message(path: Path, detail: str) -> str:
    needs = re.search(r"unsupported global(?::\s*GLOBAL)?\s+([\w.]+)", detail, flags=re.IGNORECASE)
    what = f"it contains a pickled {needs.group(1)}" if needs else "it holds pickled objects, not just tensors"
    return (
        f"refusing to load '{path}': {what}, and unpickling it could run any code the file's author put in it. "
        "If you trust where the file came from, rerun with --trust_checkpoint true"
    )


def _is_pickle(path: Path) -> bool:
    """Whether the file starts as a pickle stream of protocol 2 or later (``torch.save``'s legacy format) does."""
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def _corrupt_message(path: Path, err: BaseException) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    with open(path, "rb") as f:
        head = f.read(64)
    is_zip = zipfile.is_zipfile(path)
    if "central directory" in first or isinstance(err, EOFError) or (head.startswith(b"PK\x03\x04") and not is_zip):
        reason = "it is truncated (the write was interrupted or the disk was full)"
    elif not is_zip and not head.startswith(b"\x80"):
        # Neither torch.save's zip container nor a legacy pickle stream.
        text = head.decode("utf-8", "replace").splitlines()[0][:40] if head.isascii() and head.strip() else ""
        reason = (
            f"it is not a PyTorch checkpoint (it starts with '{text}')" if text else "it is not a PyTorch checkpoint"
        )
    elif isinstance(err, pickle.UnpicklingError):
        reason = "it is corrupt (its data does not unpickle)"
    else:
        reason = f"it is corrupt ({type(err).__name__}: {first[:120]})"
    return f"cannot read checkpoint '{path}': {reason}"
