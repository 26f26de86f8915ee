"""Sequence classifier: a pooled linear head on a GPT or BERT-style Transformer body, pre-trained or from scratch.

The body is :class:`~lightning_models.transformer.TransformerBackbone` under ``self.backbone``: causal, as in
:class:`~lightning_models.GPT` (pooled at the last token, or averaged), or bidirectional, as in
:class:`~lightning_models.BERT` (pooled at the first token, or averaged). ``--model.pretrained`` takes a GPT or BERT
checkpoint of the same shape (their ``transformer.*`` weights load into ``backbone.*``; the language-model head is
left out) or Hugging Face GPT-2 weights; the linear ``head`` starts fresh. As a
:class:`~lightning_models.base.ClassifierModule` it has accuracy and macro-F1, the confusion matrix with class names
in TensorBoard, checkpoints and ONNX export; the fine-tuning methods (``finetune``: full, partial, lora) come from
:class:`~lightning_models.peft.FinetuneMethods`.

Inputs are ``(B, T)`` token ids, right-padded with negative ids (``-1``,
:data:`datamodules.text_classification.PAD_ID`): padding is never attended to (the encoder masks it; causal
attention never looks ahead) and never pooled.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from datamodules.base import DataModule
from lightning_models.base import ClassifierModule
from lightning_models.peft import FinetuneMethods
from lightning_models.transformer import TransformerBackbone, init_gpt2_weights

Pooling = Literal["last", "first", "mean"]


class SequenceClassifier(FinetuneMethods, ClassifierModule):
    """Transformer body, pooling and a linear head: ``(B, T)`` token ids -> ``(B, num_classes)`` logits.

    Args:
        vocab_size: The tokenizer's vocabulary (linked from the datamodule); a bidirectional body has one more
            embedding row, BERT's ``[MASK]``, so BERT checkpoints load.
        block_size: Longest sequence (linked from the datamodule); the position table of a pre-trained model with
            a longer context is cropped to it.
        n_layer: Transformer blocks (as the pre-trained model).
        n_head: Attention heads (as the pre-trained model).
        n_embd: Width (as the pre-trained model).
        dropout: Dropout in the body and before the head.
        bias: Biases in linear layers and LayerNorms (as the pre-trained model).
        causal: ``true``: GPT's causal body; ``false``: a BERT-style encoder.
        pooling: ``last`` token (the only one that has read the whole text in a causal body), ``first`` token
            (encoder), or ``mean`` over the tokens; default ``last`` for causal bodies and ``mean`` for encoders.
        activation_checkpointing: Recompute each block's activations in the backward pass (less memory).
        **kwargs: Optimizer, ``pretrained``, ``backbone_lr_factor`` (:class:`~lightning_models.base.TaskModule`),
            ``label_smoothing``, and the fine-tuning methods (:class:`~lightning_models.peft.FinetuneMethods`).
    """

    embedding_names = ("backbone.wte", "backbone.wpe")
    blocks_name = "backbone.h"
    head_names = ("head",)
    hf_gpt2_prefix = "backbone."
    #: GPT and BERT checkpoints keep their body under ``transformer.``.
    pretrained_key_map = {"transformer.": "backbone."}
    onnx_dynamic_axes = {0: "batch", 1: "sequence"}

    def __init__(
        self,
        vocab_size: int = 4096,
        block_size: int = 128,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 128,
        dropout: float = 0.0,
        bias: bool = True,
        causal: bool = True,
        pooling: Pooling | None = None,
        activation_checkpointing: bool = False,
        **kwargs: Any,
    ) -> None:
        if n_embd % n_head:
            raise ValueError(f"model.n_embd ({n_embd}) must be divisible by model.n_head ({n_head})")
        if pooling == "first" and causal:
            raise ValueError(
                "model.pooling first with a causal body: the first token has read nothing else; use last or mean"
            )
        kwargs.setdefault("input_shape", (block_size,))
        super().__init__(**kwargs)
        self.causal = causal
        self.pooling: Pooling = pooling or ("last" if causal else "mean")
        self.backbone = TransformerBackbone(
            vocab_size + (0 if causal else 1), block_size, n_layer, n_head, n_embd, dropout, bias, causal,
            activation_checkpointing,
        )  # fmt: skip
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(n_embd, self.num_classes)
        init_gpt2_weights(self, n_layer)
        self.example_input_array = torch.zeros(2, block_size, dtype=torch.long)
        self.setup_finetuning()

    def features(self, idx: Tensor) -> Tensor:
        """``(B, T)`` ids, negative for padding -> ``(B, n_embd)`` pooled states (what the head reads)."""
        valid = idx >= 0
        ids = idx.clamp(min=0)
        # The encoder must not attend to padding; causal attention at real positions never reaches it (right-padded).
        h = self.backbone(ids, attn_mask=None if self.causal else valid[:, None, None, :])
        if self.pooling == "first":
            return h[:, 0]
        if self.pooling == "mean":
            weights = valid.unsqueeze(-1).to(h.dtype)
            return (h * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        last = valid.sum(dim=1).clamp(min=1) - 1
        return h[torch.arange(h.shape[0], device=h.device), last]

    def forward(self, idx: Tensor) -> Tensor:
        """``(B, T)`` ids -> ``(B, num_classes)`` logits."""
        return self.head(self.drop(self.features(idx)))

    # -- checkpoints: the class names beside the tokenizer (see TaskModule.on_save_checkpoint) ------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        data = self._trainer.datamodule if self._trainer is not None else None
        names = data.class_names if isinstance(data, DataModule) else None
        if names:
            checkpoint["class_names"] = list(names)
