"""Faults during a run end with a usable run folder, the right message and exit code, and nothing lost.

The signal tests drive the real launcher in a subprocess and kill it at a random step; the others run it
in-process with a fault injected (a loss that explodes, a full disk, a callback that raises, a damaged checkpoint).
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import ROOT, run_launcher

from experiments.launcher.launch import build_args, launch

# Digits + a small MLP: 20 training batches per epoch, a few seconds per run.
FAST = [
    "digits_mlp",
    "--model.hidden",
    "[32]",
    "--progress_bar.refresh_rate",
    "0",
    "--onnx.enabled",
    "false",
    "--dashboards.enabled",
    "false",
]
STEPS_PER_EPOCH = 20


class SlowSteps(L.Callback):
    """Sleeps after every training step, so a signal sent from outside lands mid-epoch reliably."""

    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        time.sleep(self.seconds)


class Explode(L.Callback):
    """A user callback with a bug: raises at one global step (only there, so a resumed run gets past it)."""

    def __init__(self, at_step: int = 25) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        if trainer.global_step == self.at_step:
            raise RuntimeError("boom from a user callback")


def _status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


def _ckpt(path: Path) -> dict:
    return torch.load(path, weights_only=True, map_location="cpu")


def _finite(ckpt: dict) -> bool:
    return all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def _launch(args: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    return subprocess.Popen(
        [sys.executable, "-m", "experiments.run", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_resumable_checkpoint_and_resume_completes(
    runs_dir: Path, signum: int, capsys: pytest.CaptureFixture[str]
) -> None:
    run = runs_dir / "digits_mlp" / "version_0"
    args = [*FAST, "--runs_dir", str(runs_dir), "--trainer.max_epochs", "3", "--test_after_fit", "false"]
    proc = _launch([*args, "--trainer.callbacks+=test_faults.SlowSteps"])
    try:
        deadline = time.monotonic() + 60
        while not (run / "checkpoints" / "best-epoch000.ckpt").is_file():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        time.sleep(random.uniform(0.0, 0.6))  # a random step of epoch 1
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, err
    assert f"interrupted: {name} at epoch 1, global step" in err, err
    assert f"saved a resumable checkpoint to {run / 'checkpoints' / 'last.ckpt'}" in err
    assert f"-m experiments.run --resume {run}" in err and "Traceback" not in err
    assert "Received SIGTERM" not in err and "Detected KeyboardInterrupt" not in err  # said once, by zerotune
    status = _status(run)
    assert status["state"] == "interrupted" and status["resume"].endswith(f"--resume {run}")
    saved = _ckpt(run / "checkpoints" / "last.ckpt")
    stopped_at = saved["global_step"]
    assert STEPS_PER_EPOCH < stopped_at < 2 * STEPS_PER_EPOCH, stopped_at  # mid-epoch 1, past the epoch-0 save
    # Saved after the step of the batch it stopped at: Lightning resumes with the next batch.
    assert saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"] == stopped_at - 20

    with warnings.catch_warnings(record=True) as caught:  # in-process: spares a second interpreter start
        warnings.simplefilter("always")
        result = launch(build_args(["--resume", str(run)]))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # Nothing wrong is said: no missing-metric warning from the checkpoint callback, the run's version as a number.
    assert not [str(w.message) for w in caught if "monitored key" in str(w.message)]
    assert result.model.trainer.logger.version == 0
    # The run finished in its own folder with every step done: none lost, none repeated.
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]
    assert _status(run)["state"] == "completed"
    final = _ckpt(run / "checkpoints" / "last.ckpt")
    assert final["global_step"] == 3 * STEPS_PER_EPOCH and final["epoch"] == 2
    assert _finite(final)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = runs_dir / "digits_mlp" / "version_0"
    # Epoch 0 trains normally; the step schedule then multiplies the learning rate by 1e30 and the loss blows up.
    args = [*FAST, "--runs_dir", str(runs_dir), "--trainer.max_epochs", "3", "--model.scheduler", "step"]
    code, _, err = run_launcher([*args, "--model.step_size", "1", "--model.gamma", "1e30"], capsys)
    assert code == 1
    assert "error: training stopped: loss is nan at epoch 1, batch" in err, err
    assert f"the last good checkpoint is {run / 'checkpoints' / 'last.ckpt'}" in err
    assert "--model.lr" in err and "Traceback" not in err
    status = _status(run)
    assert status["state"] == "failed" and "loss is nan" in status["reason"]
    # Neither last.ckpt nor the best checkpoint was overwritten with the exploded weights.
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best-epoch000.ckpt", "last.ckpt"]
    last = _ckpt(run / "checkpoints" / "last.ckpt")
    assert last["global_step"] == STEPS_PER_EPOCH and _finite(last)
    from lightning_models import MLPClassifier

    model = MLPClassifier.load_from_checkpoint(run / "checkpoints" / "last.ckpt").eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.zeros(4, 1, 8, 8))).all()


def test_nan_loss_in_first_epoch_names_the_step(runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [*FAST, "--runs_dir", str(runs_dir), "--trainer.max_epochs", "1", "--model.lr", "1e30"]
    code, _, err = run_launcher(args, capsys)
    assert code == 1
    assert "loss is nan at epoch 0, batch" in err and "no checkpoint had been saved yet" in err, err
    assert not list((runs_dir / "digits_mlp" / "version_0" / "checkpoints").glob("*.ckpt"))


def test_disk_full_during_checkpoint_keeps_previous_file(
    runs_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = runs_dir / "digits_mlp" / "version_0"
    real_save, calls = torch.save, []

    def save_until_disk_full(obj: object, f: object, *args: object, **kwargs: object) -> None:
        calls.append(f)
        if len(calls) == 3:  # the best checkpoint of epoch 1: half written, then the disk is full
            Path(f).write_bytes(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_disk_full)
    args = [*FAST, "--runs_dir", str(runs_dir), "--trainer.max_epochs", "3", "--test_after_fit", "false"]
    code, _, err = run_launcher(args, capsys)
    assert code == 1
    assert "error: disk full at epoch 1" in err and "No space left on device" in err, err
    assert "The previous checkpoint files are intact" in err and "free some space, then resume with:" in err
    assert "Traceback" not in err
    # The temporary file was removed; the files from epoch 0 are whole and load.
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best-epoch000.ckpt", "last.ckpt"]
    assert _ckpt(ckpts / "last.ckpt")["global_step"] == STEPS_PER_EPOCH
    assert _ckpt(ckpts / "best-epoch000.ckpt")["global_step"] == STEPS_PER_EPOCH
    assert _status(run)["state"] == "failed"

    monkeypatch.setattr(torch, "save", real_save)  # space freed
    assert run_launcher(["--resume", str(run)], capsys)[0] == 0
    assert _ckpt(ckpts / "last.ckpt")["global_step"] == 3 * STEPS_PER_EPOCH


def test_callback_error_saves_checkpoint_and_names_the_callback(
    runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = runs_dir / "digits_mlp" / "version_0"
    args = [*FAST, "--runs_dir", str(runs_dir), "--trainer.max_epochs", "2", "--test_after_fit", "false"]
    sigint_before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job
    code, _, err = run_launcher([*args, "--trainer.callbacks+=test_faults.Explode"], capsys)
    assert code == 1
    line = "error: RuntimeError in callback Explode.on_train_batch_end at epoch 1, global step 25: boom"
    assert line in err, err
    assert "Traceback" in err  # a bug in user code: its traceback is what the user needs
    assert f"saved a checkpoint to {run / 'checkpoints' / 'last.ckpt'}" in err
    assert f"after fixing it, resume with: {sys.executable} -m experiments.run --resume {run}" in err
    assert _status(run)["state"] == "failed"
    assert _ckpt(run / "checkpoints" / "last.ckpt")["global_step"] == 25
    assert signal.getsignal(signal.SIGINT) is sigint_before  # Ctrl+C handling is back as it was after the fault

    # Resumed past the faulty step, the run completes.
    assert run_launcher(["--resume", str(run)], capsys)[0] == 0
    assert _status(run)["state"] == "completed"
    assert _ckpt(run / "checkpoints" / "last.ckpt")["global_step"] == 2 * STEPS_PER_EPOCH


def test_corrupt_last_checkpoint_resumes_from_best(runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = runs_dir / "digits_mlp" / "version_0"
    args = [*FAST, "--runs_dir", str(runs_dir), "--trainer.max_epochs", "2", "--test_after_fit", "false"]
    assert run_launcher(args, capsys)[0] == 0
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:5000])  # truncated, as by a crash mid-copy
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    best_step = _ckpt(best)["global_step"]

    code, out, err = run_launcher(["--resume", str(run), "--trainer.max_epochs", "3"], capsys)
    assert code == 0, err
    assert f"warning: cannot read checkpoint '{last}': it is truncated" in err
    assert f"resuming from {best} instead (epoch" in err and f"global step {best_step})" in err
    assert _status(run)["state"] == "completed"
    assert _ckpt(last)["global_step"] == 3 * STEPS_PER_EPOCH


def test_two_runs_started_together_get_distinct_folders(runs_dir: Path) -> None:
    existing = runs_dir / "digits_mlp" / "version_0"
    existing.mkdir(parents=True)
    (existing / "notes.txt").write_text("an earlier run")
    args = [*FAST, "--runs_dir", str(runs_dir), "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"]
    args += ["--trainer.limit_val_batches", "1", "--test_after_fit", "false"]
    procs = [_launch(args) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted(p.name for p in existing.parent.iterdir()) == ["version_0", "version_1", "version_2"]
    assert (existing / "notes.txt").read_text() == "an earlier run" and not (existing / "config.yaml").exists()
    runs = {line.split()[1] for out, _ in outs for line in out.splitlines() if line.startswith("run ")}
    assert runs == {str(runs_dir / "digits_mlp" / "version_1"), str(runs_dir / "digits_mlp" / "version_2")}
    for out, _ in outs:  # the TensorBoard command the summary prints listens on this machine only
        assert "--host 127.0.0.1" in next(line for line in out.splitlines() if line.startswith("tensorboard"))
