"""The run's TensorBoard logger: the model graph is drawn when the tracer can, and never fails a run."""

from __future__ import annotations

import warnings

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torch import Tensor

#: Warnings torch.jit.trace raises for every Lightning model while TensorBoard draws its graph; nothing to act on.
_GRAPH_NOISE = (
    r".*torch\.jit\.trace.* is deprecated.*",
    r".*Use `Metric\.updated_called` instead.*",
    r".*Converting a tensor to a Python .* might cause the trace to be incorrect.*",
)


class SafeTensorBoardLogger(TensorBoardLogger):
    """TensorBoard logger whose graph logging (``log_graph=True``, traced with ``torch.jit.trace``) never fails a run.

    A model the tracer cannot handle gets one warning naming the reason; the run goes on without the graph. The
    graph is drawn once per logger: Lightning asks again at the start of every ``fit`` and ``test``.
    """

    #: Whether the graph was drawn (or tried) already.
    _graph_attempted: bool = False

    @rank_zero_only
    def log_graph(self, model: L.LightningModule, input_array: Tensor | None = None) -> None:
        if self._graph_attempted:
            return
        self._graph_attempted = True
        try:
            with warnings.catch_warnings():
                for pattern in _GRAPH_NOISE:
                    warnings.filterwarnings("ignore", message=pattern)
                warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
                super().log_graph(model, input_array)
        except Exception as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            rank_zero_warn(f"model graph not logged to TensorBoard ({type(model).__name__}): {reason}")
