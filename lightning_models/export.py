"""ONNX export of a zerotune model: one self-describing file, checked against PyTorch with onnxruntime.

The file describes itself: ``metadata_props`` hold the zerotune version, the class names, what the input and the
output are, and the datamodule's whole input description (``input_spec``, JSON) when it has one. Image models take
raw ``uint8`` pixels: the datamodule's normalization is the first operation of the graph (:class:`ImageInput`).
Table models take the preprocessed features; the preprocessing (imputation, scaling, one-hot encoding) stays
outside the graph and is described in ``input_spec``, the feature order in ``features``. Text models take token
ids; the tokenizer that makes them is in ``tokenizer`` (JSON, as ``Tokenizer.to_dict``).

Used by the ONNX export at the end of every run (``experiments.callbacks.onnx_export``), by ``experiments.predict``
and by the benchmarks.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import logging
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import Tensor, nn

from fileio.atomic import atomic_path
from lightning_models.base import TaskModule

INPUT_NAME = "input"
OUTPUT_NAME = "output"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class ONNXExportResult:
    """What an export to ONNX gave: the file, where its weights came from, and the parity check against PyTorch
    (the run's export at the end of fit: ``experiments.callbacks.ONNXExport.result``).

    Attributes:
        path: The ONNX file (``None`` if export failed).
        source: Where the weights came from (``best checkpoint best-epoch003.ckpt``, or ``current weights ...``).
        seconds: Wall time of the export (tracing, conversion, optimization, save).
        max_abs_diff: Largest ``|onnx - torch|`` over every output element and checked batch size.
        batch_sizes: Batch sizes run through onnxruntime.
        other_shapes: Further dynamic axes checked at a second size, e.g. ``["sequence 32"]``.
        ok: Exported, valid, and within tolerance at every batch size.
        problem: Why ``ok`` is false, one line.
        opset: The ONNX opset exported to.
        atol: The largest difference accepted.
    """

    path: Path | None = None
    source: str = ""
    seconds: float = 0.0
    max_abs_diff: float | None = None
    batch_sizes: list[int] = field(default_factory=list)
    other_shapes: list[str] = field(default_factory=list)
    ok: bool = False
    problem: str = ""
    opset: int = 20
    atol: float = 1e-4

    def summary(self) -> str:
        """One line: the file, where its weights came from, and the parity check (or why there is no file)."""
        if self.path is None:
            return f"not exported: {self.problem}"
        sizes = "/".join(map(str, self.batch_sizes)) + "".join(f", {s}" for s in self.other_shapes)
        if self.max_abs_diff is None:
            check = "not checked"
        else:
            verdict = "ok" if self.ok else "FAILED"
            check = f"max |onnx - torch| = {self.max_abs_diff:.2g} at batch {sizes} ({verdict}, atol {self.atol:g})"
        return f"{self.path} ({self.source}, opset {self.opset}, {self.seconds:.1f} s): {check}"


def export_onnx(
    model: nn.Module,
    example: Tensor,
    path: str | Path,
    opset: int = 20,
    optimize: bool = True,
    metadata: Mapping[str, str] | None = None,
    dynamic_axes: dict[int, str] | None = None,
) -> None:
    """Export ``model`` to one self-contained ONNX file with the torch.export-based exporter.

    The input is named ``input`` and the output ``output``. Axis 0 is the dynamic ``batch`` axis, unless the model
    declares its dynamic input axes as ``onnx_dynamic_axes`` (a language model: ``{0: "batch", 1: "sequence"}``).
    The file is written atomically. ``model`` must already be in eval mode on the CPU (BatchNorm in train mode cannot
    run a batch of one, and dropout would make the graph random).

    Args:
        model: The network; its ``forward`` takes one tensor.
        example: An input batch with at least 2 samples (torch.export specializes sizes 0 and 1), and at least 2
            along every other dynamic axis.
        path: Destination ``.onnx`` file.
        opset: ONNX opset version.
        optimize: Run the ONNX optimizer (constant folding, BatchNorm folded into Conv: a smaller, clearer graph).
        metadata: Model-level ``metadata_props`` (see :func:`model_metadata`); its ``input`` entry also becomes
            the graph input's ``doc_string``, which Netron shows.
        dynamic_axes: ``{axis: name}`` of the input's dynamic axes; default a zerotune model's
            ``onnx_dynamic_axes``, else ``{0: "batch"}``.

    Raises:
        Exception: whatever the exporter raises; see :func:`failure_reason` for a one-line summary.
    """
    axes = dict(dynamic_axes or (model.onnx_dynamic_axes if isinstance(model, TaskModule) else {0: "batch"}))
    with _quiet_exporter(), atomic_path(path) as tmp:
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            # A named string axis becomes a dynamic dimension of that name ("batch") in the ONNX graph.
            dynamic_shapes=(axes,),
            opset_version=opset,
            optimize=optimize,
            report=False,
            verbose=False,
        )
        # Each node records the Python stack that created it, absolute source paths included: not something to
        # ship inside a model file. The module path (namespace) stays, Netron shows it per node.
        for node in program.model.graph.all_nodes():
            node.metadata_props.pop("pkg.torch.onnx.stack_trace", None)
        if metadata:
            program.model.metadata_props.update({str(k): str(v) for k, v in metadata.items()})
            if "input" in metadata:
                program.model.graph.inputs[0].doc_string = str(metadata["input"])
        # Weights inside the .onnx file: one file to copy, serve with Netron, or load in onnxruntime.
        program.save(str(tmp), external_data=False)
        onnx.checker.check_model(str(tmp), full_check=True)


class ImageInput(nn.Module):
    """Raw pixels in: ``uint8`` images ``(N, C, H, W)``, 0..255, normalized as the datamodule did, then ``model``.

    The constants come from :func:`datamodules.base.image_affine`, the ones training batches were normalized with,
    so an exported graph (and ``experiments.predict``) sees exactly the values the model was trained on.

    Args:
        model: The network, taking normalized float32 images.
        mean: Per-channel mean of the [0, 1]-scaled pixels.
        std: Per-channel standard deviation.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        from datamodules.base import image_affine

        super().__init__()
        self.model = model
        scale, shift = image_affine(mean, std)
        self.register_buffer("scale", scale)  # (1, C, 1, 1)
        self.register_buffer("shift", shift)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(torch.addcmul(self.shift, x.to(torch.float32), self.scale))


def with_input_front(model: nn.Module, spec: Mapping[str, Any] | None) -> nn.Module:
    """``model`` behind the front end its input kind needs inside the graph (images: :class:`ImageInput`)."""
    if spec and spec.get("kind") == "image":
        return ImageInput(model, spec["mean"], spec["std"])
    return model


def describe_input(spec: Mapping[str, Any] | None) -> str:
    """One line saying what the exported graph's input is."""
    kind = spec.get("kind") if spec else None
    if kind == "image":
        c, h, w = spec["shape"]
        colour = "grayscale" if c == 1 else "RGB"
        return (
            f"uint8 images (batch, {c}, {h}, {w}), channels first: {colour} pixel values 0..255 resized to {h}x{w}; "
            f"the normalization (mean {spec['mean']}, std {spec['std']} of pixels / 255) is inside the graph"
        )
    if kind == "table":
        return (
            f"float32 (batch, {len(spec['features'])}): the preprocessed features in the order of 'features'. The "
            f"preprocessing of the raw columns {spec['columns']} (imputation, scaling, category encoding) is not in "
            "the graph: 'input_spec' describes it and python -m experiments.predict applies it"
        )
    if kind == "text":
        return (
            f"int64 token ids (batch, sequence), sequence at most {spec['block_size']}: each text tokenized with the "
            f"tokenizer in 'tokenizer', its first {spec['block_size']} tokens kept, right-padded with "
            f"{spec['pad_id']} (padding is never attended to nor pooled)"
        )
    if spec and "shape" in spec:
        return f"float32 (batch, {', '.join(map(str, spec['shape']))})"
    return "the tensor the model's forward takes, with a leading batch axis"


def describe_output(output_kind: str, spec: Mapping[str, Any] | None) -> str:
    """One line saying what the exported graph's output is."""
    names = (spec or {}).get("class_names") or []
    if output_kind == "logits":
        return "float32 (batch, classes) logits: softmax gives the probabilities of 'class_names', in that order"
    if output_kind == "logit":
        positive = f" ('{names[1]}')" if len(names) > 1 else ""
        return f"float32 (batch, 1) logit: sigmoid gives the probability of the second class{positive}"
    text = "float32 (batch, targets) predicted values"
    mean, std = (spec or {}).get("target_mean", 0.0), (spec or {}).get("target_std", 1.0)
    if (mean, std) != (0.0, 1.0):
        text += f", standardized: multiply by {std:.6g} and add {mean:.6g} for the target's units"
    return text


def model_metadata(spec: Mapping[str, Any] | None, output_kind: str) -> dict[str, str]:
    """The ``metadata_props`` of an exported model: version, class names, input and output, input description."""
    try:
        version = importlib.metadata.version("zerotune")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    meta = {
        "zerotune_version": version,
        "input": describe_input(spec),
        "output": describe_output(output_kind, spec),
        "output_kind": output_kind,
    }
    if spec:
        if spec.get("class_names"):
            meta["class_names"] = json.dumps(list(spec["class_names"]))
        if spec.get("kind") == "table":
            meta["features"] = json.dumps(list(spec["features"]))
        meta["input_spec"] = json.dumps(spec)
    return meta


def onnx_parity(path: str | Path, model: nn.Module, x: Tensor, batch_sizes: Sequence[int]) -> dict[int, float]:
    """Run the ONNX file with onnxruntime and ``model`` with PyTorch on the first ``n`` rows of ``x`` for each size.

    ``x`` is repeated along the batch axis when it has fewer rows than a requested size.

    Returns:
        ``{batch size: max |onnx - torch|}`` over all output elements.

    Raises:
        Exception: onnxruntime's error when it rejects an input (e.g. a batch axis frozen at export).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the exporter's graphs trigger harmless optimizer notices
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    need = max(batch_sizes)
    if x.shape[0] < need:
        x = x.repeat(-(-need // x.shape[0]), *([1] * (x.dim() - 1)))
    diffs: dict[int, float] = {}
    with torch.inference_mode():
        for n in batch_sizes:
            xb = x[:n]
            expected = _tensors(model(xb))
            got = session.run(None, {session.get_inputs()[0].name: xb.numpy()})
            diffs[n] = max(
                float((torch.from_numpy(g).to(e.dtype) - e).abs().max()) if e.numel() else 0.0
                for e, g in zip(expected, got, strict=True)
            )
    return diffs


def failure_reason(err: BaseException) -> str:
    """One line saying why an export failed: the unsupported op, or the root error and where it was raised."""
    root = err
    while root.__cause__ is not None:
        root = root.__cause__
    text = _ANSI.sub("", str(root)).strip()
    op = re.search(r"No ONNX function found for <OpOverload\(op='([^']+)'", text)
    if op:
        return f"operator {op.group(1)} has no ONNX translation"
    first = text.splitlines()[0] if text else type(root).__name__
    where = re.search(r'The following call raised this error:\s*\n\s*File "([^"]+)", line (\d+), in (\w+)', text)
    location = f" (raised at {Path(where.group(1)).name}:{where.group(2)} in {where.group(3)})" if where else ""
    return f"{type(root).__name__}: {first}{location}"


def _tensors(output: Any) -> list[Tensor]:
    """The output's tensors in the order the exporter flattens them."""
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    return [t for item in output for t in _tensors(item)]


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's own warnings, logging and prints: a failure is reported once, by the caller."""
    loggers = [
        logging.getLogger(name)
        for name in list(logging.root.manager.loggerDict)
        if name.split(".")[0] in ("torch", "onnxscript", "onnx_ir")
    ]
    previous = [lg.disabled for lg in loggers]
    for lg in loggers:
        lg.disabled = True
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, was in zip(loggers, previous, strict=True):
            lg.disabled = was
