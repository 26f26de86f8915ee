"""A language model's own text in TensorBoard's Text tab: a sample from a fixed prompt after every validation."""

from __future__ import annotations

import time

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import FSDPStrategy

from lightning_models.language_model import CausalLMModule


class TextSamples(Callback):
    """After every validation, continue ``prompt`` with the model and log it as ``samples/text`` (TensorBoard's Text
    tab, one entry per global step, so the slider shows the text improving).

    Active for language models that generate (``generates``) and know their tokenizer (``tokenizer``); rank 0 only,
    and not during the sanity check. The same prompt and seed every time, so samples differ only by the weights.
    Under FSDP no sample is drawn: each process holds only a shard of the weights.

    Args:
        enabled: Log samples at all.
        prompt: Text to continue.
        max_new_tokens: Tokens generated per sample.
        temperature: Logit scale; 0 picks the most likely token.
        top_k: Sample among the k most likely tokens.
        top_p: Sample among the most likely tokens that make up probability ``top_p``.
        seed: Sampling seed.
    """

    def __init__(
        self,
        enabled: bool = True,
        prompt: str = "\n",
        max_new_tokens: int = 200,
        temperature: float = 0.8,
        top_k: int | None = 50,
        top_p: float | None = None,
        seed: int = 0,
    ) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"samples.max_new_tokens must be >= 1, got {max_new_tokens}")
        self.enabled = enabled
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p
        self.seed = seed
        #: The latest sample and the seconds it took (for the progress of a run, and tests).
        self.last: str | None = None
        self.seconds = 0.0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if isinstance(trainer.strategy, FSDPStrategy):
            return
        if not isinstance(pl_module, CausalLMModule) or not pl_module.generates or pl_module.tokenizer is None:
            return
        writer = next((lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if writer is None:
            return
        start = time.perf_counter()
        text = pl_module.generate_text(
            self.prompt, self.max_new_tokens, self.temperature, self.top_k, self.top_p, self.seed
        )
        self.seconds = time.perf_counter() - start
        self.last = self.prompt + text
        # Indented four spaces: Markdown shows it verbatim, code and whitespace included.
        body = "\n".join("    " + line for line in self.last.split("\n"))
        writer.add_text("samples/text", body, trainer.global_step)
