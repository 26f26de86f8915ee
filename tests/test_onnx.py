"""ONNX export: every architecture exports with a dynamic batch axis and matches PyTorch in onnxruntime; the
callback exports the best checkpoint, and a model that cannot be exported costs one warning, never the run."""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import lightning_models
from datamodules import DigitsDataModule
from experiments.callbacks import ONNXExport, ONNXExportWarning
from experiments.callbacks.report import RunReport
from lightning_models import MLPClassifier
from lightning_models.base import TaskModule
from lightning_models.export import export_onnx, failure_reason, onnx_parity

#: Small sample shapes tried in order until an architecture accepts one (conv stacks need room, ImageNet-style
#: models need 3 channels); keeps the sweep free of per-model cases.
CANDIDATE_SHAPES = [(1, 8, 8), (3, 16, 16), (3, 32, 32), (16,)]


def architectures() -> list[type[TaskModule]]:
    """Every concrete classifier/regressor ``lightning_models`` exports (the task bases excluded), so new ones are
    covered. Models of token sequences take token ids, not samples of a shape: tests/test_gpt.py and
    tests/test_text_classification.py export them."""
    found = []
    for name in lightning_models.__all__:
        obj = getattr(lightning_models, name)
        concrete = inspect.isclass(obj) and issubclass(obj, TaskModule) and obj.__module__ != "lightning_models.base"
        tokens = "sequence" in (getattr(obj, "onnx_dynamic_axes", None) or {}).values()
        if concrete and obj.task in ("classification", "regression") and not tokens:
            found.append(obj)
    return found


def build_small(cls: type[TaskModule]) -> tuple[TaskModule, torch.Tensor]:
    """The architecture with 2 outputs on the first candidate shape it accepts, in eval mode, and a 5-sample batch."""
    torch.manual_seed(0)
    errors = []
    for shape in CANDIDATE_SHAPES:
        try:
            model = cls(num_classes=2, input_shape=shape).eval()
            x = torch.randn(5, *shape)
            with torch.no_grad():
                model(x)
            return model, x
        except (ValueError, RuntimeError, TypeError) as err:
            errors.append(f"{shape}: {err}")
    pytest.fail(f"{cls.__name__} accepts none of the candidate shapes: {errors}")


def test_discovers_the_project_architectures() -> None:
    names = {cls.__name__ for cls in architectures()}
    assert {"MLPClassifier", "SmallCNN"} <= names
    assert not names & {"TaskModule", "ClassifierModule", "BinaryClassifierModule", "RegressorModule"}


@pytest.mark.parametrize("cls", architectures(), ids=lambda c: c.__name__)
def test_every_architecture_exports_and_matches_pytorch(cls: type[TaskModule], tmp_path: Path) -> None:
    model, x = build_small(cls)
    path = tmp_path / "model.onnx"
    start = time.perf_counter()
    export_onnx(model, x[:2], path)
    seconds = time.perf_counter() - start
    print(f"{cls.__name__}: exported in {seconds:.2f} s, {path.stat().st_size / 1024:.0f} KiB")

    # One self-contained file: weights inside, no side file, no temporary left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    proto = onnx.load(str(path), load_external_data=False)
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in proto.graph.initializer)
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["output"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"

    diffs = onnx_parity(path, model, x, [1, 7])
    assert set(diffs) == {1, 7}
    assert max(diffs.values()) <= 1e-4, diffs
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"input": np.repeat(x.numpy(), 2, axis=0)[:7]})[0]
    assert out.shape[0] == 7


def test_projector_head_exports_and_matches_pytorch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = lightning_models.SmallCNN(num_classes=5, input_shape=(1, 8, 8), channels=[8, 16], head_hidden=32)
    # Trained BatchNorm statistics, so the exported eval-mode head is not an identity normalization.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 1, 8, 8) * 2 + 1)
    model.eval()
    path = tmp_path / "model.onnx"
    export_onnx(model, torch.randn(2, 1, 8, 8), path)
    diffs = onnx_parity(path, model, torch.randn(5, 1, 8, 8), [1, 5])
    assert max(diffs.values()) <= 1e-4, diffs


class _PickFirstEpoch(MLPClassifier):
    """Logs ``pick`` = 1 in the first validation epoch and 0 later, so "best" is epoch 0, never the last weights."""

    def on_validation_epoch_end(self) -> None:
        self.log("pick", float(self.current_epoch == 0))


def _trainer(tmp_path: Path, callbacks: list, epochs: int) -> L.Trainer:
    return L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=epochs,
        limit_train_batches=3,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )


def test_callback_exports_the_best_checkpoint_not_the_last_weights(tmp_path: Path) -> None:
    L.seed_everything(0)
    dm = DigitsDataModule(batch_size=32)
    model = _PickFirstEpoch(num_classes=10, input_shape=(1, 8, 8), lr=0.05)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "checkpoints", monitor="pick", mode="max")
    export, report = ONNXExport(), RunReport()
    trainer = _trainer(tmp_path, [ckpt, export, report], epochs=3)
    trainer.fit(model, datamodule=dm)

    result = export.result
    assert report.onnx is result  # the export reports into the run report when the run has one
    assert result is not None and result.ok, result
    assert result.path == Path(trainer.log_dir) / "model.onnx"
    assert "epoch=0" in Path(ckpt.best_model_path).name and result.source.startswith("best checkpoint")
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
    assert result.batch_sizes == [1, 7, dm.eval_batch_size]

    # The exported graph takes raw uint8 pixels: the datamodule's normalization is inside it.
    pixels = dm.splits["val"].x[:16]
    onnx_out = ort.InferenceSession(str(result.path)).run(None, {"input": pixels.numpy()})[0]
    x = dm.normalize(pixels)
    best = _PickFirstEpoch(num_classes=10, input_shape=(1, 8, 8))
    best.load_state_dict(torch.load(ckpt.best_model_path, weights_only=False)["state_dict"])
    with torch.no_grad():
        best_out = best.eval()(x).numpy()
        last_out = model.eval()(x).numpy()
    assert np.abs(onnx_out - best_out).max() <= 1e-4
    assert np.abs(onnx_out - last_out).max() > 1e-2  # three epochs at lr 0.05 moved the weights
    assert "max |onnx - torch|" in result.summary() and "(ok, atol 0.0001)" in result.summary()

    # Self-describing: raw uint8 input, described; class names, version and the input description in metadata.
    proto = onnx.load(str(result.path))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["class_names"]) == [str(i) for i in range(10)]
    assert meta["zerotune_version"] == importlib.metadata.version("zerotune")
    assert meta["output_kind"] == "logits" and "softmax" in meta["output"]
    assert "uint8 images (batch, 1, 8, 8)" in meta["input"] and "inside the graph" in meta["input"]
    assert proto.graph.input[0].doc_string == meta["input"]  # shown by Netron on the input
    assert json.loads(meta["input_spec"]) == dm.input_spec()


class _DataDependent(MLPClassifier):
    """Branches on a tensor's value: fine in PyTorch, rejected by torch.export (the branch is not traceable)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if out.sum() > 0:
            return out
        return -out


def test_unexportable_model_warns_once_and_keeps_the_run(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    L.seed_everything(0)
    dm = DigitsDataModule(batch_size=32)
    model = _DataDependent(num_classes=10, input_shape=(1, 8, 8))
    ckpt = ModelCheckpoint(dirpath=tmp_path / "checkpoints", monitor="val/acc", mode="max", save_last=True)
    export = ONNXExport()
    trainer = _trainer(tmp_path, [ckpt, export], epochs=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, datamodule=dm)
        results = trainer.test(model, datamodule=dm, ckpt_path="best", verbose=False)

    ours = [w for w in caught if issubclass(w.category, ONNXExportWarning)]
    assert len(ours) == 1, [str(w.message) for w in ours]
    message = str(ours[0].message)
    assert "_DataDependent" in message and "data-dependent" in message and "forward" in message
    assert "--onnx.enabled false" in message
    assert "Traceback" not in capfd.readouterr().err
    # The run itself is intact: checkpoints written, test ran, no model file and no temporary left behind.
    assert {p.name for p in (tmp_path / "checkpoints").iterdir()} >= {"last.ckpt"}
    assert Path(ckpt.best_model_path).is_file()
    assert 0.0 <= results[0]["test/acc"] <= 1.0
    assert not list(Path(trainer.log_dir).glob("*.onnx")) and not list(Path(trainer.log_dir).glob(".*.tmp"))
    assert export.result is not None and not export.result.ok and export.result.path is None
    assert export.result.summary().startswith("not exported: ")


def test_failure_reason_names_the_missing_operator(tmp_path: Path) -> None:
    class Eigh(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.linalg.eigh(x.T @ x)[0].expand(x.shape[0], -1)

    with pytest.raises(Exception) as info:
        export_onnx(Eigh().eval(), torch.randn(3, 4), tmp_path / "m.onnx")
    assert failure_reason(info.value) == "operator aten._linalg_eigh has no ONNX translation"
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "kwargs, match",
    [({"atol": -1.0}, "onnx.atol"), ({"batch_sizes": [0]}, "onnx.batch_sizes"), ({"filename": "a/b.onnx"}, "file")],
)
def test_bad_options_name_the_option(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ONNXExport(**kwargs)


def test_disabled_or_fast_dev_run_writes_nothing(tmp_path: Path) -> None:
    for export, fast in ((ONNXExport(enabled=False), False), (ONNXExport(), True)):
        trainer = L.Trainer(
            default_root_dir=tmp_path,
            max_epochs=1,
            limit_train_batches=1,
            limit_val_batches=1,
            fast_dev_run=fast,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            callbacks=[export],
        )
        trainer.fit(MLPClassifier(num_classes=10, input_shape=(1, 8, 8)), datamodule=DigitsDataModule())
        assert export.result is None
    assert not list(tmp_path.rglob("*.onnx"))
