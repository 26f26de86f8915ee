"""GPT: a decoder-only Transformer language model in GPT-2's layout (nanoGPT's ``model.py`` as a LightningModule).

Token embedding and learned positions, pre-LayerNorm blocks with causal ``scaled_dot_product_attention`` and a GELU
MLP (:mod:`lightning_models.transformer`), a final LayerNorm and an output layer tied to the token embedding;
GPT-2's initialization. Sizes are YAML presets (``experiments/configs/*_gpt*.yaml``), from a model that trains in a
minute on two CPU cores to GPT-2 124M (``n_layer 12, n_head 12, n_embd 768, block_size 1024``).

References: GPT-2 (Radford et al., 2019), nanoGPT (Karpathy), the PaLM paper's FLOPs count (appendix B).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from lightning_models.language_model import CausalLMModule
from lightning_models.peft import FinetuneMethods
from lightning_models.transformer import TransformerBackbone, init_gpt2_weights


class GPT(FinetuneMethods, CausalLMModule):
    """Decoder-only causal language model.

    Args:
        vocab_size: Token vocabulary size (linked from the datamodule's tokenizer).
        block_size: Context length in tokens (linked from the datamodule).
        n_layer: Transformer blocks.
        n_head: Attention heads; must divide ``n_embd``.
        n_embd: Width of the residual stream.
        dropout: Dropout on embeddings, attention weights and block outputs (0 for pre-training on much data).
        bias: Biases in linear layers and LayerNorms (GPT-2 has them; without is a little faster).
        activation_checkpointing: Recompute each block's activations in the backward pass (less memory).
        **kwargs: Optimization settings, see :class:`~lightning_models.language_model.CausalLMModule`; fine-tuning
            methods (``finetune``: full, partial, lora), see :class:`~lightning_models.peft.FinetuneMethods`.
    """

    generates = True

    embedding_names = ("transformer.wte", "transformer.wpe")
    blocks_name = "transformer.h"
    #: Hugging Face GPT-2 files (``model.safetensors``, ``pytorch_model.bin``) load into ``self.transformer``.
    hf_gpt2_prefix = "transformer."

    def __init__(
        self,
        vocab_size: int = 50304,
        block_size: int = 1024,
        n_layer: int = 12,
        n_head: int = 12,
        n_embd: int = 768,
        dropout: float = 0.0,
        bias: bool = True,
        activation_checkpointing: bool = False,
        **kwargs: Any,
    ) -> None:
        if min(n_layer, n_head, n_embd) < 1:
            raise ValueError(f"model.n_layer, n_head and n_embd must be >= 1, got {n_layer}, {n_head}, {n_embd}")
        if n_embd % n_head:
            raise ValueError(
                f"model.n_embd ({n_embd}) must be divisible by model.n_head ({n_head}): every head gets n_embd / "
                f"n_head dimensions; e.g. n_embd {n_head * max(1, round(n_embd / n_head))} or a divisor of {n_embd} "
                "as n_head"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")
        super().__init__(vocab_size=vocab_size, block_size=block_size, **kwargs)
        self.transformer = TransformerBackbone(
            vocab_size, block_size, n_layer, n_head, n_embd, dropout, bias, True, activation_checkpointing
        )
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        # Weight tying (Press & Wolf, 2017): the output layer reads tokens off the input embedding.
        self.lm_head.weight = self.transformer.wte.weight
        init_gpt2_weights(self, n_layer)
        self.setup_finetuning()

    def forward(self, idx: Tensor) -> Tensor:
        """``(B, T)`` token ids, ``T <= block_size`` -> ``(B, T, vocab_size)`` next-token logits."""
        return self.lm_head(self.transformer(idx))

    # -- size and cost -----------------------------------------------------------------------------------------------
    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters (the tied output layer counted once); without the position table by default, as GPT-2 counts."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs (forward and backward) per token at context ``seq_len`` (default ``block_size``):
        ``6 N`` for the weights plus ``12 L H Q T`` for attention (PaLM, appendix B)."""
        hp = self.hparams
        T = seq_len or self.block_size
        return 6 * self.num_params() + 12 * hp.n_layer * hp.n_head * (hp.n_embd // hp.n_head) * T

    def estimate_mfu(self, tokens_per_second: float, peak_flops: float, seq_len: int | None = None) -> float:
        """Model FLOPs utilization: achieved training FLOP/s as a fraction of the device's ``peak_flops``."""
        return self.flops_per_token(seq_len) * tokens_per_second / peak_flops

    # -- generation --------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        idx: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Continue each ``(B, T)`` prompt by ``max_new_tokens`` sampled tokens; returns ``(B, T + max_new_tokens)``.

        See :meth:`generate_stream` for the arguments.
        """
        new = list(self.generate_stream(idx, max_new_tokens, temperature, top_k, top_p, use_cache, generator))
        return torch.cat([idx, *new], dim=1)

    @torch.no_grad()
    def generate_stream(
        self,
        idx: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> Iterator[Tensor]:
        """Yield ``(B, 1)`` sampled tokens one at a time, continuing the ``(B, T)`` prompts ``idx``.

        With ``use_cache`` the keys and values of earlier positions are kept (:class:`KVCache`), so each new token
        costs one position's forward pass. Once the text is longer than ``block_size`` the context slides: the
        model reads the last ``block_size`` tokens, recomputed for every token (learned absolute positions cannot
        shift inside a cache). With and without the cache the tokens are the same.

        Args:
            idx: Prompt token ids, ``1 <= T <= block_size``.
            max_new_tokens: Tokens to generate.
            temperature: Divides the logits; below 1 sharper, above 1 flatter; 0 picks the most likely token.
            top_k: Sample only among the ``top_k`` most likely tokens.
            top_p: Sample only among the most likely tokens whose probabilities add up to ``top_p`` (nucleus).
            use_cache: Keep keys and values of earlier positions.
            generator: Random generator for reproducible samples (on the model's device).

        Raises:
            ValueError: for an empty prompt, one longer than ``block_size``, or invalid sampling settings.
        """
        check_sampling(max_new_tokens, temperature, top_k, top_p)
        if idx.dim() != 2 or idx.shape[1] == 0:
            raise ValueError("the prompt is empty: give at least one token")
        if idx.shape[1] > self.block_size:
            raise ValueError(
                f"the prompt is {idx.shape[1]} tokens long, more than the model's block_size of {self.block_size}: "
                "shorten it"
            )
        was_training = self.training
        self.eval()
        # Compiled blocks would recompile for every cache length: generation runs eagerly.
        eager = torch.compiler.set_stance("force_eager") if self._compiled else contextlib.nullcontext()
        try:
            with eager:
                seq, pending, caches = idx, idx, None
                for _ in range(max_new_tokens):
                    if use_cache and seq.shape[1] <= self.block_size:
                        if caches is None:
                            dtype = self.transformer.wte.weight.dtype
                            caches = self.transformer.make_caches(idx.shape[0], idx.device, dtype)
                        hidden = self.transformer(pending, caches=caches)
                    else:
                        hidden = self.transformer(seq[:, -self.block_size :])
                    logits = self.lm_head(hidden[:, -1, :]).float()
                    pending = sample_next(logits, temperature, top_k, top_p, generator)
                    seq = torch.cat([seq, pending], dim=1)
                    yield pending
        finally:
            self.train(was_training)


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise a ``ValueError`` naming the setting when a sampling setting is out of range."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not math.isfinite(temperature):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0: always the most likely token), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (or unset), got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (or unset), got {top_p}")


def sample_next(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one token per row from ``(B, V)`` logits; returns ``(B, 1)`` ids."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p (the most likely one always stays).
        drop = probs.cumsum(dim=-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(dim=-1), num_samples=1, generator=generator)
