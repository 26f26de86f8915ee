"""Hugging Face GPT-2 weights onto zerotune's GPT-2 layout, and back.

A GPT-2 ``model.safetensors`` or ``pytorch_model.bin`` (``GPT2Model`` keys such as ``h.0.attn.c_attn.weight``, or
``GPT2LMHeadModel``'s, the same under ``transformer.`` plus ``lm_head.weight``) differs from
:class:`~lightning_models.transformer.TransformerBackbone` in three ways:

* names: ``c_attn`` is ``qkv``, ``c_proj`` is ``proj``, ``c_fc`` is ``fc``;
* Hugging Face's ``Conv1D`` stores ``(in, out)`` weights, ``nn.Linear`` ``(out, in)``: those four are transposed;
* the causal-mask buffers (``attn.bias``, ``attn.masked_bias``) are not weights: dropped.

Everything else (the tanh GELU, LayerNorm epsilon 1e-5, the fused ``q, k, v`` order, tied output layer) is the
same, so a :class:`~lightning_models.GPT` with ``n_layer 12, n_head 12, n_embd 768, block_size 1024, bias true``
and GPT-2's tokenizer (``vocab_size`` 50257) computes what GPT-2 124M computes.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from fileio.errors import DataError
from lightning_models.checkpoints import compare_state_dict

#: Hugging Face name part -> zerotune name part.
RENAMES = (
    ("attn.c_attn.", "attn.qkv."),
    ("attn.c_proj.", "attn.proj."),
    ("mlp.c_fc.", "mlp.fc."),
    ("mlp.c_proj.", "mlp.proj."),
)
#: Weights stored as ``Conv1D`` ``(in, out)`` matrices (Hugging Face names).
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
#: Buffers of the Hugging Face model that are not weights.
BUFFERS = (".attn.bias", ".attn.masked_bias")


def is_hf_gpt2(state: Mapping[str, Tensor]) -> bool:
    """Whether ``state`` has Hugging Face GPT-2's key names."""
    return any(k.endswith("attn.c_attn.weight") for k in state)


def from_hf(state: Mapping[str, Tensor], backbone: nn.Module, prefix: str, source: str) -> dict[str, Tensor]:
    """Hugging Face GPT-2 tensors renamed and transposed into ``backbone``'s keys, each under ``prefix``.

    Args:
        state: The file's tensors.
        backbone: The model's :class:`~lightning_models.transformer.TransformerBackbone` (shapes checked against it).
        prefix: Where the backbone sits in the model, e.g. ``transformer.``.
        source: The file, named in errors.

    Raises:
        DataError: when the file's keys or shapes do not fit ``backbone`` exactly (another size of GPT-2, another
            vocabulary or context length), naming the differing keys and both shapes.
    """
    out: dict[str, Tensor] = {}
    for key, tensor in state.items():
        name = key.removeprefix("transformer.")
        if name == "lm_head.weight" or name.endswith(BUFFERS):
            continue  # the output layer is tied to wte; the buffers are masks
        if name.endswith(CONV1D):
            tensor = tensor.t().contiguous()
        for old, new in RENAMES:
            name = name.replace(old, new)
        out[name] = tensor
    diff = compare_state_dict(backbone, out)
    diff.missing = [k for k in diff.missing if ".lora_" not in k]  # adapters are not in any base file
    if diff:
        raise DataError(
            f"'{source}' does not fit {type(backbone).__name__} (a checkpoint of another architecture or "
            f"configuration?): {diff.describe()}. A GPT-2 file needs the model's n_layer, n_head and n_embd to be "
            "GPT-2's, block_size at most GPT-2's, bias true, and GPT-2's tokenizer.json as data.tokenizer_path"
        )
    return {prefix + k: v for k, v in out.items()}


def to_hf(state: Mapping[str, Tensor], prefix: str = "transformer.") -> dict[str, Tensor]:
    """The inverse of :func:`from_hf`: a model's backbone tensors under ``prefix`` as ``GPT2Model`` keys."""
    out: dict[str, Tensor] = {}
    for key, tensor in state.items():
        if not key.startswith(prefix) or ".lora_" in key:
            continue
        name = key[len(prefix) :]
        for old, new in RENAMES:
            name = name.replace(new, old)
        out[name] = tensor.t().contiguous() if name.endswith(CONV1D) else tensor
    return out
