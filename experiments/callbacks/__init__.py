"""Callbacks every zerotune run has (registered in :data:`experiments.cli.FORCED_CALLBACKS`); each also works alone."""

from experiments.callbacks.dashboards import Dashboards, SafeTensorBoardLogger
from experiments.callbacks.onnx_export import ONNXExport, ONNXExportResult, ONNXExportWarning

__all__ = ["Dashboards", "ONNXExport", "ONNXExportResult", "ONNXExportWarning", "SafeTensorBoardLogger"]
