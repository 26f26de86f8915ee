"""Hugging Face encoder checkpoints (BERT, RoBERTa, DistilBERT) onto zerotune's shared Transformer blocks, and back.

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

The loaded backbone returns ``BertModel``'s ``last_hidden_state``. RoBERTa and DistilBERT are the same blocks under
other names (one :class:`Family` each, :data:`FAMILIES`): RoBERTa's keys are BERT's (under ``roberta.``) and its
positions start at row ``pad_token_id + 1`` of its table (the backbone's ``position_offset``, exact for right-padded
input, as RoBERTa skips padding ids when counting positions); DistilBERT has no token types, LayerNorm epsilon 1e-12
and ``transformer.layer.N.attention.q_lin``-style names.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fileio.checkpoints import load_state_dict_file
from fileio.errors import DataError
from fileio.hub import weights_file
from lightning_models.checkpoints import StateDictDiff
from lightning_models.transformer import TransformerBackbone

#: ``hidden_act`` (DistilBERT: ``activation``) -> the MLP's activation.
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


@dataclass(frozen=True)
class Family:
    """How one Hugging Face encoder family's ``config.json`` and weights map onto a
    :class:`~lightning_models.transformer.TransformerBackbone`.

    Attributes:
        prefix: The encoder's keys in a file with a task head sit under this (``bert.``).
        sizes: Backbone argument -> the ``config.json`` key that must give it.
        options: Backbone argument -> the ``config.json`` key that may give it (else from ``defaults``).
        defaults: The family's ``PretrainedConfig`` defaults for the keys a ``config.json`` may leave out.
        fixed: Backbone arguments the family does not configure.
        required: ``config.json`` key -> (the only value zerotune converts, what zerotune's blocks have instead).
        positions_after_padding: Position 0 reads row ``pad_token_id + 1`` of the position table (RoBERTa).
        embeddings: zerotune embedding key -> the file's key (after ``prefix``).
        layers: The file's blocks are ``{layers}N.``.
        qkv: The file's query, key and value projections inside a block, fused into ``attn.qkv`` in this order.
        layer: zerotune name inside block ``h.N.`` -> the file's name inside ``{layers}N.``.
        not_encoder: The file's keys (after ``prefix``) that are not the encoder: poolers, buffers, task heads.
        pooler: The pooler's dense layer (after ``prefix``), read with tanh from the first token; ``None``: none.
        classifier: The sequence-classification head's output layer (no prefix), the one after the pooler.
        pooler_in_classifier: The pooler sits in the classification head (``classifier.dense``, RoBERTa's) rather
            than in the encoder model.
        architecture: ``config.json``'s ``architectures`` entry of the sequence classifier.
    """

    prefix: str
    sizes: Mapping[str, str]
    options: Mapping[str, str]
    defaults: Mapping[str, Any]
    fixed: Mapping[str, Any]
    required: Mapping[str, tuple[Any, str]]
    positions_after_padding: bool
    embeddings: Mapping[str, str]
    layers: str
    qkv: tuple[str, str, str]
    layer: Mapping[str, str]
    not_encoder: tuple[str, ...]
    pooler: str | None = "pooler.dense."
    classifier: str | None = "classifier."
    pooler_in_classifier: bool = False
    architecture: str = "BertForSequenceClassification"


#: BERT's ``config.json`` keys for the backbone's sizes (RoBERTa's too).
BERT_SIZES = {
    "vocab_size": "vocab_size",
    "block_size": "max_position_embeddings",
    "n_layer": "num_hidden_layers",
    "n_head": "num_attention_heads",
    "n_embd": "hidden_size",
    "mlp_hidden": "intermediate_size",
}
BERT_OPTIONS = {
    "dropout": "hidden_dropout_prob",
    "activation": "hidden_act",
    "eps": "layer_norm_eps",
    "type_vocab_size": "type_vocab_size",
}
BERT_DEFAULTS = {
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "position_embedding_type": "absolute",
}
ABSOLUTE = {"position_embedding_type": ("absolute", "absolute (learned) positions only")}
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
QKV = ("attention.self.query", "attention.self.key", "attention.self.value")
BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")

#: BERT (and MiniLM and the other BERT-shaped encoders).
BERT = Family(
    prefix="bert.",
    sizes=BERT_SIZES,
    options=BERT_OPTIONS,
    defaults=BERT_DEFAULTS,
    fixed={},
    required=ABSOLUTE,
    positions_after_padding=False,
    embeddings=EMBEDDINGS,
    layers="encoder.layer.",
    qkv=QKV,
    layer=LAYER,
    not_encoder=("pooler.", *BUFFERS, "cls.", "classifier."),
)
#: ``model_type`` -> its family: BERT; RoBERTa, BERT's layout whose positions start after its padding id;
#: DistilBERT, BERT's blocks under other names, without token types.
FAMILIES = {
    "bert": BERT,
    "roberta": replace(
        BERT,
        prefix="roberta.",
        defaults={**BERT_DEFAULTS, "pad_token_id": 1},
        positions_after_padding=True,
        not_encoder=("pooler.", *BUFFERS, "lm_head.", "classifier."),
        # RobertaClassificationHead: dense and tanh on <s> (BERT's pooler, inside the head), then out_proj.
        pooler="classifier.dense.",
        classifier="classifier.out_proj.",
        pooler_in_classifier=True,
        architecture="RobertaForSequenceClassification",
    ),
    "distilbert": Family(
        prefix="distilbert.",
        sizes={
            "vocab_size": "vocab_size",
            "block_size": "max_position_embeddings",
            "n_layer": "n_layers",
            "n_head": "n_heads",
            "n_embd": "dim",
            "mlp_hidden": "hidden_dim",
        },
        options={"dropout": "dropout", "activation": "activation"},
        defaults={"dropout": 0.1, "activation": "gelu", "sinusoidal_pos_embds": False},
        # DistilBERT's LayerNorms have BERT's epsilon written into the code, not the config.
        fixed={"eps": 1e-12, "type_vocab_size": 0},
        required={"sinusoidal_pos_embds": (False, "learned positions only (sinusoidal_pos_embds false)")},
        positions_after_padding=False,
        embeddings={k: v for k, v in EMBEDDINGS.items() if not k.startswith("wtype.")},
        layers="transformer.layer.",
        qkv=("attention.q_lin", "attention.k_lin", "attention.v_lin"),
        layer={
            "attn.proj.": "attention.out_lin.",
            "ln_1.": "sa_layer_norm.",
            "mlp.fc.": "ffn.lin1.",
            "mlp.proj.": "ffn.lin2.",
            "ln_2.": "output_layer_norm.",
        },
        not_encoder=(
            *BUFFERS,
            "pre_classifier.",
            "classifier.",
            "vocab_transform.",
            "vocab_layer_norm.",
            "vocab_projector.",
            "qa_outputs.",
        ),  # fmt: skip
        # DistilBERT's classifier reads pre_classifier with ReLU: no pooler zerotune's head can stand for.
        pooler=None,
        classifier=None,
        architecture="DistilBertForSequenceClassification",
    ),
}
#: ``model_type`` values of ``config.json`` this module converts.
SUPPORTED = tuple(FAMILIES)


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
    """:class:`~lightning_models.transformer.TransformerBackbone`'s arguments for a ``config.json`` of a supported
    ``model_type`` (BERT's when it names none).

    Raises:
        DataError: a size missing, an activation or position embedding zerotune does not have.
    """
    family = FAMILIES[config.get("model_type", "bert")]
    missing = [k for k in family.sizes.values() if k not in config]
    if missing:
        raise DataError(
            f"'{source}' does not give {', '.join(missing)}: not a complete {config.get('model_type')} config"
        )
    get = {**family.defaults, **config}.get
    for key, (value, instead) in family.required.items():
        if get(key) != value:
            shown = f"'{get(key)}'" if isinstance(get(key), str) else json.dumps(get(key))
            raise DataError(f"'{source}' has {key} {shown}; zerotune's blocks have {instead}")
    act = family.options["activation"]
    if get(act) not in ACTIVATIONS:
        raise DataError(f"'{source}' has {act} '{get(act)}'; zerotune's blocks have {', '.join(ACTIVATIONS)}")
    options = {ours: get(theirs) for ours, theirs in {**family.sizes, **family.options}.items()}
    options["activation"] = ACTIVATIONS[options["activation"]]
    if family.positions_after_padding:
        options["position_offset"] = get("pad_token_id") + 1
    return {**options, **family.fixed, "bias": True, "causal": False, "norm_first": False, "embedding_norm": True}


def to_hf(state: Mapping[str, Tensor], prefix: str = "", model_type: str = "bert") -> dict[str, Tensor]:
    """A backbone's tensors (keys under ``prefix``) as the Hugging Face keys of ``model_type``'s encoder
    (``BertModel``'s, ...), ``attn.qkv`` split."""
    family = FAMILIES[model_type]
    out: dict[str, Tensor] = {}
    for key, tensor in state.items():
        if not key.startswith(prefix) or ".lora_" in key:
            continue
        name = key[len(prefix) :]
        block = re.match(r"h\.(\d+)\.(.+)", name)
        if name in family.embeddings:
            out[family.embeddings[name]] = tensor
        elif block and block.group(2).startswith("attn.qkv."):
            kind = block.group(2).removeprefix("attn.qkv.")
            # (3 * C, ...) -> three (C, ...) in q, k, v order.
            for part, piece in zip(family.qkv, tensor.chunk(3, dim=0), strict=True):
                out[f"{family.layers}{block.group(1)}.{part}.{kind}"] = piece.contiguous()
        elif block:
            inner = block.group(2)
            ours = next((n for n in family.layer if inner.startswith(n)), None)
            inner = family.layer[ours] + inner.removeprefix(ours) if ours else inner
            out[f"{family.layers}{block.group(1)}.{inner}"] = tensor
        else:
            out[name] = tensor  # no counterpart in the file: named as it is, so a comparison reports it
    return out


def from_hf(
    state: Mapping[str, Tensor], backbone: TransformerBackbone, source: str, model_type: str = "bert"
) -> dict[str, Tensor]:
    """Hugging Face tensors of ``model_type`` (the encoder's keys, or prefixed ones with a task head:
    ``bert.``, ``roberta.``, ``distilbert.``) as ``backbone``'s keys, query/key/value fused into ``attn.qkv``.

    Args:
        state: The file's tensors.
        backbone: The backbone configured from the file's ``config.json`` (its keys and shapes are checked first).
        source: The file, named in errors.
        model_type: The family (:data:`FAMILIES`).

    Raises:
        DataError: when the file's keys or shapes do not fit ``backbone`` exactly, naming the differing keys (as
            the file names them) and both shapes.
    """
    family = FAMILIES[model_type]
    prefixed = any(k.startswith(family.prefix) for k in state)
    found: dict[str, Tensor] = {}
    for key, tensor in state.items():
        # Checkpoints saved by the original BERT code name the LayerNorms' parameters gamma and beta.
        name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key))
        name = name.removeprefix(family.prefix) if prefixed else name
        if not name.startswith(family.not_encoder):
            found[name] = tensor
    # Compared under the file's names, so an error names the keys as the user's file has them.
    expected = {k: tuple(v.shape) for k, v in to_hf(backbone.state_dict(), model_type=model_type).items()}
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
    for ours, theirs in family.embeddings.items():
        if theirs in found:
            out[ours] = found[theirs]
    for i in range(len(backbone.h)):
        layer = f"{family.layers}{i}."
        for kind in ("weight", "bias"):
            out[f"h.{i}.attn.qkv.{kind}"] = torch.cat([found[f"{layer}{part}.{kind}"] for part in family.qkv], dim=0)
            for new, old in family.layer.items():
                out[f"h.{i}.{new}{kind}"] = found[f"{layer}{old}{kind}"]
    return out


def from_hf_head(state: Mapping[str, Tensor], model_type: str = "bert") -> dict[str, Tensor]:
    """The pooler (``pooler.weight``, ``pooler.bias``) and classification head (``head.*``) of a Hugging Face file,
    as :class:`~lightning_models.SequenceClassifier` names them; those the file or family lacks are left out."""
    family = FAMILIES[model_type]
    out: dict[str, Tensor] = {}
    for ours, theirs in (("pooler.", family.pooler), ("head.", family.classifier)):
        if theirs is None:
            continue
        prefixes = (theirs,) if family.pooler_in_classifier or ours == "head." else (theirs, family.prefix + theirs)
        for kind in ("weight", "bias"):
            key = next((p + kind for p in prefixes if p + kind in state), None)
            if key is not None:
                out[ours + kind] = state[key]
    return out


def to_hf_classifier(
    state: Mapping[str, Tensor], config: Mapping[str, Any], class_names: list[str]
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A :class:`~lightning_models.SequenceClassifier`'s tensors (``backbone.``, ``pooler.``, ``head.``) and its
    body's ``config.json`` as a Hugging Face ``...ForSequenceClassification``'s weights and config.

    Raises:
        DataError: a family whose classification head is not a pooler and a linear layer (DistilBERT's).
    """
    model_type = config.get("model_type", "bert")
    family = FAMILIES[model_type]
    if family.pooler is None or family.classifier is None:
        raise DataError(
            f"a {model_type} classifier has no Hugging Face counterpart of zerotune's pooler and head; export BERT "
            "or RoBERTa bodies (or export to ONNX)"
        )
    out = {family.prefix + k: v for k, v in to_hf(state, "backbone.", model_type).items()}
    pooler = family.pooler if family.pooler_in_classifier else family.prefix + family.pooler
    for kind in ("weight", "bias"):
        out[pooler + kind] = state[f"pooler.{kind}"]
        out[family.classifier + kind] = state[f"head.{kind}"]
    labels = {str(i): name for i, name in enumerate(class_names)}
    hf_config = {
        **config,
        "architectures": [family.architecture],
        "num_labels": len(class_names),
        "id2label": labels,
        "label2id": {name: int(i) for i, name in labels.items()},
    }
    return out, hf_config


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
    weights = weights_file(folder)
    state = load_state_dict_file(weights, trust=False)
    backbone.load_state_dict(from_hf(state, backbone, str(weights), config["model_type"]))
    return backbone.eval()
