"""Scaling switches: DDP on CPU processes with the default callbacks, mixed precision on the CPU, torch.compile."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from conftest import ROOT
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchmetrics.classification import MulticlassAccuracy

from datamodules import DigitsDataModule
from experiments.api import build, launch
from experiments.callbacks.dashboards import confusion_matrix
from lightning_models import SmallCNN

FAST: dict[str, Any] = {"onnx.enabled": False, "dashboards.enabled": False, "progress_bar.refresh_rate": 0}


def predictions(model: SmallCNN, dm: DigitsDataModule, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-process ``(targets, predictions)`` of ``model`` on the whole ``split``."""
    dm.setup()
    data = dm.splits[split]
    model.eval()
    with torch.no_grad():
        return data.y, model(dm.normalize(data.x)).argmax(1)


def accuracy(model: SmallCNN, dm: DigitsDataModule, split: str) -> float:
    """Single-process accuracy of ``model`` on the whole ``split``."""
    targets, preds = predictions(model, dm, split)
    return float(MulticlassAccuracy(model.num_classes, average="micro")(preds, targets))


def ddp_run(runs_dir: Path, devices: int, *extra: str) -> subprocess.CompletedProcess[str]:
    """``digits_cnn`` through the launcher on ``devices`` CPU processes with every default callback (dashboards,
    ONNX export, checkpoints, progress output), plus a marker that saves the drawn confusion matrix."""
    cmd = [
        sys.executable, "-m", "experiments.run", "digits_cnn",
        "--runs_dir", str(runs_dir),
        "--trainer.accelerator", "cpu",
        "--trainer.strategy", "ddp",
        "--trainer.devices", str(devices),
        "--trainer.callbacks+=tests.run_helpers.ConfusionMarker",
        f"--trainer.callbacks.out_dir={runs_dir / 'marks'}",
        *extra,
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def assert_whole_split_figures(run: Path, marks: Path, dm: DigitsDataModule, stdout: str) -> None:
    """The run drew its confusion matrix from the whole validation split (as one process evaluating last.ckpt),
    exported ONNX with parity, and saved checkpoints."""
    last = SmallCNN.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu")
    targets, preds = predictions(last, dm, "val")
    drawn = json.loads((marks / "confusion.json").read_text())
    assert drawn == confusion_matrix(targets, preds, 10).tolist()
    assert sum(map(sum, drawn)) == len(dm.splits["val"])
    events = EventAccumulator(str(run), size_guidance={"images": 0})
    events.Reload()
    assert "val/confusion_matrix" in events.Tags()["images"]
    assert (run / "model.onnx").is_file() and "(ok, atol 0.0001)" in stdout
    assert any((run / "checkpoints").glob("best-*.ckpt"))


def test_ddp_two_cpu_processes_log_global_metrics(runs_dir: Path) -> None:
    marks = runs_dir / "ranks"
    proc = ddp_run(
        runs_dir,
        2,
        "--trainer.max_epochs", "2",
        "--trainer.limit_train_batches", "4",
        # Frozen backbone in epoch 0, trained in epoch 1: DDP must keep syncing it once it gets gradients again.
        "--freeze.unfreeze_at_epoch", "1",
        # 271 validation images: an odd count, which padded shards would have to repeat one of.
        "--data.val_fraction", "0.151",
        "--trainer.callbacks+=tests.run_helpers.RankMarker",
        f"--trainer.callbacks.out_dir={marks}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((marks / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world_size"] for r in ranks} == {2}
    assert ranks[0]["pid"] != ranks[1]["pid"]
    assert [r["train_samples"] for r in ranks] == [2 * 4 * 64, 2 * 4 * 64]
    assert ranks[0]["param_sum"] == ranks[1]["param_sum"]
    dm = DigitsDataModule(val_fraction=0.151)
    dm.setup()
    assert len(dm.splits["val"]) == 271
    # Validation shards are disjoint and not padded: together exactly the validation split.
    assert ranks[0]["val_samples"] + ranks[1]["val_samples"] == len(dm.splits["val"])
    # One run folder, written by rank 0 only.
    run = runs_dir / "digits_cnn" / "version_0"
    assert sorted(p.name for p in (runs_dir / "digits_cnn").iterdir()) == ["version_0"]
    assert (run / "config.yaml").is_file()
    # The logged val/acc and test/acc are those of the whole split: the same as one process evaluating the checkpoint
    # (last.ckpt: the weights of the last validation; the best checkpoint: those tested).
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    last = SmallCNN.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu")
    assert events.Scalars("val/acc")[-1].value == pytest.approx(accuracy(last, dm, "val"), abs=1e-6)
    best = SmallCNN.load_from_checkpoint(next((run / "checkpoints").glob("best-*.ckpt")), map_location="cpu")
    assert events.Scalars("test/acc")[-1].value == pytest.approx(accuracy(best, dm, "test"), abs=1e-6)
    assert "test       test/acc=" in proc.stdout and proc.stdout.count("best ckpt") == 1
    # The default dashboards drew the confusion matrix of the whole split, not of rank 0's half.
    assert_whole_split_figures(run, runs_dir / "marks", dm, proc.stdout)


@pytest.mark.parametrize("devices", [1, 3])
def test_ddp_with_default_callbacks_on_one_and_three_processes(runs_dir: Path, devices: int) -> None:
    proc = ddp_run(runs_dir, devices, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    dm = DigitsDataModule()
    dm.setup()
    assert_whole_split_figures(runs_dir / "digits_cnn" / "version_0", runs_dir / "marks", dm, proc.stdout)


def test_bf16_mixed_on_cpu_trains(runs_dir: Path) -> None:
    settings = {"trainer.accelerator": "cpu", **FAST, "trainer.precision": "bf16-mixed", "trainer.max_epochs": 1}
    result = launch("digits_cnn", {**settings, "trainer.limit_train_batches": 5}, runs_dir=runs_dir)
    ckpt = torch.load(runs_dir / "digits_cnn/version_0/checkpoints/last.ckpt", weights_only=True)
    weights = ckpt["state_dict"]["backbone.0.weight"]
    assert weights.dtype == torch.float32 and torch.isfinite(weights).all()  # autocast: fp32 weights
    assert result.report.epochs == 1 and math.isfinite(result.test_metrics["test/acc"])


def test_fp16_on_cpu_says_bf16_up_front(runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = {"trainer.accelerator": "cpu", "trainer.precision": "16-mixed", "trainer.fast_dev_run": True}
    built = build("digits_cnn", settings, runs_dir=runs_dir)
    assert built.trainer.precision == "bf16-mixed"
    out, err = capsys.readouterr()
    assert out.count("note: precision 16-mixed (float16 autocast) needs a GPU") == 1
    assert "AMP with fp16 is not supported" not in err  # Lightning's own warning is replaced by the note


@pytest.mark.slow
def test_compile_keeps_keys_and_outputs(tmp_path: Path) -> None:
    L.seed_everything(0)
    model = SmallCNN(num_classes=5, input_shape=(1, 8, 8), channels=[8, 16], compile=True)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=DigitsDataModule(classes=[0, 1, 2, 3, 4]))
    plain_call = torch.nn.Sequential()._compiled_call_impl  # what an uncompiled module holds
    assert model.backbone._compiled_call_impl is not plain_call and model.head._compiled_call_impl is not plain_call
    path = tmp_path / "compiled.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert not any("_orig_mod" in k for k in state)
    plain = SmallCNN.load_from_checkpoint(path)
    assert plain.backbone._compiled_call_impl is plain_call  # compiled only when training starts
    x = torch.randn(4, 1, 8, 8)
    model.eval()
    plain.eval()
    torch.testing.assert_close(model(x), plain(x), rtol=1e-4, atol=1e-5)
