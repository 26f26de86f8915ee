"""The Transformer parts every zerotune Transformer shares: attention, MLP, the block, the token backbone.

GPT (:mod:`lightning_models.gpt`) stacks them with a causal mask; a BERT-style encoder uses the same
:class:`TransformerBackbone` with ``causal=False`` and a ViT the same :class:`Block` over patch embeddings. Module
names follow GPT-2's layout (``wte``, ``wpe``, ``h.N.ln_1``, ``h.N.attn``, ``h.N.ln_2``, ``h.N.mlp``, ``ln_f``), so
GPT-2 weights map onto them with a few renames, and adapter targets read naturally: ``attn.qkv``, ``attn.proj``,
``mlp.fc``, ``mlp.proj``.

The defaults are GPT-2's (pre-LayerNorm, tanh GELU, LayerNorm epsilon 1e-5, a final ``ln_f``). BERT's encoders are
options of the same parts, not a copy of them: ``norm_first=False`` (post-LayerNorm: the norm after the residual add,
and no ``ln_f``), ``activation="gelu"`` (erf GELU), ``eps``, ``mlp_hidden`` (BERT's ``intermediate_size``),
``embedding_norm`` (``ln_e``, a LayerNorm over the summed embeddings), ``type_vocab_size`` (``wtype``, segment
embeddings) and ``position_offset`` (RoBERTa's positions start at row 2 of its table);
:mod:`lightning_models.hf_encoders` maps Hugging Face BERT, RoBERTa and DistilBERT checkpoints onto them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

#: The MLP's activations by name: GPT-2's tanh approximation of GELU, and the exact (erf) GELU of BERT.
ACTIVATIONS = {"gelu_tanh": "tanh", "gelu": "none"}


class KVCache:
    """Keys and values of one attention layer for incremental decoding, preallocated up to ``max_len`` positions.

    Args:
        batch: Sequences decoded together.
        n_head: Attention heads.
        head_dim: Size of each head.
        max_len: Most positions the cache holds (the model's ``block_size``).
        device: Where the buffers live.
        dtype: Their dtype (the model's).
    """

    def __init__(
        self, batch: int, n_head: int, head_dim: int, max_len: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.k = torch.zeros(batch, n_head, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        #: Positions filled so far.
        self.length = 0

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append ``(B, H, T, D)`` keys and values; return all cached ones, ``(B, H, length, D)`` each."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.k.shape[2]:
            raise ValueError(f"KV cache holds {self.k.shape[2]} positions, {end} requested")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class Attention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention`` (flash / memory-efficient kernels where
    the device has them).

    Args:
        n_embd: Model width; split into ``n_head`` heads of ``n_embd // n_head``.
        n_head: Attention heads.
        bias: Biases in the projections.
        dropout: Dropout on the attention weights and on the output.
        causal: Each position attends only to itself and earlier ones (GPT); ``False`` attends everywhere (encoder).
    """

    def __init__(self, n_embd: int, n_head: int, bias: bool = True, dropout: float = 0.0, causal: bool = True) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        self.n_head = n_head
        self.causal = causal
        self.dropout = dropout
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, cache: KVCache | None = None, attn_mask: Tensor | None = None) -> Tensor:
        """``(B, T, C) -> (B, T, C)``.

        Args:
            x: Input sequence.
            cache: Keys and values of earlier positions; this call's are appended (incremental decoding).
            attn_mask: Boolean mask broadcastable to ``(B, n_head, T, S)``, ``True`` where attending is allowed
                (e.g. ``(B, 1, 1, S)`` to ignore padding); combined with the causal mask.
        """
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        start = 0  # position of this call's first query
        if cache is not None:
            start = cache.length
            k, v = cache.update(k, v)
        # Decided on Python ints, never on tensor shapes, so tracing and export see one fixed graph.
        is_causal = self.causal and attn_mask is None and start == 0
        if self.causal and not is_causal and (T > 1 or attn_mask is not None):
            # Query i sits at position start + i and sees keys 0 .. start + i.
            allowed = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
            attn_mask = allowed if attn_mask is None else attn_mask & allowed
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0, is_causal=is_causal
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward: ``fc`` to ``hidden``, GELU, ``proj`` back, dropout.

    Args:
        n_embd: Width.
        hidden: Inner width (``4 * n_embd`` when ``None``).
        bias: Biases in both layers.
        dropout: Dropout on the output.
        activation: ``gelu_tanh`` (GPT-2's tanh approximation) or ``gelu`` (the exact erf form, BERT's).
    """

    def __init__(
        self,
        n_embd: int,
        hidden: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        activation: str = "gelu_tanh",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation '{activation}' is not one of {', '.join(ACTIVATIONS)}")
        hidden = hidden or 4 * n_embd
        self.fc = nn.Linear(n_embd, hidden, bias=bias)
        self.act = nn.GELU(approximate=ACTIVATIONS[activation])
        self.proj = nn.Linear(hidden, n_embd, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    """Transformer block. Pre-LayerNorm (GPT-2, the default): ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``;
    post-LayerNorm (BERT, ``norm_first=False``): ``ln_1(x + attn(x))``, then ``ln_2(x + mlp(x))``.

    The unit of activation checkpointing, FSDP wrapping and per-block compilation.

    Args:
        n_embd: Width.
        n_head: Attention heads.
        bias: Biases in the linear layers and LayerNorms.
        dropout: Dropout on the attention weights and on both branches' outputs.
        causal: Causal attention (decoder) or full attention (encoder).
        norm_first: Normalize each branch's input (pre-LN) or the sum after each residual add (post-LN).
        mlp_hidden: The MLP's inner width (``4 * n_embd`` when ``None``).
        activation: The MLP's activation, see :class:`MLP`.
        eps: The LayerNorms' epsilon.
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        bias: bool = True,
        dropout: float = 0.0,
        causal: bool = True,
        *,
        norm_first: bool = True,
        mlp_hidden: int | None = None,
        activation: str = "gelu_tanh",
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.ln_1 = nn.LayerNorm(n_embd, eps=eps, bias=bias)
        self.attn = Attention(n_embd, n_head, bias=bias, dropout=dropout, causal=causal)
        self.ln_2 = nn.LayerNorm(n_embd, eps=eps, bias=bias)
        self.mlp = MLP(n_embd, mlp_hidden, bias=bias, dropout=dropout, activation=activation)

    def forward(self, x: Tensor, cache: KVCache | None = None, attn_mask: Tensor | None = None) -> Tensor:
        if self.norm_first:
            x = x + self.attn(self.ln_1(x), cache=cache, attn_mask=attn_mask)
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.attn(x, cache=cache, attn_mask=attn_mask))
        return self.ln_2(x + self.mlp(x))


class TransformerBackbone(nn.Module):
    """Token and learned position embeddings, ``n_layer`` blocks and a final LayerNorm: ``(B, T)`` ids to
    ``(B, T, n_embd)`` hidden states (GPT-2's ``transformer`` module; with BERT's options, ``BertModel`` without
    its pooler).

    Args:
        vocab_size: Token ids are below this.
        block_size: Most positions (the learned position table's length).
        n_layer: Blocks.
        n_head: Attention heads per block.
        n_embd: Width.
        dropout: Dropout after the embeddings and inside every block.
        bias: Biases in the linear layers and LayerNorms.
        causal: Causal attention (decoder) or full attention (encoder).
        activation_checkpointing: Recompute each block's activations in the backward pass instead of keeping them
            (less memory, about a third more compute).
        norm_first: Pre-LayerNorm blocks and a final ``ln_f`` (GPT-2), or post-LayerNorm blocks (BERT), whose
            last norm ends the stack (``ln_f`` is then the identity and holds no weights).
        mlp_hidden: The MLPs' inner width (``4 * n_embd`` when ``None``).
        activation: The MLPs' activation: ``gelu_tanh`` or ``gelu`` (erf).
        eps: Every LayerNorm's epsilon.
        embedding_norm: A LayerNorm (``ln_e``) over the summed embeddings, before dropout (BERT).
        type_vocab_size: Rows of the token-type (segment) embedding ``wtype`` added to the input (BERT: 2); 0 for
            none.
        position_offset: Row of ``wpe`` that position 0 reads (RoBERTa: 2, its rows 0 and 1 belong to no real
            position); ``block_size - position_offset`` positions fit.
    """

    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        n_layer: int,
        n_head: int,
        n_embd: int,
        dropout: float = 0.0,
        bias: bool = True,
        causal: bool = True,
        activation_checkpointing: bool = False,
        *,
        norm_first: bool = True,
        mlp_hidden: int | None = None,
        activation: str = "gelu_tanh",
        eps: float = 1e-5,
        embedding_norm: bool = False,
        type_vocab_size: int = 0,
        position_offset: int = 0,
    ) -> None:
        super().__init__()
        self.block_size = block_size
        self.position_offset = position_offset
        self.activation_checkpointing = activation_checkpointing
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.wtype = nn.Embedding(type_vocab_size, n_embd) if type_vocab_size else None
        self.ln_e = nn.LayerNorm(n_embd, eps=eps, bias=bias) if embedding_norm else None
        self.drop = nn.Dropout(dropout)
        options = {"norm_first": norm_first, "mlp_hidden": mlp_hidden, "activation": activation, "eps": eps}
        self.h = nn.ModuleList(Block(n_embd, n_head, bias, dropout, causal, **options) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, eps=eps, bias=bias) if norm_first else nn.Identity()

    def forward(
        self,
        idx: Tensor,
        caches: list[KVCache] | None = None,
        attn_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        """``(B, T)`` token ids -> ``(B, T, n_embd)``; with ``caches``, ``idx`` continues the cached positions.

        Args:
            idx: Token ids.
            caches: Key/value caches (incremental decoding), see :meth:`make_caches`.
            attn_mask: Boolean, ``True`` where attending is allowed: ``(B, 1, 1, T)`` keeps padding out of every
                real position's output (a Hugging Face ``attention_mask`` as ``mask.bool()[:, None, None, :]``).
            token_type_ids: ``(B, T)`` segment ids when the model has ``wtype`` (all 0 when ``None``, as BERT).
        """
        start = (caches[0].length if caches else 0) + self.position_offset
        pos = torch.arange(start, start + idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        if self.wtype is not None:
            x = x + (self.wtype.weight[0] if token_type_ids is None else self.wtype(token_type_ids))
        x = self.drop(x if self.ln_e is None else self.ln_e(x))
        for i, block in enumerate(self.h):
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, None, attn_mask, use_reentrant=False)
            else:
                x = block(x, caches[i] if caches else None, attn_mask)
        return self.ln_f(x)

    def make_caches(self, batch: int, device: torch.device, dtype: torch.dtype) -> list[KVCache]:
        """Empty key/value caches for every block, ``block_size`` positions each."""
        attn = self.h[0].attn
        head_dim = self.wte.embedding_dim // attn.n_head
        return [KVCache(batch, attn.n_head, head_dim, self.block_size, device, dtype) for _ in self.h]


def init_gpt2_weights(module: nn.Module, n_layer: int) -> None:
    """GPT-2's initialization: normal(0, 0.02) weights, zero biases, and the residual projections (``*.proj``) scaled
    by ``1 / sqrt(2 * n_layer)`` so the residual stream's variance does not grow with depth."""
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("attn.proj", "mlp.proj")) else 0.02
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
