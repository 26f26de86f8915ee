"""Causal language-modelling task base: next-token cross-entropy, perplexity and bits per byte.

:class:`CausalLMModule` is to language models what :class:`~lightning_models.base.ClassifierModule` is to
classifiers: a subclass builds the network (``forward``: ``(B, T)`` token ids to ``(B, T, vocab_size)`` logits) and
gets the shared step, the metrics, AdamW with weight decay on matrices only and a warmup-cosine schedule by steps.

Metrics, per split and comparable across tokenizers:

* ``loss``: mean next-token cross-entropy in nats per token (over every evaluated token of the split, exactly);
* ``ppl``: perplexity, ``exp(loss)``;
* ``bpb``: bits per byte of text, ``sum of losses / (ln 2 * bytes of the predicted tokens)``: a byte-level and a BPE
  model of the same text are compared on it, not on ``loss``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torchmetrics
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_models.base import OptimizerName, SchedulerName, Stage, TaskModule
from lightning_models.schedules import warmup_cosine as warmup_cosine  # also importable from here, where it was
from lightning_models.schedules import warmup_cosine_scheduler

if TYPE_CHECKING:
    from datamodules.tokenizer import Tokenizer


class LanguageModelStats(torchmetrics.Metric):
    """Summed negative log-likelihood, tokens and bytes of one split; computes ``loss``, ``ppl`` and ``bpb``.

    Sums (not means) are kept and reduced across processes, so the values are exact for the whole split whatever
    the batch and shard sizes.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("nll", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("bytes", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, nll_sum: Tensor, tokens: int, n_bytes: Tensor | int) -> None:
        self.nll += nll_sum.detach().double()
        self.tokens += tokens
        self.bytes += n_bytes

    def compute(self) -> dict[str, Tensor]:
        loss = self.nll / self.tokens.clamp(min=1)
        values = {"loss": loss.float(), "ppl": loss.exp().float()}
        if int(self.bytes) > 0:
            values["bpb"] = (self.nll / (math.log(2) * self.bytes)).float()
        return values


class CausalLMModule(TaskModule):
    """Base for decoder-only language models trained to predict the next token.

    Batches are ``(x, y)``: ``(B, T)`` token ids and the same sequence shifted by one. The datamodule's tokenizer
    is picked up in :meth:`~lightning_models.base.TaskModule.setup`, used for bits per byte and stored in every
    checkpoint as plain data (``checkpoint["tokenizer"]``), so generation and fine-tuning use exactly the one the
    model was trained with.

    Args:
        vocab_size: Size of the token vocabulary (the embedding and output rows). Linked from the datamodule.
        block_size: Longest sequence the model reads. Linked from the datamodule.
        optimizer: ``adamw`` (default), ``adam`` or ``sgd``.
        lr: Peak learning rate.
        weight_decay: Decoupled weight decay, applied to the weight matrices of linear layers only (not to
            embeddings, LayerNorms or biases).
        betas: Adam's ``(beta1, beta2)``; GPT-2 used ``(0.9, 0.95)``.
        scheduler: ``cosine`` is warmup-cosine by optimizer steps (``warmup_steps``, ``lr_decay_steps``,
            ``min_lr_ratio``); ``none``, ``onecycle`` and ``step`` as for every model.
        warmup_steps: Linear warmup length, in optimizer steps.
        lr_decay_steps: Step at which the cosine reaches ``lr * min_lr_ratio`` (then stays); default: the run's
            total optimizer steps (``trainer.max_steps``).
        min_lr_ratio: Final learning rate as a fraction of ``lr``.
        **kwargs: See :class:`~lightning_models.base.TaskModule` (``pretrained``, ``compile``...).
    """

    monitor = "val/loss"
    monitor_mode = "min"
    task = "language_modeling"
    derived_hparams = ("num_classes", "input_shape")
    #: Axes of the input that the ONNX export keeps dynamic: any batch size, any length up to ``block_size``.
    onnx_dynamic_axes = {0: "batch", 1: "sequence"}

    def __init__(
        self,
        vocab_size: int = 256,
        block_size: int = 256,
        optimizer: OptimizerName = "adamw",
        lr: float = 6e-4,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        scheduler: SchedulerName = "cosine",
        warmup_steps: int = 0,
        lr_decay_steps: int | None = None,
        min_lr_ratio: float = 0.1,
        **kwargs: Any,
    ) -> None:
        if vocab_size < 2:
            raise ValueError(f"model.vocab_size must be >= 2, got {vocab_size}")
        if block_size < 1:
            raise ValueError(f"model.block_size must be >= 1, got {block_size}")
        if warmup_steps < 0 or (lr_decay_steps is not None and lr_decay_steps < 1):
            raise ValueError(
                f"model.warmup_steps must be >= 0 and model.lr_decay_steps >= 1, got {warmup_steps}, {lr_decay_steps}"
            )
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"model.min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        super().__init__(
            num_classes=vocab_size,
            input_shape=(block_size,),
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            scheduler=scheduler,
            **kwargs,
        )
        self.vocab_size = vocab_size
        self.block_size = block_size
        self.example_input_array = torch.zeros(2, block_size, dtype=torch.long)
        # Bytes of text each token stands for, for bits per byte; all zero while the tokenizer is unknown.
        self.register_buffer("token_bytes", torch.zeros(vocab_size, dtype=torch.int32), persistent=False)

    # -- the task --------------------------------------------------------------------------------------------------
    def make_metrics(self) -> torchmetrics.MetricCollection:
        return torchmetrics.MetricCollection({"lm": LanguageModelStats()})

    def compute_loss(self, output: Tensor, target: Tensor) -> Tensor:
        """Mean next-token cross-entropy: ``(B, T, V)`` logits against ``(B, T)`` ids."""
        return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))

    def predict_output(self, output: Tensor) -> Tensor:
        """The most likely next token at every position, ``(B, T)``."""
        return output.argmax(dim=-1)

    def shared_step(self, batch: tuple[Tensor, Tensor], stage: Stage) -> Tensor:
        x, y = batch
        loss = self.compute_loss(self(x), y)
        if stage == "train":
            if self._is_logging_step():
                self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=x.shape[0])
                train = {"train/ppl": loss.detach().exp()}
                if self.tokenizer is not None:
                    train["train/bpb"] = loss.detach() * y.numel() / (math.log(2) * self._bytes(y))
                self.log_dict(train, on_step=True, on_epoch=False, batch_size=x.shape[0])
            return loss
        getattr(self, f"{stage}_metrics").update(loss.detach() * y.numel(), y.numel(), self._bytes(y))
        return loss

    def _bytes(self, y: Tensor) -> Tensor:
        return self.token_bytes[y].sum(dtype=torch.int64)

    def on_validation_epoch_end(self) -> None:
        self._log_split("val")

    def on_test_epoch_end(self) -> None:
        self._log_split("test")

    def _log_split(self, stage: Stage) -> None:
        """Log ``{stage}/loss``, ``/ppl`` and ``/bpb`` of the whole split (sums reduced across processes)."""
        metrics = getattr(self, f"{stage}_metrics")
        if any(m.update_called for m in metrics.values()):
            self.log_dict(metrics.compute(), prog_bar=True, sync_dist=True)
        metrics.reset()

    # -- generation ----------------------------------------------------------------------------------------------------
    #: Whether the network continues text (a causal decoder does; a masked-token encoder trained here does not).
    generates: ClassVar[bool] = False

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
        """Yield ``(B, 1)`` sampled tokens one at a time, continuing the ``(B, T)`` prompts ``idx`` (the subclass's
        network samples them: :meth:`lightning_models.GPT.generate_stream`); only where :attr:`generates`."""
        raise NotImplementedError(f"{type(self).__name__} does not generate text")

    def generate_text(
        self,
        prompt: str,
        max_new_tokens: int = 200,
        temperature: float = 0.8,
        top_k: int | None = 50,
        top_p: float | None = None,
        seed: int = 0,
        use_cache: bool = True,
        on_text: Callable[[str], None] | None = None,
        echo_prompt: bool = False,
    ) -> str:
        """Sample a continuation of ``prompt`` with this model and its tokenizer; returns the new text.

        Args:
            prompt: Text to continue (at least one token, at most ``block_size``).
            max_new_tokens: Tokens to generate.
            temperature: Logit scale; 0 picks the most likely token.
            top_k: Sample among the k most likely tokens.
            top_p: Sample among the most likely tokens that make up probability ``top_p``.
            seed: Seed of the sampling.
            use_cache: Keep keys and values of earlier positions.
            on_text: Called with each new piece of text as soon as it is complete (streaming).
            echo_prompt: Pass the prompt to ``on_text`` first, once the settings have been checked.

        Raises:
            ValueError: an empty prompt, one longer than the model's context, characters the tokenizer lacks, or an
                invalid sampling setting.
        """
        import torch

        from datamodules.tokenizer import StreamDecoder

        device = next(self.parameters()).device
        ids = torch.as_tensor(self.tokenizer.encode(prompt), dtype=torch.long, device=device).view(1, -1)
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
        decoder = StreamDecoder(self.tokenizer)
        stream = self.generate_stream(ids, max_new_tokens, temperature, top_k, top_p, use_cache, generator)
        first = next(stream, None)  # checks the prompt and the settings before anything is shown
        emit = on_text or (lambda text: None)
        if echo_prompt:
            emit(prompt)
        pieces = []
        for token in itertools.chain([first] if first is not None else [], stream):
            piece = decoder.push(token.view(-1).tolist())
            if piece:
                pieces.append(piece)
                emit(piece)
        pieces.append(decoder.flush())
        emit(pieces[-1])
        return "".join(pieces)

    def set_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Use ``tokenizer`` from now on: for generation, bits per byte and every checkpoint.

        Raises:
            ValueError: when the tokenizer has more tokens than the model's embedding has rows.
        """
        if tokenizer.vocab_size > self.vocab_size:
            raise ValueError(
                f"the tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size is {self.vocab_size}: "
                "the model needs a row for every token id"
            )
        super().set_tokenizer(tokenizer)
        table = torch.tensor(tokenizer.token_bytes(), dtype=torch.int32)
        self.token_bytes.zero_()
        self.token_bytes[: len(table)] = table.to(self.token_bytes.device)

    # -- optimization ------------------------------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        """The base's groups, each split into ``decay`` (weight matrices of linear layers) and ``no_decay`` (the
        rest: embeddings, including an output layer tied to them, LayerNorms and biases)."""
        embeddings = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        matrices = {id(m.weight) for m in self.modules() if isinstance(m, nn.Linear) and id(m.weight) not in embeddings}
        groups = []
        for group in super().param_groups():
            prefix = f"{group['name']}/" if "name" in group else ""
            decay = [p for p in group["params"] if id(p) in matrices]
            rest = [p for p in group["params"] if id(p) not in matrices]
            wd = self.hparams.weight_decay
            groups.append({**group, "name": f"{prefix}decay", "params": decay, "weight_decay": wd})
            groups.append({**group, "name": f"{prefix}no_decay", "params": rest, "weight_decay": 0.0})
        return [g for g in groups if g["params"]]

    @property
    def adam_betas(self) -> tuple[float, float]:
        return tuple(self.hparams.betas)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        if hp.scheduler != "cosine":
            return super().configure_optimizers()
        opt = self.build_optimizer()
        decay_steps = hp.lr_decay_steps or max(1, int(self.trainer.estimated_stepping_batches))
        schedule = warmup_cosine_scheduler(opt, hp.warmup_steps, decay_steps, hp.min_lr_ratio)
        return {"optimizer": opt, "lr_scheduler": schedule}
