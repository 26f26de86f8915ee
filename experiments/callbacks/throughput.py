"""Training speed of models that count their FLOPs: tokens per second and model FLOPs utilization (MFU).

MFU is the share of the hardware's peak FLOP/s that the model's own arithmetic (``flops_per_token`` times tokens
per second) uses, the measure PaLM introduced: it does not credit recomputation (activation checkpointing) or
padding, so it compares recipes and machines fairly. The peak comes from Lightning's table of GPUs for the run's
compute dtype; on the CPU a matrix multiplication is timed once per process and dtype, and its best rate is the peak.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from lightning_models.base import CountsFlops

#: Measured CPU peaks, per (threads, dtype): timed once per process.
_CPU_PEAKS: dict[tuple[int, torch.dtype], float] = {}


def cpu_peak_flops(dtype: torch.dtype = torch.float32, size: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of the fastest of ``repeats`` ``size`` x ``size`` matrix products on the CPU, with this process's
    threads (torch's own kernels, so what a model's linear layers can reach)."""
    key = (torch.get_num_threads(), dtype)
    if key not in _CPU_PEAKS:
        a = torch.randn(size, size).to(dtype)
        b = torch.randn(size, size).to(dtype)
        a @ b  # warm-up: thread pool and kernel selection
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        _CPU_PEAKS[key] = 2 * size**3 / best
    return _CPU_PEAKS[key]


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """Peak FLOP/s of one ``device`` at ``dtype``: Lightning's GPU table, a measured matmul on the CPU."""
    if device.type == "cpu":
        return cpu_peak_flops(dtype)
    from lightning.fabric.utilities.throughput import get_available_flops

    flops = get_available_flops(device, dtype)
    return float(flops) if flops else None


class Throughput(Callback):
    """Logs ``perf/tokens_per_s`` (all processes together) and ``perf/mfu`` on the trainer's logging steps, to the
    progress bar and TensorBoard.

    Active for models with a ``flops_per_token(seq_len)`` method (the language models); others are left alone. Each
    value covers the training steps since the previous one; time spent in validation is left out.

    Args:
        enabled: Measure at all.
        peak_flops: Peak FLOP/s of one device to compute MFU against; default: the GPU table or a CPU measurement.
    """

    def __init__(self, enabled: bool = True, peak_flops: float | None = None) -> None:
        if peak_flops is not None and peak_flops <= 0:
            raise ValueError(f"throughput.peak_flops must be positive, got {peak_flops}")
        self.enabled = enabled
        self.peak_flops = peak_flops
        self._peak: float | None = None
        self._start: float | None = None
        self._tokens = 0
        self._flops = 0.0
        #: The latest values, for other callbacks and tests.
        self.last: dict[str, float] = {}

    def _active(self, pl_module: L.LightningModule) -> bool:
        return self.enabled and isinstance(pl_module, CountsFlops)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active(pl_module):
            return
        from lightning.pytorch.callbacks.throughput_monitor import _plugin_to_compute_dtype

        dtype = _plugin_to_compute_dtype(trainer.precision_plugin)
        self._peak = self.peak_flops or peak_flops(trainer.strategy.root_device, dtype)
        self._restart(trainer)

    def _restart(self, trainer: L.Trainer) -> None:
        _sync(trainer)
        self._start, self._tokens, self._flops = time.perf_counter(), 0, 0.0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is not None:
            self._restart(trainer)  # the next window starts after validation

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._start is None or not self._active(pl_module):
            return
        x = batch[0] if isinstance(batch, list | tuple) else batch
        tokens = int(x.numel())
        self._tokens += tokens
        self._flops += tokens * float(pl_module.flops_per_token(x.shape[-1]))
        connector = getattr(trainer, "_logger_connector", None)
        if connector is not None and not connector.should_update_logs:
            return
        _sync(trainer)
        seconds = time.perf_counter() - self._start
        if seconds <= 0 or self._tokens == 0:
            return
        world = trainer.world_size
        values = {"perf/tokens_per_s": self._tokens * world / seconds}
        if self._peak:
            values["perf/mfu"] = self._flops / seconds / self._peak
        self.last = values
        pl_module.log_dict(values, on_step=True, on_epoch=False, prog_bar=True, batch_size=1)
        self._start, self._tokens, self._flops = time.perf_counter(), 0, 0.0


def _sync(trainer: L.Trainer) -> None:
    if trainer.strategy.root_device.type == "cuda":
        torch.cuda.synchronize(trainer.strategy.root_device)
