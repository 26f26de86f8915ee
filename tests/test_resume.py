"""Resume: an interrupted run continued with --resume (or ``resume`` from Python) ends with the weights of an
uninterrupted run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import run_launcher
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from experiments.api import launch, resume
from experiments.rundir.stops import TrainingStopped
from tests.run_helpers import SigintAtStep

# 4 batches per epoch, 3 epochs: 12 optimizer steps. Dropout, an epoch-based scheduler and AdamW moments make any
# difference in restored state (RNG, scheduler, optimizer, data order) show in the final weights.
SETTINGS: dict[str, Any] = {
    "trainer.limit_train_batches": 4,
    "trainer.limit_val_batches": 1,
    "trainer.deterministic": True,
    "model.scheduler": "step",
    "model.step_size": 1,
    "model.gamma": 0.5,
    "test_after_fit": False,
    "onnx.enabled": False,
    "dashboards.enabled": False,
    "progress_bar.refresh_rate": 0,
}


def last_state(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``last.ckpt`` of the uninterrupted 3-epoch run."""
    runs = tmp_path_factory.mktemp("reference")
    result = launch("digits_cnn", {**SETTINGS, "trainer.max_epochs": 3}, runs_dir=runs)
    return last_state(result.run_dir)


def assert_same_training_state(resumed: dict, reference: dict) -> None:
    assert (resumed["epoch"], resumed["global_step"]) == (reference["epoch"], reference["global_step"]) == (2, 12)
    for key, value in reference["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=1e-6, msg=key)
    for group, ref_group in zip(
        resumed["optimizer_states"][0]["state"].values(),
        reference["optimizer_states"][0]["state"].values(),
        strict=True,
    ):
        torch.testing.assert_close(group["exp_avg"], ref_group["exp_avg"], rtol=0, atol=1e-6)
    assert resumed["lr_schedulers"] == reference["lr_schedulers"]


def test_resume_after_an_epoch_matches_uninterrupted_run(
    reference: dict, runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = launch("digits_cnn", {**SETTINGS, "trainer.max_epochs": 1}, runs_dir=runs_dir).run_dir
    assert run == runs_dir / "digits_cnn" / "version_0"
    capsys.readouterr()
    # The command line's --resume: the saved config is used; the override extends it (and is saved for a later
    # resume).
    code, out, err = run_launcher(["--resume", str(run), "--trainer.max_epochs", "3"], capsys)
    assert code == 0, err
    assert_same_training_state(last_state(run), reference)
    assert sorted(p.name for p in (runs_dir / "digits_cnn").iterdir()) == ["version_0"]
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["trainer"]["max_epochs"] == 3 and config["resume"] is None
    # One TensorBoard run holds both parts: validation of epochs 0, 1 and 2.
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    assert sorted({e.step for e in events.Scalars("val/acc")}) == [3, 7, 11]
    assert f"run        {run}" in out


def test_resume_mid_epoch_after_ctrl_c_matches_uninterrupted_run(reference: dict, runs_dir: Path) -> None:
    # A callback given from Python runs after the run's fault guard, which sees the signal at the next step: a
    # SIGINT after step 5 stops the run after step 6.
    with pytest.raises(TrainingStopped) as info:
        launch("digits_cnn", {**SETTINGS, "trainer.max_epochs": 3}, runs_dir=runs_dir, callbacks=[SigintAtStep(5)])
    assert info.value.outcome.state == "interrupted" and info.value.outcome.exit_code == 130
    run = runs_dir / "digits_cnn" / "version_0"
    saved = last_state(run)
    assert (saved["epoch"], saved["global_step"]) == (1, 6)  # stopped in the middle of epoch 1
    resumed = resume(run)
    assert resumed.run_dir == run and resumed.report.epochs == 3
    assert_same_training_state(last_state(run), reference)


def test_ckpt_path_last_starts_a_new_run_from_the_newest_checkpoint(runs_dir: Path) -> None:
    launch("digits_cnn", {**SETTINGS, "trainer.max_epochs": 1}, runs_dir=runs_dir)
    launch("digits_cnn", {**SETTINGS, "trainer.max_epochs": 2}, runs_dir=runs_dir, ckpt_path="last")
    first, second = (last_state(runs_dir / "digits_cnn" / f"version_{i}") for i in (0, 1))
    assert (first["global_step"], second["global_step"]) == (4, 8)  # continued, not restarted


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--resume", "{runs}/nope"], "--resume {runs}/nope: no config.yaml there"),
        (["digits_cnn", "--resume", "{runs}"], "leave out the experiment name 'digits_cnn'"),
        (["digits_cnn", "--ckpt_path", "{runs}/x.ckpt"], "--ckpt_path: no such checkpoint file '{runs}/x.ckpt'"),
        (["digits_cnn", "--ckpt_path", "last"], "--ckpt_path last: no earlier run in {runs}/digits_cnn"),
    ],
)
def test_resume_usage_errors(argv: list[str], message: str, runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.format(runs=runs_dir) for a in argv]
    code, _, err = run_launcher([*argv, "--runs_dir", str(runs_dir)], capsys)
    assert code == 2
    assert message.format(runs=runs_dir) in err and "Traceback" not in err
