"""TensorBoard dashboards: a tiny real run of the launcher, read back with TensorBoard's own EventAccumulator."""

from __future__ import annotations

import contextlib
import functools
import io
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from torch.utils.data import DataLoader, TensorDataset

from experiments.callbacks import Dashboards
from experiments.callbacks.dashboards import confusion_matrix
from experiments.callbacks.report import RunReport
from experiments.launcher.loggers import SafeTensorBoardLogger
from lightning_models import LinearRegression, MLPClassifier

TINY_RUN = {
    "trainer.max_epochs": 2,
    "trainer.limit_train_batches": 3,
    "trainer.limit_val_batches": 2,
    "trainer.limit_test_batches": 1,
    "trainer.log_every_n_steps": 1,
}


def load_events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


@functools.cache
def shared_tiny_run(basetemp: Path) -> tuple[Path, str, RunReport]:
    """One tiny digits_cnn run through the Python API per test session: (run folder, printed summary, run report).

    Shared with the browser tests: ``basetemp`` (pytest's session folder) is the same in every module.
    """
    from experiments.api import launch

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = launch("digits_cnn", TINY_RUN, runs_dir=basetemp / "shared-tiny-run")
    return result.run_dir, out.getvalue(), result.report


@pytest.fixture
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, RunReport]:
    return shared_tiny_run(tmp_path_factory.getbasetemp())


def test_scalars_cover_training_validation_lr_and_onnx(tiny_run: tuple[Path, str]) -> None:
    acc = load_events(tiny_run[0])
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "val/loss", "val/acc", "val/f1", "onnx/max_abs_diff", "hp_metric"} <= tags
    assert any(t.startswith("lr-") for t in tags), tags
    train_loss = [e.value for e in acc.Scalars("train/loss")]
    assert len(train_loss) == 6  # one per step: 2 epochs x 3 batches
    assert all(math.isfinite(v) and v > 0 for v in train_loss)
    assert [e.step for e in acc.Scalars("val/acc")] == sorted(e.step for e in acc.Scalars("val/acc"))
    assert len(acc.Scalars("val/acc")) == 2 and all(0.0 <= e.value <= 1.0 for e in acc.Scalars("val/acc"))
    assert all(math.isfinite(e.value) and e.value > 0 for e in acc.Scalars("val/loss"))
    lr = [e.value for t in tags if t.startswith("lr-") for e in acc.Scalars(t)]
    assert lr and all(0 < v <= 0.003 + 1e-9 for v in lr)  # digits_cnn: peak 0.003 with warmup and cosine decay
    (parity,) = acc.Scalars("onnx/max_abs_diff")
    assert 0.0 <= parity.value <= 1e-4


def test_hparams_event_has_hp_metric_equal_to_best_val_acc(tiny_run: tuple[Path, str]) -> None:
    acc = load_events(tiny_run[0])
    content = acc.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert "hp_metric" in {m.name.tag for m in experiment.metric_infos}
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["model/lr"].number_value == pytest.approx(0.003)
    assert hparams["model/optimizer"].string_value == "adamw"
    assert not any(name.rsplit("/", 1)[-1].startswith("_") for name in hparams)  # no LightningCLI bookkeeping
    (hp_metric,) = acc.Scalars("hp_metric")
    assert hp_metric.value == pytest.approx(max(e.value for e in acc.Scalars("val/acc")), abs=1e-6)


def test_graph_and_figures_are_logged(tiny_run: tuple[Path, str]) -> None:
    acc = load_events(tiny_run[0])
    graph = acc.Graph()
    ops = {node.op for node in graph.node}
    assert any("conv" in op for op in ops), sorted(ops)[:20]
    assert any("linear" in op or "addmm" in op for op in ops), sorted(ops)[:20]
    images = acc.Tags()["images"]
    assert {"val/confusion_matrix", "val/misclassified"} <= set(images)
    # One figure per validation epoch, none for the sanity check.
    cm = acc.Images("val/confusion_matrix")
    assert len(cm) == 2 and cm[0].step < cm[1].step
    assert cm[-1].width >= 300 and cm[-1].encoded_image_string.startswith(b"\x89PNG")
    assert len(acc.Images("val/misclassified")) >= 1


def test_summary_prints_parity_and_viewer_commands(tiny_run: tuple[Path, str, RunReport]) -> None:
    run_dir, out, report = tiny_run
    assert run_dir == report.run_dir and run_dir.name == "version_0"
    onnx = report.onnx
    assert onnx is not None and onnx.ok and onnx.path == run_dir / "model.onnx" and onnx.path.is_file()
    assert (
        report.best is not None
        and onnx.source == f"best checkpoint {report.best.path.name}"
        and onnx.max_abs_diff < onnx.atol
    )
    assert report.test_metrics["test/acc"] >= 0 and report.epochs == 2
    # The summary printed at the end is rendered from the report.
    onnx_line = next(line for line in out.splitlines() if line.startswith("onnx "))
    assert onnx_line == f"onnx       {onnx.summary()}"
    assert f"-m experiments.view {run_dir}" in out
    assert f"--logdir {run_dir}" in out


# -- the callback alone, on tiny synthetic data ---------------------------------------------------------------------
def _fit(model: L.LightningModule, x: torch.Tensor, y: torch.Tensor, tmp_path: Path, logger, dashboards, epochs: int):
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=epochs,
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=1,
        log_every_n_steps=1,
        callbacks=[dashboards],
    )
    trainer.fit(model, loader, loader)
    return trainer


def test_regression_scatter_every_n_epochs_and_last(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(48, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0]) + 0.1 * torch.randn(48)
    model = LinearRegression(num_classes=1, input_shape=(4,), lr=0.05)
    logger = SafeTensorBoardLogger(str(tmp_path), name="reg", version=0)
    _fit(model, x, y, tmp_path, logger, Dashboards(every_n_epochs=2), epochs=3)
    acc = load_events(Path(logger.log_dir))
    assert acc.Tags()["images"] == ["val/pred_vs_true"]
    # Epoch 2 (every 2nd) and epoch 3 (the last); the sanity check draws nothing.
    assert len(acc.Images("val/pred_vs_true")) == 2


def test_tabular_classifier_gets_a_confusion_matrix_but_no_image_grid(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(48, 6)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    model = MLPClassifier(num_classes=3, input_shape=(6,), hidden=[8])
    logger = SafeTensorBoardLogger(str(tmp_path), name="tab", version=0)
    _fit(model, x, y, tmp_path, logger, Dashboards(), epochs=1)
    acc = load_events(Path(logger.log_dir))
    assert acc.Tags()["images"] == ["val/confusion_matrix"]
    assert not model._forward_hooks  # the capture hook is removed after each epoch


def test_without_tensorboard_the_callback_does_nothing(tmp_path: Path) -> None:
    model = MLPClassifier(num_classes=2, input_shape=(3,), hidden=[4])
    dashboards = Dashboards()
    _fit(model, torch.randn(16, 3), torch.randint(0, 2, (16,)), tmp_path, False, dashboards, epochs=1)
    assert not dashboards._active and not model._forward_hooks
    assert not list(tmp_path.rglob("events.out.tfevents.*"))


def test_confusion_matrix_counts() -> None:
    cm = confusion_matrix(torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([0, 1, 1, 2, 0, 2]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_graph_failure_is_one_warning_and_the_graph_is_drawn_once(tmp_path: Path) -> None:
    model = MLPClassifier(num_classes=2, input_shape=(1, 8, 8))
    model.example_input_array = torch.zeros(2, 5)  # wrong width: the trace fails inside the model
    logger = SafeTensorBoardLogger(str(tmp_path), name="g", version=0, log_graph=True)
    with pytest.warns(UserWarning, match=r"model graph not logged to TensorBoard \(MLPClassifier\)"):
        logger.log_graph(model)
    with warnings_as_errors():
        logger.log_graph(model)  # not retried: Lightning asks again at every fit and test
    logger.finalize("success")
    assert not load_events(Path(logger.log_dir)).Tags()["graph"]


@contextlib.contextmanager
def warnings_as_errors():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_figures_render_as_rgb_arrays() -> None:
    from experiments.callbacks.dashboards import _confusion_figure, _misclassified_figure

    counts = confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), 2)
    image = _confusion_figure(counts, ["cat", "dog"], epoch=0)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.std() > 10  # drawn, not blank
    wrong = [(torch.rand(3, 8, 8), 0, 1), (torch.rand(3, 8, 8), 1, 0)]
    grid = _misclassified_figure(wrong, ["cat", "dog"], None, epoch=0)
    assert grid.shape[1] > grid.shape[0] > 50


@pytest.mark.parametrize("n_wrong", [1, 2, 9])
def test_misclassified_grid_draws_any_number_of_images(n_wrong: int) -> None:
    """One misclassified image makes a 1x1 grid (a single Axes): drawn like any other count, not a crash."""
    from experiments.callbacks.dashboards import _misclassified_figure

    wrong = [(torch.rand(1, 8, 8), i % 10, (i + 1) % 10) for i in range(n_wrong)]
    image = _misclassified_figure(wrong, [str(i) for i in range(10)], None, epoch=3)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    # Wider with more columns (up to 8 per row), taller with more rows.
    one = _misclassified_figure(wrong[:1], [str(i) for i in range(10)], None, epoch=3)
    assert image.shape[1] >= one.shape[1] and image.shape[0] >= one.shape[0]
    assert one.shape[1] >= 4 * 80  # a single image still leaves room for the heading (4 inches at 80 dpi)
