"""Early stopping: off by default, stops a run whose metric is flat, says why, and keeps its count over a resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from experiments.api import launch, resume
from experiments.callbacks.early_stopping import EarlyStopping

TINY: dict[str, Any] = {"trainer.limit_train_batches": 2, "trainer.limit_val_batches": 1, "test_after_fit": False}
# min_delta 1.0 on an accuracy: no epoch can count as an improvement, so the metric is flat as judged.
FLAT: dict[str, Any] = {"early_stopping.enabled": True, "early_stopping.min_delta": 1.0}


def test_flat_metric_stops_the_run_and_says_when_and_why(runs_dir: Path) -> None:
    settings = {"trainer.max_epochs": 10, **TINY, **FLAT, "early_stopping.patience": 2}
    result = launch("digits_mlp", settings, runs_dir=runs_dir)
    run = runs_dir / "digits_mlp" / "version_0"
    assert result.run_dir == run
    status = json.loads((run / "status.json").read_text())
    # Epoch 0 sets the best value; epochs 1 and 2 do not improve on it: patience 2 is used up at epoch 2.
    assert status["state"] == "completed" and status["epoch"] == 3
    assert status["stopped_early"]["epoch"] == 2
    assert "val/acc did not improve" in status["stopped_early"]["reason"]
    stop = result.report.early_stop
    assert stop is not None and (stop.epoch, stop.max_epochs) == (2, 10)
    assert stop.reason.startswith("Monitored metric val/acc did not improve")
    assert result.report.summary().count("early stop at epoch 2 of 10: Monitored metric val/acc did not improve") == 1


def test_early_stopping_is_off_by_default(runs_dir: Path) -> None:
    result = launch("digits_mlp", {"trainer.max_epochs": 4, **TINY, "early_stopping.min_delta": 1.0}, runs_dir=runs_dir)
    status = json.loads((runs_dir / "digits_mlp" / "version_0" / "status.json").read_text())
    assert status["epoch"] == 4 and "stopped_early" not in status
    assert result.report.early_stop is None and result.report.epochs == 4


def test_resume_keeps_the_patience_already_used(runs_dir: Path) -> None:
    settings = {**TINY, **FLAT, "early_stopping.patience": 3}
    run = launch("digits_mlp", {**settings, "trainer.max_epochs": 2}, runs_dir=runs_dir).run_dir
    assert run == runs_dir / "digits_mlp" / "version_0"
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]
    (saved,) = [v for k, v in state.items() if k.startswith("EarlyStopping")]
    assert saved["wait_count"] == 1
    resumed = resume(run, {"trainer.max_epochs": 10})
    # Waited 1 epoch before the interruption, 2 more after: stops at epoch 3 (a fresh count would reach epoch 4).
    status = json.loads((run / "status.json").read_text())
    assert status["stopped_early"]["epoch"] == 3
    assert resumed.report.early_stop is not None and resumed.report.early_stop.epoch == 3


@pytest.mark.parametrize(
    ("model", "monitor", "mode"),
    [("lightning_models.SmallCNN", "val/acc", "max"), ("lightning_models.LinearRegression", "val/loss", "min")],
)
def test_auto_monitor_and_mode_follow_the_model(model: str, monitor: str, mode: str) -> None:
    import importlib

    module, _, name = model.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    callback = EarlyStopping(enabled=True, min_delta=0.5)

    class Trainer:
        checkpoint_callback, val_check_interval, check_val_every_n_epoch = None, 1.0, 1

    callback.setup(Trainer(), cls.__new__(cls), "fit")
    assert (callback.monitor, callback.mode) == (monitor, mode)
    # Lightning keeps min_delta signed by the direction and starts from the worst value.
    assert callback.min_delta == (0.5 if mode == "max" else -0.5)
    assert callback.best_score == (-torch.inf if mode == "max" else torch.inf)
