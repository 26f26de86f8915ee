"""Checkpoints and models: does a ``state_dict`` fit a model, and the model a zerotune checkpoint was saved from.

Reading the files themselves is :mod:`fileio.checkpoints`' job (weights-only unless trusted, one-line errors).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lightning import LightningModule
from torch import Tensor, nn

from fileio.checkpoints import load_checkpoint
from fileio.errors import DataError
from lightning_models.base import TaskModule


def import_class(class_path: str) -> type:
    """The class a dotted path names, as configs and checkpoints name them (``lightning_models.GPT``).

    Raises:
        ImportError: one line naming the path and why: not a dotted path, no such module (or one that fails to
            import), no such name in it, or a name that is not a class.
    """
    module_name, _, name = class_path.rpartition(".")
    if not module_name or not name:
        raise ImportError(f"'{class_path}' is not a class path (module.Class, e.g. lightning_models.GPT)")
    try:
        found = getattr(importlib.import_module(module_name), name)
    except ImportError as err:
        raise ImportError(f"cannot import '{class_path}': {err}") from None
    except AttributeError:
        raise ImportError(f"cannot import '{class_path}': module '{module_name}' has no '{name}'") from None
    if not isinstance(found, type):
        raise ImportError(f"'{class_path}' is a {type(found).__name__}, not a class")
    return found


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

    Keys a zerotune model names in :meth:`~lightning_models.base.TaskModule.optional_checkpoint_keys` (a LoRA
    model's frozen base, which adapters-only checkpoints leave out) may be missing; any other module must match
    in full.
    """
    own = model.state_dict()
    may_miss = model.optional_checkpoint_keys() if isinstance(model, TaskModule) else set()
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


def model_from_checkpoint(
    path: str | os.PathLike, *, trust: bool | None = None, class_path: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a zerotune checkpoint was saved from, with its weights, through :func:`load_checkpoint`.

    The class and its arguments come from the checkpoint's hyperparameters (LightningCLI stores the class path as
    ``_class_path``); the model's ``on_load_checkpoint`` restores what it keeps beside its weights (a language
    model's tokenizer, a LoRA model's base weights) before the weights load. The model is returned in eval mode on
    the CPU.

    Args:
        path: The checkpoint file.
        trust: Allow a checkpoint that needs code to load (``None``: as the environment says, see
            :data:`fileio.checkpoints.TRUST_ENV`).
        class_path: The model class when the checkpoint names none (a run's ``config.yaml`` says).

    Returns:
        The model and the checkpoint.

    Raises:
        DataError: an unreadable file, a weights file, one that names no class or one that cannot be imported,
            base weights that are gone (adapters-only LoRA), or weights that do not fit.
    """
    checkpoint = load_checkpoint(path, trust=trust)
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        raise DataError(
            f"'{path}' is a weights file, not a training checkpoint of a zerotune run (it names no model class); "
            "pass a .ckpt from a run folder's checkpoints/"
        )
    hparams = checkpoint.get("hyper_parameters")
    hparams = hparams if isinstance(hparams, Mapping) else {}
    class_path = hparams.get("_class_path") or class_path
    if not class_path:
        raise DataError(
            f"'{path}' is not a checkpoint of a zerotune run (it names no model class); pass a .ckpt from a run "
            "folder's checkpoints/"
        )
    try:
        cls = import_class(class_path)
    except ImportError as err:
        raise DataError(f"'{path}' was saved from {class_path}, which cannot be imported here: {err}") from None
    model = cls(**{k: v for k, v in hparams.items() if not str(k).startswith("_")})
    # Lightning's order: the model's hook sees the checkpoint first (a LoRA model fills in its base weights there).
    if isinstance(model, LightningModule):
        model.on_load_checkpoint(checkpoint)
    check_compatible(model, checkpoint["state_dict"], source=path)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), checkpoint
