"""Hugging Face encoder checkpoints (the BERT family) onto zerotune's shared Transformer blocks, and back.

A Hugging Face model folder holds ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``). Its BERT
(``model_type`` ``bert``: BERT, MiniLM and the other BERT-shaped encoders) is a
:class:`~lightning_models.transformer.TransformerBackbone` with BERT's options: post-LayerNorm blocks, erf GELU,
``layer_norm_eps``, an embedding LayerNorm, token-type embeddings and full (non-causal) attention. The options come
from ``config.json`` (:func:`backbone_options`); the weights differ in three ways (:func:`from_hf`):

* names: ``embeddings.word_embeddings`` is ``wte``, ``encoder.layer.N.attention.output.dense`` is ``h.N.attn.proj``,
  ``intermediate.dense`` is ``mlp.fc``, and so on (:data:`EMBEDDINGS`, :data:`LAYER`);
* the separate ``query``, ``key`` and ``value`` projections are one fused ``attn.qkv`` (concatenated in that order);
* what is not the encoder is left out: the pooler, the ``position_ids`` buffer, and the heads of
  ``BertForSequenceClassification`` (``classifier.*``) and ``BertForMaskedLM`` (``cls.*``), whose encoder keys sit
  under ``bert.``.

The loaded backbone returns ``BertModel``'s ``last_hidden_state``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fileio.checkpoints import load_state_dict_file
from fileio.errors import DataError
from lightning_models.checkpoints import StateDictDiff
from lightning_models.transformer import TransformerBackbone

#: ``model_type`` values of ``config.json`` this module converts.
SUPPORTED = ("bert",)
#: Weights files of a model folder, the first found is read.
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")
#: ``hidden_act`` -> the MLP's activation.
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
#: BERT's defaults for what a ``config.json`` may leave out (``BertConfig``'s); sizes are always read from the file.
DEFAULTS = {
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "position_embedding_type": "absolute",
}
#: zerotune embedding key -> Hugging Face key (under ``BertModel``).
EMBEDDINGS = {
    "wte.weight": "embeddings.word_embeddings.weight",
    "wpe.weight": "embeddings.position_embeddings.weight",
    "wtype.weight": "embeddings.token_type_embeddings.weight",
    "ln_e.weight": "embeddings.LayerNorm.weight",
    "ln_e.bias": "embeddings.LayerNorm.bias",
}
#: zerotune name inside block ``h.N.`` -> Hugging Face name inside ``encoder.layer.N.`` (``attn.qkv`` is split).
LAYER = {
    "attn.proj.": "attention.output.dense.",
    "ln_1.": "attention.output.LayerNorm.",
    "mlp.fc.": "intermediate.dense.",
    "mlp.proj.": "output.dense.",
    "ln_2.": "output.LayerNorm.",
}
#: The fused projection's parts, in its order.
QKV = ("query", "key", "value")
#: Hugging Face keys (after ``bert.``) that are not the encoder: the pooler, buffers and task heads.
NOT_ENCODER = ("pooler.", "embeddings.position_ids", "cls.", "classifier.")


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """A model folder's ``config.json``, checked to be of a supported ``model_type``.

    Raises:
        DataError: no such file, not JSON, or a ``model_type`` other than :data:`SUPPORTED`.
    """
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise DataError(f"'{path}' not found: a Hugging Face model folder holds config.json beside its weights")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read '{path}': {err}") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in SUPPORTED:
        raise DataError(
            f"'{path}' is of model_type '{model_type}', which zerotune cannot convert; "
            f"supported: {', '.join(SUPPORTED)}"
        )
    return config


def backbone_options(config: Mapping[str, Any], source: str = "config.json") -> dict[str, Any]:
    """:class:`~lightning_models.transformer.TransformerBackbone`'s arguments for a BERT ``config.json``.

    Raises:
        DataError: a size missing, an activation or position embedding zerotune does not have.
    """
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                           "intermediate_size", "max_position_embeddings") if k not in config]  # fmt: skip
    if missing:
        raise DataError(f"'{source}' does not give {', '.join(missing)}: not a complete BERT config")
    get = {**DEFAULTS, **config}.get
    if get("hidden_act") not in ACTIVATIONS:
        raise DataError(
            f"'{source}' has hidden_act '{get('hidden_act')}'; zerotune's blocks have {', '.join(ACTIVATIONS)}"
        )
    if get("position_embedding_type") != "absolute":
        raise DataError(
            f"'{source}' has position_embedding_type '{get('position_embedding_type')}'; zerotune's blocks have "
            "absolute (learned) positions only"
        )
    return {
        "vocab_size": get("vocab_size"),
        "block_size": get("max_position_embeddings"),
        "n_layer": get("num_hidden_layers"),
        "n_head": get("num_attention_heads"),
        "n_embd": get("hidden_size"),
        "dropout": get("hidden_dropout_prob"),
        "bias": True,
        "causal": False,
        "norm_first": False,
        "mlp_hidden": get("intermediate_size"),
        "activation": ACTIVATIONS[get("hidden_act")],
        "eps": get("layer_norm_eps"),
        "embedding_norm": True,
        "type_vocab_size": get("type_vocab_size"),
    }


def to_hf(state: Mapping[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """A BERT-configured backbone's tensors (keys under ``prefix``) as ``BertModel`` keys, ``attn.qkv`` split."""
    out: dict[str, Tensor] = {}
    for key, tensor in state.items():
        if not key.startswith(prefix) or ".lora_" in key:
            continue
        name = key[len(prefix) :]
        block = re.match(r"h\.(\d+)\.(.+)", name)
        if name in EMBEDDINGS:
            out[EMBEDDINGS[name]] = tensor
        elif block and block.group(2).startswith("attn.qkv."):
            kind = block.group(2).removeprefix("attn.qkv.")
            # (3 * C, ...) -> three (C, ...) in q, k, v order.
            for part, piece in zip(QKV, tensor.chunk(3, dim=0), strict=True):
                out[f"encoder.layer.{block.group(1)}.attention.self.{part}.{kind}"] = piece.contiguous()
        elif block:
            inner = block.group(2)
            ours = next((n for n in LAYER if inner.startswith(n)), None)
            inner = LAYER[ours] + inner.removeprefix(ours) if ours else inner
            out[f"encoder.layer.{block.group(1)}.{inner}"] = tensor
        else:
            out[name] = tensor  # no BERT counterpart: named as it is, so a comparison reports it
    return out


def from_hf(state: Mapping[str, Tensor], backbone: TransformerBackbone, source: str) -> dict[str, Tensor]:
    """Hugging Face BERT tensors (``BertModel``'s keys, or ``bert.``-prefixed ones with a task head) as
    ``backbone``'s keys, ``query``/``key``/``value`` fused into ``attn.qkv``.

    Args:
        state: The file's tensors.
        backbone: The BERT-configured backbone (its keys and shapes are checked first).
        source: The file, named in errors.

    Raises:
        DataError: when the file's keys or shapes do not fit ``backbone`` exactly, naming the differing keys (as
            the file names them) and both shapes.
    """
    prefixed = any(k.startswith("bert.") for k in state)
    found: dict[str, Tensor] = {}
    for key, tensor in state.items():
        # Checkpoints saved by the original BERT code name the LayerNorms' parameters gamma and beta.
        name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key))
        name = name.removeprefix("bert.") if prefixed else name
        if not name.startswith(NOT_ENCODER):
            found[name] = tensor
    # Compared under the file's names, so an error names the keys as the user's file has them.
    expected = {k: tuple(v.shape) for k, v in to_hf(backbone.state_dict()).items()}
    shapes = {k: tuple(v.shape) for k, v in found.items()}
    diff = StateDictDiff(
        missing=[k for k in expected if k not in shapes],
        unexpected=[k for k in shapes if k not in expected],
        mismatched=[(k, s, expected[k]) for k, s in shapes.items() if expected.get(k, s) != s],
    )
    if diff:
        raise DataError(
            f"'{source}' does not fit {type(backbone).__name__} (a checkpoint of another architecture or "
            f"configuration?): {diff.describe()}. The weights must be those of the config.json beside them"
        )
    out: dict[str, Tensor] = {}
    for ours, theirs in EMBEDDINGS.items():
        if theirs in found:
            out[ours] = found[theirs]
    for i in range(len(backbone.h)):
        layer = f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            parts = [found[f"{layer}attention.self.{part}.{kind}"] for part in QKV]
            out[f"h.{i}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)
        for new, old in LAYER.items():
            for kind in ("weight", "bias"):
                out[f"h.{i}.{new}{kind}"] = found[f"{layer}{old}{kind}"]
    return out


def load_hf_encoder(folder: str | os.PathLike) -> TransformerBackbone:
    """The encoder of a Hugging Face model folder as a zerotune backbone with its weights, in eval mode on the CPU.

    ``config.json`` gives the shape (:func:`backbone_options`); the weights are ``model.safetensors`` or, without
    it, ``pytorch_model.bin`` (read weights-only: tensors, never code). Call it as
    ``backbone(input_ids, attn_mask=attention_mask.bool()[:, None, None, :], token_type_ids=token_type_ids)`` for
    ``BertModel``'s ``last_hidden_state``.

    Raises:
        DataError: a missing or unsupported config, no weights file, an unreadable one, or weights that do not fit.
    """
    folder = Path(folder)
    config = read_config(folder)
    backbone = TransformerBackbone(**backbone_options(config, str(folder / "config.json")))
    weights = next((folder / name for name in WEIGHTS_FILES if (folder / name).is_file()), None)
    if weights is None:
        raise DataError(f"'{folder}' holds no weights: expected {' or '.join(WEIGHTS_FILES)} beside config.json")
    state = load_state_dict_file(weights, trust=False)
    backbone.load_state_dict(from_hf(state, backbone, str(weights)))
    return backbone.eval()
