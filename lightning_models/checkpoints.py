"""Safe loading of checkpoint and weights files: clear errors, no code execution unless the user trusts the file.

Every place zerotune reads a ``.ckpt``/``.pt`` file goes through :func:`load_checkpoint` (whole checkpoint) or
:func:`load_state_dict_file` (just the tensors). Files are read with ``torch.load(weights_only=True)``: tensors,
numbers, strings and containers only, so a file from elsewhere cannot run code when it is opened. A file that needs
more (a pickled class) is refused with an explanation, unless the user passes ``--trust_checkpoint true`` (the
launcher sets :data:`TRUST_ENV`, which the default ``trust=None`` follows) or ``trust=True`` is given explicitly.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from datamodules.errors import DataError

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


@dataclass
class StateDictDiff:
    """How a ``state_dict`` differs from a model's own: keys missing, unexpected, and of another shape."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    #: ``(key, shape in the file, shape in the model)``.
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 5) -> str:
        """One line listing up to ``limit`` keys of each kind and, for shape mismatches, both shapes."""
        parts = []
        if self.mismatched:
            shown = [f"{k} file {list(a)} vs model {list(b)}" for k, a, b in self.mismatched]
            parts.append(f"shape mismatch: {_first(shown, limit)}")
        if self.missing:
            parts.append(f"missing in file: {_first(self.missing, limit)}")
        if self.unexpected:
            parts.append(f"not in model: {_first(self.unexpected, limit)}")
        return "; ".join(parts)


def compare_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor]) -> StateDictDiff:
    """Compare ``state_dict`` with ``model.state_dict()`` key by key and shape by shape.

    Keys the model names in ``optional_checkpoint_keys()`` (a LoRA model's frozen base, which adapters-only
    checkpoints leave out) may be missing.
    """
    own = model.state_dict()
    optional = getattr(model, "optional_checkpoint_keys", None)
    may_miss = optional() if callable(optional) else set()
    diff = StateDictDiff()
    diff.missing = [k for k in own if k not in state_dict and k not in may_miss]
    diff.unexpected = [k for k in state_dict if k not in own]
    diff.mismatched = [
        (k, tuple(v.shape), tuple(own[k].shape)) for k, v in state_dict.items() if k in own and v.shape != own[k].shape
    ]
    return diff


def check_compatible(
    model: nn.Module, state_dict: Mapping[str, Tensor], *, source: str | os.PathLike = "checkpoint", limit: int = 5
) -> None:
    """Raise a :class:`DataError` naming the differing keys and shapes unless ``state_dict`` fits ``model`` exactly.

    Args:
        model: The model the weights are meant for.
        state_dict: The weights.
        source: What the weights came from (a file path), named in the message.
        limit: How many keys of each kind the message lists.
    """
    diff = compare_state_dict(model, state_dict)
    if diff:
        raise DataError(
            f"'{source}' does not fit {type(model).__name__} (a checkpoint of another architecture or "
            f"configuration?): {diff.describe(limit)}"
        )


def _first(items: list[str], limit: int) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


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


def model_from_checkpoint(path: str | os.PathLike, *, trust: bool | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a zerotune checkpoint was saved from, with its weights, through :func:`load_checkpoint`.

    The class and its arguments come from the checkpoint's hyperparameters (LightningCLI stores the class path as
    ``_class_path``); the model's ``on_load_checkpoint`` restores what it keeps beside its weights (a language
    model's tokenizer, a LoRA model's base weights) before the weights load. The model is returned in eval mode on
    the CPU.

    Returns:
        The model and the checkpoint.

    Raises:
        DataError: an unreadable file, one without hyperparameters or a class, or weights that do not fit.
    """
    import importlib

    checkpoint = load_checkpoint(path, trust=trust)
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, Mapping) else None
    class_path = hparams.get("_class_path") if isinstance(hparams, Mapping) else None
    if not class_path or "state_dict" not in checkpoint:
        raise DataError(
            f"'{path}' is not a checkpoint of a zerotune run (it names no model class); pass a .ckpt from a run "
            "folder's checkpoints/"
        )
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise DataError(f"'{path}' was saved from {class_path}, which cannot be imported here: {err}") from None
    model = cls(**{k: v for k, v in hparams.items() if not k.startswith("_")})
    # Lightning's order: the model's hook sees the checkpoint first (a LoRA model fills in its base weights there).
    if hasattr(model, "on_load_checkpoint"):
        model.on_load_checkpoint(checkpoint)
    check_compatible(model, checkpoint["state_dict"], source=path)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), checkpoint
