"""Sequence classifier: a pooled linear head on a GPT or BERT-style Transformer body, pre-trained or from scratch.

The body is :class:`~lightning_models.transformer.TransformerBackbone` under ``self.backbone``: causal, as in
:class:`~lightning_models.GPT` (pooled at the last token, or averaged), or bidirectional, as in
:class:`~lightning_models.BERT` (pooled at the first token, or averaged). ``--model.pretrained`` takes a GPT or BERT
checkpoint of the same shape (their ``transformer.*`` weights load into ``backbone.*``; the language-model head is
left out), Hugging Face GPT-2 weights, or a Hugging Face encoder (BERT, MiniLM, RoBERTa, DistilBERT: a model folder
or ``hf:ORG/NAME``, see :mod:`lightning_models.hf_encoders`), whose body is then built from its ``config.json``
(kept as ``hf_config``, so the run's checkpoints rebuild it without the folder) and whose pooler, and a
``BertForSequenceClassification``'s head, load too; otherwise the linear ``head`` starts fresh. As a
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
from fileio.hub import is_model_folder, resolve_source
from lightning_models.base import ClassifierModule
from lightning_models.hf_encoders import backbone_options, from_hf, from_hf_head, read_config
from lightning_models.peft import FinetuneMethods
from lightning_models.transformer import TransformerBackbone, init_gpt2_weights

Pooling = Literal["last", "first", "mean", "pooler"]


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
        causal: ``true``: GPT's causal body; ``false``: a BERT-style encoder (always, for a Hugging Face body).
        pooling: ``last`` token (the only one that has read the whole text in a causal body), ``first`` token
            (an encoder's ``[CLS]``), ``mean`` over the real tokens, or ``pooler``: BERT's pooler (a dense layer
            and tanh on the first token; the checkpoint's own where it has one, and what a Hugging Face export
            needs); default ``last`` for causal bodies and ``mean`` for encoders.
        activation_checkpointing: Recompute each block's activations in the backward pass (less memory).
        hf_config: The Hugging Face ``config.json`` the body is built from; filled from ``pretrained`` when that
            is a Hugging Face model (the sizes above are then the file's), kept in the checkpoints.
        **kwargs: Optimizer, ``pretrained``, ``backbone_lr_factor`` (:class:`~lightning_models.base.TaskModule`),
            ``label_smoothing``, and the fine-tuning methods (:class:`~lightning_models.peft.FinetuneMethods`).
    """

    embedding_names = ("backbone.wte", "backbone.wpe", "backbone.wtype", "backbone.ln_e")
    blocks_name = "backbone.h"
    head_names = ("head", "pooler")
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
        hf_config: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        pretrained = kwargs.get("pretrained")
        if hf_config is None and is_model_folder(pretrained):
            hf_config = read_config(resolve_source(pretrained))
        body: dict[str, Any] = {}
        if hf_config is not None:  # the pre-trained encoder's shape, from its config.json: no size stated twice
            body = backbone_options(hf_config)
            if vocab_size > body["vocab_size"]:
                raise ValueError(
                    f"the data's tokenizer has {vocab_size} tokens, the Hugging Face model {body['vocab_size']}: "
                    "tokenize with the model's own (data.tokenizer_path: the model folder)"
                )
            positions = body["block_size"] - body.get("position_offset", 0)
            if block_size > positions:
                raise ValueError(
                    f"data.block_size {block_size} is longer than the {positions} positions of the Hugging Face "
                    f"model: pass --data.block_size {positions} or less"
                )
            n_layer, n_head, n_embd, causal = body["n_layer"], body["n_head"], body["n_embd"], False
        if n_embd % n_head:
            raise ValueError(f"model.n_embd ({n_embd}) must be divisible by model.n_head ({n_head})")
        if pooling in ("first", "pooler") and causal:
            raise ValueError(
                f"model.pooling {pooling} with a causal body: the first token has read nothing else; use last or mean"
            )
        kwargs.setdefault("input_shape", (block_size,))
        super().__init__(**kwargs)
        self.causal = causal
        self.pooling: Pooling = pooling or ("last" if causal else "mean")
        if body:
            self.hparams["hf_config"] = hf_config
            body.update(dropout=dropout, activation_checkpointing=activation_checkpointing)
            self.backbone = TransformerBackbone(**body)
        else:
            self.backbone = TransformerBackbone(
                vocab_size + (0 if causal else 1), block_size, n_layer, n_head, n_embd, dropout, bias, causal,
                activation_checkpointing,
            )  # fmt: skip
        self.pooler = nn.Linear(n_embd, n_embd) if self.pooling == "pooler" else None
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
        if self.pooler is not None:
            return torch.tanh(self.pooler(h[:, 0]))
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

    def convert_pretrained(self, state: dict[str, Tensor], source: str) -> dict[str, Tensor]:
        """A Hugging Face encoder's tensors under this model's names (body, pooler, head); others as
        :meth:`~lightning_models.peft.FinetuneMethods.convert_pretrained` maps them."""
        config = self.hparams.get("hf_config")
        if config is None:
            return super().convert_pretrained(state, source)
        model_type = config.get("model_type", "bert")
        body = from_hf(state, self.backbone, source, model_type)
        return {**{f"backbone.{k}": v for k, v in body.items()}, **from_hf_head(state, model_type)}

    # -- checkpoints: the class names beside the tokenizer (see TaskModule.on_save_checkpoint) ------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        data = self._trainer.datamodule if self._trainer is not None else None
        names = data.class_names if isinstance(data, DataModule) else None
        if names:
            checkpoint["class_names"] = list(names)
