"""Fine-tuning methods for Transformer models, one switch each: full, partial (frozen embeddings and first blocks)
and LoRA (low-rank adapters on named linear layers, base frozen, merged for export).

Every zerotune Transformer (GPT, BERT, the sequence classifier, ViT) mixes in :class:`FinetuneMethods` and
calls :meth:`FinetuneMethods.setup_finetuning` once its layers exist, so ``--model.finetune lora --model.lora_r 8``
works the same on each. Choices follow litgpt (``lora_r``, ``lora_alpha``, ``lora_dropout``, ``merge_lora``) and
Hugging Face PEFT (``target_modules`` by name, ``modules_to_save``, ``merge_and_unload``).

LoRA (Hu et al., 2021) adds ``scale * B @ A`` to a frozen weight ``W`` (``A``: ``r x in``, ``B``: ``out x r``,
``scale = alpha / r``), with ``B`` starting at zero so training starts from the pre-trained model exactly. State
dict keys of the wrapped layers stay as they were (``attn.qkv.weight``) plus ``attn.qkv.lora_A``/``lora_B``, so
pre-trained files load into a LoRA model unchanged.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch import Tensor, nn
from torch.nn import functional as F

from fileio.errors import DataError
from fileio.hub import is_model_folder
from lightning_models.hf_gpt2 import from_hf, is_hf_gpt2

FinetuneMethod = Literal["full", "partial", "lora"]


class LoRALinear(nn.Linear):
    """A linear layer plus a low-rank update: ``y = x W^T + b + scale * dropout(x) A^T B^T``.

    Built from an existing :class:`~torch.nn.Linear` by :meth:`wrap`, which keeps its weight and bias
    :class:`~torch.nn.Parameter` objects (a weight tied elsewhere stays tied).

    Args:
        in_features: Input width.
        out_features: Output width.
        bias: Whether the layer has a bias.
        r: Rank of the update.
        alpha: Scale numerator: the update is multiplied by ``alpha / r``.
        dropout: Dropout on the adapter's input.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        r: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self._add_adapter(r, alpha, dropout, self.weight.device, self.weight.dtype)

    def _add_adapter(self, r: int, alpha: float, dropout: float, device: Any, dtype: torch.dtype) -> None:
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear's own weights, and the LoRA paper
        self.lora_dropout = nn.Dropout(dropout)
        #: The update is already folded into ``weight`` (see :meth:`merge`).
        self.merged = False

    @classmethod
    def wrap(cls, linear: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> LoRALinear:
        """A LoRA layer around ``linear``'s own weight and bias parameters, its adapter on the same device/dtype."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight, new.bias = linear.weight, linear.bias
        new._add_adapter(r, alpha, dropout, linear.weight.device, linear.weight.dtype)
        new.train(linear.training)
        return new

    def delta(self) -> Tensor:
        """The update ``scale * B @ A``, shaped like ``weight``."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.merged:
            return y
        return y + F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.scaling

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """A plain :class:`~torch.nn.Linear` holding ``W + scale * B @ A`` (a new weight; this layer is unchanged)."""
        merged = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        merged.weight = nn.Parameter(self.weight + self.delta().to(self.weight.dtype), requires_grad=False)
        merged.bias = None if self.bias is None else nn.Parameter(self.bias.detach().clone(), requires_grad=False)
        return merged

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, alpha={self.alpha:g}"


def _matches(name: str, target: str) -> bool:
    """Whether the module path ``name`` contains ``target`` on dot boundaries (``mlp`` matches ``h.0.mlp.fc``)."""
    return f".{target}." in f".{name}."


def apply_lora(
    model: nn.Module, targets: Iterable[str], r: int, alpha: float, dropout: float = 0.0, exclude: Iterable[str] = ()
) -> list[str]:
    """Replace every :class:`~torch.nn.Linear` whose path contains a target (``attn.qkv``, ``mlp``) by a
    :class:`LoRALinear` around the same weights; returns the wrapped paths.

    Args:
        model: Modified in place.
        targets: Module names; a target matches a layer when it is a dotted part of its path.
        r: Rank; alpha: scale numerator; dropout: on the adapters' input.
        exclude: Path prefixes never wrapped (a classifier's head, trained in full instead).

    Raises:
        ValueError: for a target that matches no linear layer, naming the layers there are.
    """
    targets, exclude = list(targets), tuple(exclude)
    linears = {
        n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and not isinstance(m, LoRALinear) and n
    }
    candidates = {n: m for n, m in linears.items() if not n.startswith(exclude)}
    unmatched = [t for t in targets if not any(_matches(n, t) for n in candidates)]
    if unmatched:
        names = sorted({".".join(p for p in n.split(".") if not p.isdigit()) for n in candidates})
        raise ValueError(
            f"model.lora_targets {unmatched} match no linear layer of {type(model).__name__}; its linear layers are "
            f"named {', '.join(names)} (a target matches any path it is a dotted part of, e.g. attn.qkv or mlp)"
        )
    wrapped = []
    for name, linear in candidates.items():
        if any(_matches(name, t) for t in targets):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, LoRALinear.wrap(linear, r, alpha, dropout))
            wrapped.append(name)
    return wrapped


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight and put plain linear layers back (PEFT's ``merge_and_unload``), in
    place; returns ``model``. The result computes the same function without the adapters' extra products."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.merge())
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameters, each shared (tied) tensor counted once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def _human(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


class FinetuneMethods:
    """Mixin of every Transformer model: how much of it trains (``finetune``) and LoRA's settings.

    A model lists its layout in class attributes (``embedding_names``, ``blocks_name``, ``head_names``), mixes
    this class in before its task base and calls :meth:`setup_finetuning` at the end of its ``__init__``.

    Args:
        finetune: ``full`` trains everything; ``partial`` freezes the embeddings and the first ``freeze_blocks``
            blocks (for good: :class:`~lightning_models.finetune.FreezeSchedule` and ``backbone_lr_factor`` act on
            the rest); ``lora`` freezes every base weight and trains low-rank adapters on ``lora_targets`` plus the
            head (``lora_modules_to_save``).
        freeze_blocks: Blocks frozen by ``partial``, counted from the input.
        lora_r: Adapter rank.
        lora_alpha: The update is scaled by ``lora_alpha / lora_r``.
        lora_dropout: Dropout on the adapters' input.
        lora_targets: Linear layers that get adapters, by name: ``attn.qkv``, ``attn.proj``, ``mlp`` (both of
            ``mlp.fc`` and ``mlp.proj``), ``mlp.fc``...
        lora_modules_to_save: Modules trained in full next to the adapters; default the model's head
            (a classifier's ``head``; a language model's output layer is tied to its frozen embedding).
        lora_checkpoint: ``adapters``: checkpoints hold only what trains (adapters, head) and name the base
            weights file (``pretrained``) they apply to, which must stay in place; ``full``: every tensor. Without
            ``pretrained`` checkpoints are always full.
        **kwargs: The task base's arguments.
    """

    #: Parameter name prefixes of the embeddings (token, position, patch): frozen by ``partial``.
    embedding_names: tuple[str, ...] = ()
    #: Dotted path of the ``ModuleList`` of blocks whose first ``freeze_blocks`` ``partial`` freezes.
    blocks_name: str = ""
    #: Module prefixes trained in full under LoRA unless ``lora_modules_to_save`` says otherwise.
    head_names: tuple[str, ...] = ()

    def __init__(
        self,
        finetune: FinetuneMethod = "full",
        freeze_blocks: int = 0,
        lora_r: int = 8,
        lora_alpha: float = 16.0,
        lora_dropout: float = 0.05,
        lora_targets: list[str] = ["attn.qkv", "attn.proj"],  # noqa: B006
        lora_modules_to_save: list[str] | None = None,
        lora_checkpoint: Literal["adapters", "full"] = "adapters",
        **kwargs: Any,
    ) -> None:
        if finetune not in ("full", "partial", "lora"):
            raise ValueError(f"model.finetune must be one of full, partial, lora; got {finetune!r}")
        if freeze_blocks < 0 or (freeze_blocks and finetune != "partial"):
            raise ValueError(
                f"model.freeze_blocks ({freeze_blocks}) must be >= 0 and applies to model.finetune partial only"
            )
        if lora_r < 1 or lora_alpha <= 0 or not 0 <= lora_dropout < 1:
            raise ValueError(
                f"model.lora_r must be >= 1, lora_alpha > 0 and lora_dropout in [0, 1); got {lora_r}, {lora_alpha}, "
                f"{lora_dropout}"
            )
        if finetune == "lora" and not lora_targets:
            raise ValueError("model.lora_targets is empty: name the linear layers to adapt, e.g. [attn.qkv]")
        super().__init__(**kwargs)
        #: State-dict keys of the frozen base weights under LoRA (left out of adapters-only checkpoints).
        self._lora_base_keys: set[str] = set()

    # -- applying the method -------------------------------------------------------------------------------------------
    def setup_finetuning(self) -> None:
        """Freeze or wrap layers as ``finetune`` says; called by the model once all its layers exist."""
        hp = self.hparams
        if hp.finetune == "partial":
            blocks = self.get_submodule(self.blocks_name)
            if hp.freeze_blocks > len(blocks):
                raise ValueError(f"model.freeze_blocks is {hp.freeze_blocks}, but the model has {len(blocks)} blocks")
            frozen = (*self.embedding_names, *(f"{self.blocks_name}.{i}." for i in range(hp.freeze_blocks)))
            for name, p in self.named_parameters():
                if name.startswith(frozen):
                    p.requires_grad_(False)
        elif hp.finetune == "lora":
            keep = tuple(hp.lora_modules_to_save if hp.lora_modules_to_save is not None else self.head_names)
            apply_lora(self, hp.lora_targets, hp.lora_r, hp.lora_alpha, hp.lora_dropout, exclude=keep)
            trains = {
                n for n, p in self.named_parameters(remove_duplicate=False) if ".lora_" in n or n.startswith(keep)
            }
            for name, p in self.named_parameters(remove_duplicate=False):
                p.requires_grad_(name in trains)
            # A tensor shared between a trained and a frozen name (tied weights) trains: it must be saved.
            saved = {n for n, p in self.named_parameters(remove_duplicate=False) if p.requires_grad}
            self._lora_base_keys = {k for k in self.state_dict() if k not in saved}

    @property
    def adapters_only(self) -> bool:
        """Whether checkpoints hold only the trained tensors (LoRA from a ``pretrained`` base file)."""
        hp = self.hparams
        return hp.finetune == "lora" and hp.lora_checkpoint == "adapters" and bool(hp.get("pretrained"))

    def optional_checkpoint_keys(self) -> set[str]:
        """State-dict keys a checkpoint may leave out: the frozen base of a LoRA model (adapters-only checkpoints)."""
        return set(self._lora_base_keys)

    def merge_lora(self) -> FinetuneMethods:
        """Fold the adapters into the weights, in place (plain linear layers again); returns the model."""
        merge_lora(self)
        self._lora_base_keys = set()
        return self

    def export_module(self) -> nn.Module:
        """What to export to ONNX: this model, or under LoRA a copy with the adapters merged (same outputs, no extra
        products, no adapter tensors)."""
        if not any(isinstance(m, LoRALinear) for m in self.modules()):
            return self
        return copy.deepcopy(self).merge_lora()

    # -- reporting -----------------------------------------------------------------------------------------------------
    def parameter_summary(self) -> str:
        """One line: total and trainable parameters and the method, e.g. ``1.31M parameters, 24.6K trainable
        (1.9%), finetune lora (r 8, alpha 16, attn.qkv, attn.proj)``."""
        trainable, total = count_parameters(self)
        hp = self.hparams
        method = hp.finetune
        if method == "partial":
            method += f" (embeddings and {hp.freeze_blocks} block(s) frozen)"
        elif method == "lora":
            method += f" (r {hp.lora_r}, alpha {hp.lora_alpha:g}, {', '.join(hp.lora_targets)})"
        share = 100.0 * trainable / max(1, total)
        return f"{_human(total)} parameters, {_human(trainable)} trainable ({share:.3g}%), finetune {method}"

    def on_fit_start(self) -> None:
        super().on_fit_start()
        rank_zero_only(print)(f"model: {type(self).__name__}, {self.parameter_summary()}")

    # -- checkpoints -------------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.adapters_only and "state_dict" in checkpoint:
            state = checkpoint["state_dict"]
            for key in self._lora_base_keys:
                state.pop(key, None)
            checkpoint["lora"] = {"adapters_only": True, "base": str(self.hparams.pretrained)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """An adapters-only checkpoint gets its base weights from the file it names, before the weights load."""
        info = checkpoint.get("lora") or {}
        if info.get("adapters_only"):
            base = str(info["base"])
            # A Hugging Face model folder or Hub name is read as the run read it; a weights file must be in place.
            if not is_model_folder(base) and Path(base).is_dir():
                raise DataError(
                    f"this checkpoint holds LoRA adapters only; their base weights '{base}' (model.pretrained of the "
                    "run) is now a folder, not a weights file. Put the file back at that path, or fine-tune with "
                    "--model.lora_checkpoint full"
                )
            if not is_model_folder(base) and not Path(base).is_file():
                raise DataError(
                    f"this checkpoint holds LoRA adapters only; their base weights file '{base}' (model.pretrained "
                    "of the run) is gone. Put it back at that path, or fine-tune with --model.lora_checkpoint full"
                )
            from lightning_models.finetune import load_pretrained

            load_pretrained(self, base, skip=self.hparams.get("pretrained_skip") or (), renames=self.pretrained_key_map)
            state = checkpoint["state_dict"]
            for key, value in self.state_dict().items():
                if key in self._lora_base_keys:
                    state.setdefault(key, value)
        super().on_load_checkpoint(checkpoint)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """As :meth:`torch.nn.Module.load_state_dict`; an adapters-only state keeps this model's base weights."""
        base = self._lora_base_keys
        if base and not any(k in state_dict for k in base):
            state_dict = {**{k: v for k, v in self.state_dict().items() if k in base}, **state_dict}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # -- pre-trained weights from elsewhere ----------------------------------------------------------------------------
    #: Where a GPT-2-layout backbone sits in this model (``transformer.``), for Hugging Face GPT-2 files; ``None``:
    #: the model takes none.
    hf_gpt2_prefix: str | None = None

    def convert_pretrained(self, state: dict[str, Tensor], source: str) -> dict[str, Tensor]:
        """Map a foreign weights file onto this model's keys before matching (Hugging Face GPT-2 files), and crop a
        longer position table to this model's context."""
        own = {k: v for k, v in self.state_dict().items() if k.endswith("wpe.weight")}
        if len(own) == 1:
            rows, width = next(iter(own.values())).shape
            for key in [k for k in state if k.endswith("wpe.weight")]:
                table = state[key]
                if table.dim() == 2 and table.shape[0] > rows and table.shape[1] == width:
                    # The first positions: a shorter context needs no others (nanoGPT's crop_block_size).
                    state[key] = table[:rows]
                    rank_zero_info(f"pretrained: position table {key} cropped from {table.shape[0]} to {rows} rows")
        if self.hf_gpt2_prefix is not None and is_hf_gpt2(state):
            backbone = self.get_submodule(self.hf_gpt2_prefix.rstrip("."))
            state = from_hf(state, backbone, self.hf_gpt2_prefix, source)
            # Tied weights (GPT's output layer is its token embedding) get the tensor under each of their names.
            names: dict[int, list[str]] = {}
            for name, p in self.named_parameters(remove_duplicate=False):
                names.setdefault(id(p), []).append(name)
            for group in names.values():
                loaded = next((n for n in group if n in state), None)
                for name in group if loaded else ():
                    state.setdefault(name, state[loaded])
        return state
