"""Vision Transformer (Dosovitskiy et al., 2021): image patches as tokens through the shared Transformer blocks.

Patches of ``patch_size`` pixels are embedded by one strided convolution, a learned position embedding is added,
and the tokens pass through pre-LayerNorm :class:`~lightning_models.transformer.Block` s with full attention (the
same blocks as GPT and BERT). The image is read from a class token (``pooling: cls``, as ViT and timm) or the mean
of the patch tokens (``mean``). Sizes are YAML presets shaped like timm's (``experiments/configs/presets/vit_*.yaml``:
``vit_tiny`` is width 192, depth 12, 3 heads; ``vit_mini`` and ``vit_micro`` are smaller). Works on every image
datamodule (digits, MNIST, CIFAR-10, image folders): the image size and channels come linked from the datamodule.

:meth:`ViT.attention_maps` returns every layer's attention weights, which the ``attention`` callback draws for a
fixed validation image in TensorBoard's Images tab.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_models.base import ClassifierModule
from lightning_models.peft import FinetuneMethods
from lightning_models.transformer import Block, init_gpt2_weights


class ViTBackbone(nn.Module):
    """Patch embedding, class token, positions, blocks, final LayerNorm: ``(B, C, H, W)`` -> ``(B, n_embd)``.

    Args:
        image_shape: ``(channels, height, width)``; height and width divisible by ``patch_size``.
        patch_size: Side of the square patches, in pixels.
        n_layer: Blocks; n_head: heads per block; n_embd: width.
        dropout: Dropout after the embeddings and inside the blocks.
        bias: Biases in the linear layers and LayerNorms.
        pooling: ``cls`` (a learned class token) or ``mean`` (of the patch tokens).
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        patch_size: int,
        n_layer: int,
        n_head: int,
        n_embd: int,
        dropout: float = 0.0,
        bias: bool = True,
        pooling: Literal["cls", "mean"] = "cls",
    ) -> None:
        super().__init__()
        channels, height, width = image_shape
        self.grid = (height // patch_size, width // patch_size)
        self.pooling = pooling
        #: Tokens before the patches (the class token).
        self.prefix = 1 if pooling == "cls" else 0
        self.patch_embed = nn.Conv2d(channels, n_embd, kernel_size=patch_size, stride=patch_size, bias=bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, n_embd)) if pooling == "cls" else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.prefix + self.grid[0] * self.grid[1], n_embd))
        self.drop = nn.Dropout(dropout)
        self.h = nn.ModuleList(Block(n_embd, n_head, bias, dropout, causal=False) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)

    def tokens(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, T, n_embd)`` final token states (class token first, then patches row by row)."""
        t = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, n_embd, gh, gw) -> (B, gh * gw, n_embd)
        if self.cls_token is not None:
            t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1)
        t = self.drop(t + self.pos_embed)
        for block in self.h:
            t = block(t)
        return self.ln_f(t)

    def forward(self, x: Tensor) -> Tensor:
        t = self.tokens(x)
        return t[:, 0] if self.cls_token is not None else t.mean(dim=1)


class ViT(FinetuneMethods, ClassifierModule):
    """Vision Transformer classifier: :class:`ViTBackbone` (``self.backbone``) and a linear ``self.head``.

    Args:
        patch_size: Patch side in pixels; must divide the image's height and width.
        n_layer: Transformer blocks.
        n_head: Attention heads; must divide ``n_embd``.
        n_embd: Width.
        dropout: Dropout in the blocks and on the embeddings.
        bias: Biases in linear layers and LayerNorms.
        pooling: ``cls`` token or ``mean`` of the patch tokens.
        **kwargs: Optimizer, scheduler, ``label_smoothing``, ``pretrained``, ``backbone_lr_factor``
            (:class:`~lightning_models.base.ClassifierModule`) and the fine-tuning methods
            (:class:`~lightning_models.peft.FinetuneMethods`).
    """

    embedding_names = ("backbone.patch_embed", "backbone.cls_token", "backbone.pos_embed")
    blocks_name = "backbone.h"
    head_names = ("head",)

    def __init__(
        self,
        patch_size: int = 4,
        n_layer: int = 6,
        n_head: int = 4,
        n_embd: int = 128,
        dropout: float = 0.0,
        bias: bool = True,
        pooling: Literal["cls", "mean"] = "cls",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if len(self.input_shape) != 3:
            raise ValueError(f"ViT reads images (channels, height, width); the data's samples are {self.input_shape}")
        _, height, width = self.input_shape
        if patch_size < 1 or height % patch_size or width % patch_size:
            raise ValueError(
                f"model.patch_size {patch_size} must divide the {height}x{width} images into whole patches; e.g. "
                f"{', '.join(str(p) for p in range(2, min(height, width) + 1) if not height % p and not width % p)}"
            )
        if n_embd % n_head:
            raise ValueError(f"model.n_embd ({n_embd}) must be divisible by model.n_head ({n_head})")
        if pooling not in ("cls", "mean"):
            raise ValueError(f"model.pooling must be cls or mean, got {pooling!r}")
        self.backbone = ViTBackbone(self.input_shape, patch_size, n_layer, n_head, n_embd, dropout, bias, pooling)
        self.head = nn.Linear(n_embd, self.num_classes)
        init_gpt2_weights(self, n_layer)
        nn.init.normal_(self.backbone.pos_embed, std=0.02)
        self.setup_finetuning()

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` images -> ``(B, num_classes)`` logits."""
        return self.head(self.backbone(x))

    @torch.no_grad()
    def attention_maps(self, x: Tensor) -> Tensor:
        """Attention weights of every layer for images ``x``: ``(n_layer, B, n_head, T, T)``, rows summing to 1.

        ``T`` is the class token (with ``pooling: cls``) followed by the ``gh * gw`` patches row by row. The weights
        are recomputed from each block's own input, exactly as its attention computes them.
        """
        inputs: list[Tensor] = []
        hooks = [b.ln_1.register_forward_hook(lambda m, a, out: inputs.append(out)) for b in self.backbone.h]
        try:
            self.backbone.tokens(x)
        finally:
            for hook in hooks:
                hook.remove()
        maps = []
        for block, h in zip(self.backbone.h, inputs, strict=True):
            B, T, C = h.shape
            heads = block.attn.n_head
            q, k, _ = block.attn.qkv(h).split(C, dim=2)
            q, k = (t.view(B, T, heads, C // heads).transpose(1, 2) for t in (q, k))
            maps.append((q @ k.transpose(-2, -1) / math.sqrt(C // heads)).softmax(dim=-1))
        return torch.stack(maps)
