"""Fine-tuning: pre-trained weights loaded by key matching with a report, and a backbone freeze/unfreeze schedule.

Any zerotune model starts from a weights file with ``--model.pretrained PATH`` (see
:meth:`~lightning_models.base.TaskModule.setup`): a zerotune/Lightning checkpoint or a plain PyTorch
``state_dict`` such as torchvision's ResNet-18 ImageNet weights. File keys are matched to the model's keys by the
rule of :func:`match_keys`; tensors whose shape differs (a head for another class count) are skipped and keep the
model's fresh initialization. :class:`FreezeSchedule` then trains the head alone for a few epochs before the
backbone joins at its own, lower learning rate (``model.backbone_lr_factor``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import lightning as L
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from datamodules.tokenizer import Tokenizer, char_gap_message, checkpoint_tokenizer, read_tokenizer
from fileio.checkpoints import load_checkpoint, load_state_dict_file
from fileio.errors import DataError
from fileio.hub import is_model_folder, resolve_source, weights_file


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did with a weights file.

    Attributes:
        path: The file read.
        total: Number of entries (parameters and buffers) in the model's state_dict.
        loaded: Model keys that received a tensor from the file.
        mismatched: ``(model key, file shape, model shape)`` of entries skipped because the shapes differ; they
            keep their fresh initialization (a new head is re-initialized this way).
        excluded: Model keys skipped on request (``pretrained_skip``); they keep their fresh initialization.
        missing: Model keys the file has no tensor for (kept as initialized).
        unused: File keys that match no model key, or more than one (ambiguous).
    """

    path: str
    total: int = 0
    loaded: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: how many tensors were loaded, and from where."""
        fresh = len(self.mismatched) + len(self.excluded) + len(self.missing)
        return f"loaded {len(self.loaded)}/{self.total} tensors from {self.path} ({fresh} kept fresh init)"

    def __str__(self) -> str:
        lines = [f"pretrained: {self.summary()}"]
        for name, src, dst in self.mismatched:
            lines.append(f"  skipped {name}: shape {list(src)} in file, {list(dst)} in model (re-initialized)")
        if self.excluded:
            lines.append(f"  skipped by model.pretrained_skip (re-initialized): {_short(self.excluded)}")
        if self.missing:
            lines.append(f"  missing in file (kept fresh init): {_short(self.missing)}")
        if self.unused:
            lines.append(f"  unused from file (no unique match in the model): {_short(self.unused)}")
        return "\n".join(lines)


def _short(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a zerotune/Lightning checkpoint (its ``state_dict``), a plain ``state_dict`` file, a
    ``.safetensors`` file, or a Hugging Face model folder or Hub name (``hf:ORG/NAME``).

    Read with ``weights_only=True`` (see :mod:`fileio.checkpoints`): a weights file from elsewhere cannot
    run code when it is loaded, unless the user passed ``--trust_checkpoint true``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        DataError: if the file is not a checkpoint or holds no tensors.
    """
    if is_model_folder(path):  # a Hugging Face model: its folder (or Hub name) holds the weights file
        return load_state_dict_file(weights_file(resolve_source(path)))
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"model.pretrained: no such file '{path}'. Pass a zerotune checkpoint (.ckpt), a PyTorch state_dict "
            "file (.pt/.pth/.bin) or a .safetensors file that exists locally, or leave model.pretrained unset to "
            "train from scratch."
        )
    return load_state_dict_file(path)


def _common_prefix(keys: Iterable[str]) -> str:
    """The leading dotted components every key shares, e.g. ``module.`` for a DDP-wrapped model's state_dict."""
    parts = [k.split(".")[:-1] for k in keys]
    prefix: list[str] = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        prefix.append(level[0])
    return "".join(f"{p}." for p in prefix)


def match_keys(
    source: Iterable[str], target: Iterable[str], renames: Mapping[str, str] | None = None
) -> tuple[dict[str, str], list[str]]:
    """Map file keys onto model keys.

    The rule, per file key:

    1. A prefix that *every* file key shares (``module.``, ``model.``) is stripped when the model has no key
       starting with it (so ``module.backbone.0.weight`` becomes ``backbone.0.weight``).
    2. ``renames`` (the model's ``pretrained_key_map``) replaces a leading part, e.g. torchvision's ``fc.`` ->
       ``head.``.
    3. The key is used as is when the model has it; otherwise it goes to the model key that ends with
       ``"." + key`` with the fewest leading parts added (torchvision's ``conv1.weight`` ->
       ``backbone.conv1.weight`` rather than ``backbone.layer1.0.conv1.weight``). No match, or a tie, leaves it
       unused: a tensor is never loaded into a place picked by guessing.

    Returns:
        ``{model key: file key}`` and the unused file keys.
    """
    source, target = list(source), list(target)
    target_set = set(target)
    strip = _common_prefix(source)
    while strip and any(t.startswith(strip) for t in target):
        strip = strip[: strip.rstrip(".").rfind(".") + 1]  # the model uses that prefix itself: strip less
    # suffix -> {number of leading parts before it: model keys}
    by_suffix: dict[str, dict[int, list[str]]] = {}
    for t in target:
        parts = t.split(".")
        for i in range(1, len(parts)):
            by_suffix.setdefault(".".join(parts[i:]), {}).setdefault(i, []).append(t)
    mapping: dict[str, str] = {}
    unused: list[str] = []
    for key in source:
        name = key[len(strip) :]
        for old, new in (renames or {}).items():
            if name.startswith(old):
                name = new + name[len(old) :]
                break
        by_depth = by_suffix.get(name, {})
        candidates = [name] if name in target_set else by_depth[min(by_depth)] if by_depth else []
        if len(candidates) == 1 and candidates[0] not in mapping:
            mapping[candidates[0]] = key
        else:
            unused.append(key)
    return mapping, unused


@runtime_checkable
class ConvertsPretrained(Protocol):
    """A model that maps foreign weights files onto its own keys before they are matched (every
    :class:`~lightning_models.base.TaskModule` declares it; the Transformers convert Hugging Face GPT-2 files)."""

    def convert_pretrained(self, state: dict[str, Tensor], source: str) -> dict[str, Tensor]: ...


def load_pretrained(
    module: nn.Module,
    path: str | Path,
    skip: Iterable[str] = (),
    renames: Mapping[str, str] | None = None,
) -> LoadReport:
    """Copy the matching tensors of a weights file into ``module``; return what was loaded, skipped and missing.

    Args:
        module: The model to fill (in place).
        path: A zerotune/Lightning checkpoint or a plain ``state_dict`` file.
        skip: Model key prefixes never loaded, e.g. ``["head."]`` to re-initialize a head of the same shape.
        renames: Leading parts of file keys to rename first (see :func:`match_keys`).
    """
    source = read_state_dict(path)
    if isinstance(module, ConvertsPretrained):  # the model maps a foreign layout (Hugging Face GPT-2) onto its keys
        source = module.convert_pretrained(dict(source), str(path))
    own = module.state_dict()
    mapping, unused = match_keys(source, own, renames)
    report = LoadReport(str(path), total=len(own), unused=unused)
    skip = tuple(skip)
    chosen: dict[str, Tensor] = {}
    for name, key in mapping.items():
        tensor = source[key]
        if skip and name.startswith(skip):
            report.excluded.append(name)
        elif tuple(tensor.shape) != tuple(own[name].shape):
            report.mismatched.append((name, tuple(tensor.shape), tuple(own[name].shape)))
        else:
            chosen[name] = tensor
            report.loaded.append(name)
    report.missing = [k for k in own if k not in mapping]
    if not chosen and report.mismatched:
        shapes = [f"{name} file {list(src)} vs model {list(dst)}" for name, src, dst in report.mismatched]
        raise DataError(
            f"model.pretrained: no tensor in '{path}' fits this model: every one whose name matches has another "
            f"shape ({_short(shapes, 3)}). Use weights saved from the same architecture and size (model settings "
            "such as hidden sizes, widths and depths must match the file's)."
        )
    if not chosen:
        raise DataError(
            f"model.pretrained: no tensor in '{path}' fits this model (file keys like {_short(list(source), 3)}; "
            f"model keys like {_short(list(own), 3)}). Use weights saved from the same architecture."
        )
    module.load_state_dict(chosen, strict=False)
    return report


def check_pretrained_tokenizer(path: str | Path, tokenizer: Tokenizer) -> None:
    """Refuse pre-trained weights trained with another tokenizer than ``tokenizer`` (the data's): the model's
    embedding rows would stand for other tokens, its token ids would mean other text.

    The rule, for every model: a file that exists and is not ``.safetensors`` (tensors only; a Hugging Face model's
    tokenizer is given as ``data.tokenizer_path``) is read, and a tokenizer it holds (a zerotune checkpoint's, under
    any file name) must equal ``tokenizer``. A missing file is left to :func:`load_pretrained` to report.

    Raises:
        DataError: naming the file and the setting that makes the data use the model's own tokenizer, or, when not
            even that could work (a ``char`` model without tokens for some of this text's characters), why not.
    """
    if is_model_folder(path):  # a Hugging Face model's tokenizer is the tokenizer.json of its folder
        folder = resolve_source(path)
        if (folder / "tokenizer.json").is_file() and read_tokenizer(folder, "model.pretrained") != tokenizer:
            raise DataError(
                f"model.pretrained '{path}' comes with its own tokenizer.json, and this run's data uses another, so "
                f"its token ids would mean other text; pass --data.tokenizer_path {path} (or leave it unset)"
            )
        return
    file = Path(path)
    if file.suffix == ".safetensors" or not file.is_file():
        return
    checkpoint = load_checkpoint(file)  # an unreadable file: the error the loader would give
    try:
        saved = checkpoint_tokenizer(checkpoint)
    except DataError as err:
        raise DataError(f"model.pretrained '{path}' holds {err}") from None
    if saved is None or saved == tokenizer:
        return
    gap = char_gap_message(f"model.pretrained '{path}'", saved, tokenizer)
    if gap:  # the advice below could not work: the model has no token for some of this text's characters
        raise DataError(gap)
    raise DataError(
        f"model.pretrained '{path}' was trained with another tokenizer than this run's data uses, so its token ids "
        f"would mean other text; pass --data.tokenizer_path {path} to tokenize with the model's own"
    )


class FreezeSchedule(L.Callback):
    """Train the head alone while the backbone is frozen, then unfreeze the backbone at a given epoch.

    While frozen, the backbone's parameters get no gradients (so the optimizer leaves them, and their Adam
    moments, untouched) and the backbone runs in eval mode: its BatchNorm running statistics and dropout behave
    as in inference. From ``unfreeze_at_epoch`` on it trains again, at ``model.lr * model.backbone_lr_factor``:
    the backbone and the head are separate optimizer parameter groups from the start, so the learning rate
    schedule and a resumed optimizer state cover both.

    Under DDP the frozen parameters produce no gradients, which DDP accepts only with
    ``find_unused_parameters=True``; this callback switches it on before the model is wrapped.

    Args:
        unfreeze_at_epoch: First epoch (0-based) in which the backbone trains; 0 never freezes it.
        module: Name of the model attribute to freeze.
        train_bn: Keep the frozen backbone's BatchNorm layers in training mode (their statistics then adapt
            to the new data; their affine weights stay frozen).
    """

    def __init__(self, unfreeze_at_epoch: int = 0, module: str = "backbone", train_bn: bool = False) -> None:
        if unfreeze_at_epoch < 0:
            raise ValueError(f"unfreeze_at_epoch must be >= 0, got {unfreeze_at_epoch}")
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.module = module
        self.train_bn = train_bn
        self._params: list[nn.Parameter] | None = None

    def _backbone(self, pl_module: L.LightningModule) -> nn.Module:
        backbone = getattr(pl_module, self.module, None)
        if not isinstance(backbone, nn.Module):
            raise ValueError(
                f"FreezeSchedule: {type(pl_module).__name__} has no '{self.module}' module to freeze. Models that "
                f"split into a backbone and a head expose it as self.backbone; set unfreeze_at_epoch 0 for this one."
            )
        return backbone

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.unfreeze_at_epoch == 0:
            return
        backbone = self._backbone(pl_module)
        # Parameters frozen for good by the model itself (e.g. ``freeze_backbone``) stay frozen after unfreezing.
        self._params = [p for p in backbone.parameters() if p.requires_grad]
        strategy = trainer.strategy
        if isinstance(strategy, DDPStrategy) and not strategy._ddp_kwargs.get("find_unused_parameters"):
            strategy._ddp_kwargs["find_unused_parameters"] = True
        rank_zero_info(f"FreezeSchedule: '{self.module}' frozen for epochs 0-{self.unfreeze_at_epoch - 1}")

    def frozen(self, epoch: int) -> bool:
        """Whether the backbone is frozen during ``epoch``."""
        return epoch < self.unfreeze_at_epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._params is None:
            return
        backbone = self._backbone(pl_module)
        frozen = self.frozen(trainer.current_epoch)
        for p in self._params:
            p.requires_grad_(not frozen)
        # Lightning restores each submodule's mode after validation, so the mode set here holds for the epoch.
        backbone.train(not frozen)
        if frozen and self.train_bn:
            for m in backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()
        if trainer.current_epoch == self.unfreeze_at_epoch:
            rank_zero_info(f"FreezeSchedule: epoch {trainer.current_epoch}: '{self.module}' unfrozen")
