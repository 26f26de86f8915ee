"""BERT-style encoder pre-trained with masked-token prediction, on the same blocks, text data and tokenizers as GPT.

The network is GPT's (:class:`~lightning_models.transformer.TransformerBackbone`) with full attention instead of
the causal mask, and one extra embedding row for the ``[MASK]`` token (id ``vocab_size``, after the tokenizer's own).
Pre-training follows BERT (Devlin et al., 2019) without next-sentence prediction, as RoBERTa does: 15% of the
positions of each window are chosen for prediction; of those 80% are replaced by ``[MASK]``, 10% by a random token
and 10% left as they are (:func:`mask_tokens`); the loss is the cross-entropy at the chosen positions only. The
output layer is BERT's head (dense, GELU, LayerNorm) and a decoder tied to the token embedding.

Training windows come from :class:`~datamodules.TextDataModule` unchanged: the model masks each batch on the device
(dynamic masking: a window is masked differently each time it is drawn). Validation and test masks are drawn from
a generator seeded per batch, so evaluation loss is repeatable. The metrics are those of the language models,
over the predicted positions: ``loss`` (nats per masked token), ``ppl`` and ``bpb``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_models.base import Stage
from lightning_models.language_model import CausalLMModule
from lightning_models.peft import FinetuneMethods
from lightning_models.transformer import TransformerBackbone, init_gpt2_weights

#: Label of positions that are not predicted (cross-entropy's ``ignore_index``).
IGNORE = -100


def mask_tokens(
    ids: Tensor,
    mask_id: int,
    vocab_size: int,
    mask_prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT's masking of a batch of token ids.

    Each position is chosen with probability ``mask_prob`` (at least one per sequence); a chosen position becomes
    ``mask_id`` with probability 0.8, a uniformly random token of ``0 .. vocab_size - 1`` with 0.1, and stays with
    0.1.

    Args:
        ids: ``(B, T)`` token ids.
        mask_id: Id of the ``[MASK]`` token.
        vocab_size: Random replacements are drawn below this.
        mask_prob: Share of positions predicted.
        generator: Random generator (on ``ids``' device); the global one when ``None``.

    Returns:
        The ``(B, T)`` input ids and the ``(B, T)`` labels: the original id at chosen positions, ``-100`` elsewhere.
    """
    draw = torch.rand(ids.shape, generator=generator, device=ids.device)
    chosen = draw < mask_prob
    # A sequence with nothing chosen would add nothing to the loss: its lowest draw is chosen instead.
    none = ~chosen.any(dim=1)
    chosen[none, draw[none].argmin(dim=1)] = True
    labels = ids.masked_fill(~chosen, IGNORE)
    action = torch.rand(ids.shape, generator=generator, device=ids.device)
    random_ids = torch.randint(vocab_size, ids.shape, generator=generator, device=ids.device, dtype=ids.dtype)
    inputs = torch.where(chosen & (action < 0.8), torch.full_like(ids, mask_id), ids)
    inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    return inputs, labels


class BERT(FinetuneMethods, CausalLMModule):
    """Encoder-only Transformer pre-trained by masked-token prediction.

    Args:
        vocab_size: The tokenizer's vocabulary (linked from the datamodule); the embedding has one more row, the
            ``[MASK]`` token.
        block_size: Context length (linked from the datamodule).
        n_layer: Transformer blocks.
        n_head: Attention heads; must divide ``n_embd``.
        n_embd: Width.
        dropout: Dropout on embeddings, attention weights and block outputs (BERT used 0.1).
        bias: Biases in linear layers and LayerNorms.
        mask_prob: Share of positions predicted in each window (BERT: 0.15).
        activation_checkpointing: Recompute each block's activations in the backward pass (less memory).
        **kwargs: Optimization settings (:class:`~lightning_models.language_model.CausalLMModule`) and fine-tuning
            methods (:class:`~lightning_models.peft.FinetuneMethods`).
    """

    embedding_names = ("transformer.wte", "transformer.wpe")
    blocks_name = "transformer.h"

    def __init__(
        self,
        vocab_size: int = 4096,
        block_size: int = 128,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 128,
        dropout: float = 0.1,
        bias: bool = True,
        mask_prob: float = 0.15,
        activation_checkpointing: bool = False,
        **kwargs: Any,
    ) -> None:
        if n_embd % n_head:
            raise ValueError(f"model.n_embd ({n_embd}) must be divisible by model.n_head ({n_head})")
        if not 0.0 < mask_prob < 1.0:
            raise ValueError(f"model.mask_prob must be in (0, 1), got {mask_prob}")
        super().__init__(vocab_size=vocab_size, block_size=block_size, **kwargs)
        self.transformer = TransformerBackbone(
            vocab_size + 1, block_size, n_layer, n_head, n_embd, dropout, bias, False, activation_checkpointing
        )
        # BERT's prediction head: a transform before the decoder, which is tied to the token embedding.
        self.mlm_dense = nn.Linear(n_embd, n_embd, bias=bias)
        self.mlm_ln = nn.LayerNorm(n_embd, bias=bias)
        self.mlm_bias = nn.Parameter(torch.zeros(vocab_size))
        init_gpt2_weights(self, n_layer)
        self._eval_batches = 0
        self.setup_finetuning()

    @property
    def mask_id(self) -> int:
        """Id of the ``[MASK]`` token: the row after the tokenizer's vocabulary."""
        return self.vocab_size

    def forward(self, idx: Tensor) -> Tensor:
        """``(B, T)`` ids (``[MASK]`` allowed) -> ``(B, T, vocab_size)`` logits of the token at each position."""
        return self.token_logits(self.transformer(idx))

    def token_logits(self, h: Tensor) -> Tensor:
        """``(..., n_embd)`` states -> ``(..., vocab_size)`` logits (``[MASK]`` itself is never predicted)."""
        h = self.mlm_ln(F.gelu(self.mlm_dense(h), approximate="tanh"))
        return F.linear(h, self.transformer.wte.weight[: self.vocab_size], self.mlm_bias)

    # -- the task: predict the masked positions ----------------------------------------------------------------------
    def _generator(self, stage: Stage) -> torch.Generator | None:
        """Training draws from the global generator (seeded, saved in checkpoints); evaluation batch ``k`` always
        gets the same mask."""
        if stage == "train":
            return None
        gen = torch.Generator(device=self.device)
        gen.manual_seed(1_000_003 * (self.global_rank + 1) + self._eval_batches)
        self._eval_batches += 1
        return gen

    def on_validation_epoch_start(self) -> None:
        self._eval_batches = 0

    def on_test_epoch_start(self) -> None:
        self._eval_batches = 0

    def shared_step(self, batch: tuple[Tensor, Tensor], stage: Stage) -> Tensor:
        x, _ = batch  # the datamodule's next-token targets are not used: the masked tokens are the targets
        inputs, labels = mask_tokens(x, self.mask_id, self.vocab_size, self.hparams.mask_prob, self._generator(stage))
        chosen = labels != IGNORE
        # The head runs on the predicted positions only (15% of them), not on every position.
        logits = self.token_logits(self.transformer(inputs)[chosen])
        nll = F.cross_entropy(logits, labels[chosen], reduction="sum")
        count = int(chosen.sum())
        loss = nll / count
        if stage == "train":
            if self._is_logging_step():
                self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=x.shape[0])
                self.log("train/ppl", loss.detach().exp(), on_step=True, on_epoch=False, batch_size=x.shape[0])
            return loss
        getattr(self, f"{stage}_metrics").update(nll.detach(), count, self._bytes(labels[chosen]))
        return loss

    # -- size and cost -----------------------------------------------------------------------------------------------
    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters (the tied decoder counted once); without the position table by default."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: ``6 N`` for the weights plus ``12 L H Q T`` for attention (PaLM, appendix B)."""
        hp = self.hparams
        return 6 * self.num_params() + 12 * hp.n_layer * hp.n_embd * (seq_len or self.block_size)
