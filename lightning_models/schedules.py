"""The warmup-cosine learning-rate schedule, one implementation for every model, and BERT's warmup-linear one.

:meth:`~lightning_models.base.TaskModule.configure_optimizers` uses it for ``scheduler: cosine`` (warmup in epochs,
decay to zero at the run's last step) and :class:`~lightning_models.language_model.CausalLMModule` for its default
schedule (warmup in steps, nanoGPT's, decay to ``min_lr_ratio`` at ``lr_decay_steps``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch


def warmup_cosine(
    warmup: int, decay_steps: int, min_ratio: float = 0.0, *, peak_in_warmup: bool = False
) -> Callable[[int], float]:
    """Learning-rate multiplier by optimizer step: a linear warmup over ``warmup`` steps, then a cosine from 1 at step
    ``warmup`` down to ``min_ratio`` at ``decay_steps``, then constant.

    Args:
        warmup: Steps of linear warmup.
        decay_steps: Step at which the cosine reaches ``min_ratio``.
        min_ratio: Final multiplier.
        peak_in_warmup: The warmup multiplier is ``(step + 1) / warmup``, reaching 1 on the last warmup step;
            without it ``(step + 1) / (warmup + 1)`` (nanoGPT's), reaching 1 on the first step after warmup.
    """
    ramp = warmup if peak_in_warmup else warmup + 1

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / ramp
        if step >= decay_steps:
            return min_ratio
        progress = (step - warmup) / max(1, decay_steps - warmup)
        return min_ratio + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - min_ratio)

    return factor


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer,
    warmup: int,
    decay_steps: int,
    min_ratio: float = 0.0,
    *,
    peak_in_warmup: bool = False,
) -> dict[str, Any]:
    """Lightning's ``lr_scheduler`` entry for :func:`warmup_cosine` (same arguments), stepped after every optimizer
    step, scaling each parameter group's own learning rate."""
    factor = warmup_cosine(warmup, decay_steps, min_ratio, peak_in_warmup=peak_in_warmup)
    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "step"}


def warmup_linear(warmup: int, decay_steps: int) -> Callable[[int], float]:
    """BERT's fine-tuning schedule (Hugging Face's ``get_linear_schedule_with_warmup``): the multiplier rises
    linearly from 0 over ``warmup`` steps, then falls linearly to 0 at ``decay_steps``."""

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (decay_steps - step) / max(1, decay_steps - warmup))

    return factor


def warmup_linear_scheduler(optimizer: torch.optim.Optimizer, warmup: int, decay_steps: int) -> dict[str, Any]:
    """Lightning's ``lr_scheduler`` entry for :func:`warmup_linear`, stepped after every optimizer step."""
    factor = warmup_linear(warmup, decay_steps)
    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "step"}
