"""Callbacks every zerotune run has (:data:`experiments.launcher.cli.FORCED_CALLBACKS`); each also works alone."""

from experiments.callbacks.attention_maps import AttentionMaps
from experiments.callbacks.dashboards import Dashboards
from experiments.callbacks.onnx_export import ONNXExport, ONNXExportWarning
from experiments.callbacks.text_samples import TextSamples
from experiments.callbacks.throughput import Throughput
from lightning_models.export import ONNXExportResult

__all__ = [
    "AttentionMaps",
    "Dashboards",
    "ONNXExport",
    "ONNXExportResult",
    "ONNXExportWarning",
    "TextSamples",
    "Throughput",
]
