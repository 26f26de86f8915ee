"""Export the best checkpoint to ONNX at the end of fit and check it against PyTorch with onnxruntime.

The callback works in any Lightning project: it needs only a run folder (the first logger's ``log_dir``, else
``default_root_dir``), an optional checkpoint callback and, for the parity check, a validation dataloader (or
``example_input_array``). Export never fails a run: every error ends in one :class:`ONNXExportWarning` that
names the reason, and checkpoints are untouched. What the file holds: :mod:`lightning_models.export`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from datamodules.base import DataModule
from experiments.callbacks.report import RunReport
from fileio.checkpoints import load_checkpoint
from lightning_models.base import TaskModule
from lightning_models.export import (
    ONNXExportResult,
    export_onnx,
    failure_reason,
    model_metadata,
    onnx_parity,
    with_input_front,
)


class ONNXExportWarning(UserWarning):
    """The model could not be exported, or its ONNX outputs differ from PyTorch's."""


class ONNXExport(Callback):
    """At the end of fit, export the best checkpoint to ``<run dir>/model.onnx`` and check it with onnxruntime.

    Rank 0 loads the best checkpoint's weights into a copy of the module (current weights, with a note, when
    there is no checkpoint), exports it with a dynamic batch axis, validates the file with ``onnx.checker`` and
    compares onnxruntime with PyTorch on the first validation batch at the full batch and each size in
    ``batch_sizes``. The maximum difference is logged as ``onnx/max_abs_diff``; the result goes into the run report
    (:class:`~experiments.callbacks.report.RunReport`) and stays as :attr:`result`. Nothing is written under
    ``fast_dev_run``.

    Args:
        enabled: Export at all.
        filename: File name inside the run folder (the logger's ``log_dir``).
        opset: ONNX opset version.
        atol: Largest accepted ``|onnx - torch|``; above it one warning is raised.
        batch_sizes: Batch sizes checked besides the full validation batch (the batch axis must really be dynamic).
        optimize: Optimize the ONNX graph (folds BatchNorm and constants; slower export, clearer graph).
    """

    def __init__(
        self,
        enabled: bool = True,
        filename: str = "model.onnx",
        opset: int = 20,
        atol: float = 1e-4,
        batch_sizes: list[int] = [1, 7],  # noqa: B006
        optimize: bool = True,
    ) -> None:
        if atol < 0:
            raise ValueError(f"onnx.atol must be >= 0, got {atol}")
        if not batch_sizes or min(batch_sizes) < 1:
            raise ValueError(f"onnx.batch_sizes must be positive integers, got {batch_sizes}")
        if not filename or Path(filename).name != filename:
            raise ValueError(f"onnx.filename must be a plain file name such as model.onnx, got {filename!r}")
        self.enabled = enabled
        self.filename = filename
        self.opset = opset
        self.atol = atol
        self.batch_sizes = list(batch_sizes)
        self.optimize = optimize
        self.result: ONNXExportResult | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or trainer.fast_dev_run or trainer.interrupted or not trainer.is_global_zero:
            return
        result = ONNXExportResult(opset=self.opset, atol=self.atol)
        self.result = result
        try:
            self._export(trainer, pl_module, result)
        except Exception as err:  # export must never cost the run its checkpoints or its test
            result.problem = f"ONNX export of {type(pl_module).__name__} failed: {failure_reason(err)}"
        if result.problem:
            rank_zero_warn(
                f"{result.problem}. Checkpoints are unaffected; pass --onnx.enabled false to skip the export.",
                category=ONNXExportWarning,
            )
        try:
            self._report(trainer, result)
        except Exception as err:  # a logger that fails here must not fail the finished run either
            rank_zero_warn(f"ONNX export result not logged: {err}", category=ONNXExportWarning)

    # -- steps -----------------------------------------------------------------------------------------------------
    def _export(self, trainer: L.Trainer, pl_module: L.LightningModule, result: ONNXExportResult) -> None:
        model, result.source = self._best_model(trainer, pl_module)
        # A model may export a simplified equivalent (LoRA adapters merged); parity is checked against the model.
        exported = model.export_module() if isinstance(model, TaskModule) else model
        if exported is not model:
            result.source += ", adapters merged"
        x = _validation_input(trainer, pl_module)
        spec = _input_spec(trainer)
        if spec and spec.get("kind") == "image":
            # The graph takes raw pixels: the validation batch back in uint8 (it was normalized from uint8).
            merged = exported is not model
            model = with_input_front(model, spec)
            exported = with_input_front(exported, spec) if merged else model
            x = _to_pixels(x, spec)
        task = pl_module if isinstance(pl_module, TaskModule) else None
        metadata = model_metadata(spec, task.output_kind if task is not None else "value")
        tokenizer = task.tokenizer if task is not None else None
        if spec and spec.get("tokenizer") and tokenizer is not None:
            # The input description names the tokenizer by fingerprint; the file carries the tokenizer itself.
            metadata["tokenizer"] = json.dumps(tokenizer.to_dict())
        # torch.export specializes sizes 0 and 1, so trace with two samples to keep the batch axis symbolic.
        example = x[:2] if x.shape[0] >= 2 else x.repeat(2, *([1] * (x.dim() - 1)))
        path = run_dir(trainer) / self.filename
        start = time.perf_counter()
        export_onnx(exported, example, path, opset=self.opset, optimize=self.optimize, metadata=metadata)
        result.seconds = time.perf_counter() - start
        result.path = path
        sizes = sorted({*self.batch_sizes, int(x.shape[0])})
        result.batch_sizes = sizes
        try:
            diffs = onnx_parity(path, model, x, sizes)
        except Exception as err:
            result.problem = (
                f"onnxruntime could not run {path.name} at batch sizes {sizes}: {failure_reason(err)}. "
                "Is the batch axis fixed by the model (a reshape with a literal batch size)?"
            )
            return
        # Every other dynamic axis (a language model's sequence) is checked at half its length too.
        axes = model.onnx_dynamic_axes if isinstance(model, TaskModule) else {0: "batch"}
        for axis, name in sorted(axes.items()):
            if 0 < axis < x.dim() and x.shape[axis] >= 2:
                short = x.narrow(axis, 0, x.shape[axis] // 2)
                label = f"{name} {short.shape[axis]}"
                diffs[label] = max(onnx_parity(path, model, short, [min(2, len(short))]).values())
                result.other_shapes.append(label)
        result.max_abs_diff = max(diffs.values())
        worst = max(diffs, key=diffs.get)
        if result.max_abs_diff > self.atol:
            result.problem = (
                f"ONNX output of {path.name} differs from PyTorch by {result.max_abs_diff:.3g} "
                f"({worst if isinstance(worst, str) else f'batch {worst}'}), "
                f"more than onnx.atol={self.atol:g}"
            )
        else:
            result.ok = True

    def _best_model(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[nn.Module, str]:
        """A CPU float32 eval-mode copy holding the best checkpoint's weights, and where they came from."""
        model = copy.deepcopy(pl_module).cpu().float().eval()
        ckpt = trainer.checkpoint_callback
        best = ckpt.best_model_path if isinstance(ckpt, ModelCheckpoint) else ""
        if best and Path(best).is_file():
            # Through the one safe loader: the path comes from the checkpoint callback's state, which --resume and
            # --ckpt_path restore from a checkpoint file, so it may name any file (one that runs code when unpickled).
            state = load_checkpoint(best)
            model.load_state_dict(state["state_dict"])
            return model, f"best checkpoint {Path(best).name}"
        return model, "current weights (no best checkpoint)"

    def _report(self, trainer: L.Trainer, result: ONNXExportResult) -> None:
        if result.max_abs_diff is not None:
            for logger in trainer.loggers:
                logger.log_metrics({"onnx/max_abs_diff": result.max_abs_diff}, step=trainer.global_step)
        report = RunReport.of(trainer)
        if report is not None:
            report.onnx = result


def run_dir(trainer: L.Trainer) -> Path:
    """``trainer.log_dir`` without its broadcast: this runs on rank 0 alone, where a collective call would hang."""
    if trainer.loggers:
        logger = trainer.loggers[0]
        return Path(logger.log_dir or logger.save_dir or trainer.default_root_dir)
    return Path(trainer.default_root_dir)


def _validation_input(trainer: L.Trainer, pl_module: L.LightningModule) -> Tensor:
    """The first validation batch's inputs as the model sees them (normalized), on the CPU, as float32.

    Falls back to ``pl_module.example_input_array`` when there is no validation data or the batch is not a tensor
    or a ``(x, y)`` pair.
    """
    x = None
    loader = None
    dm = trainer.datamodule
    with contextlib.suppress(Exception):
        loader = dm.val_dataloader() if dm is not None else trainer.val_dataloaders
    if isinstance(loader, list | tuple):
        loader = loader[0] if loader else None
    if loader is not None:
        with contextlib.suppress(StopIteration, TypeError):
            batch = next(iter(loader))
            x = batch[0] if isinstance(batch, list | tuple) else batch
    if not isinstance(x, Tensor):
        x = pl_module.example_input_array
    if not isinstance(x, Tensor):
        raise ValueError("no validation batch and no example_input_array to trace the model with")
    x = x.detach().cpu()
    return x.float() if x.is_floating_point() else x


def _input_spec(trainer: L.Trainer) -> dict[str, Any] | None:
    """The datamodule's input description (``input_spec()``), or ``None`` when it has none."""
    dm = trainer.datamodule
    if not isinstance(dm, DataModule):
        return None
    spec = dm.input_spec()
    return spec if isinstance(spec, dict) else None


def _to_pixels(x: Tensor, spec: Mapping[str, Any]) -> Tensor:
    """Normalized float images back to the ``uint8`` pixels they were normalized from."""
    mean = torch.tensor(spec["mean"], dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(spec["std"], dtype=torch.float64).view(1, -1, 1, 1)
    return ((x.double() * std + mean) * 255.0).round().clamp(0, 255).to(torch.uint8)
