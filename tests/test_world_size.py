"""Resume on another number of processes: a checkpoint of 2 processes continues on 1 and the other way round, with
the global batch kept, the position within the epoch carried over, and every step taking exactly the samples the
uninterrupted run's step would have."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_launcher
from multinode import ROOT, env

from datamodules import DigitsDataModule
from datamodules.base import BatchLoader
from experiments.callbacks.geometry import GEOMETRY_KEY, BatchGeometry, plan_resize

FAST = [
    "digits_mlp",
    "--model.hidden", "[32]",
    "--progress_bar.refresh_rate", "0",
    "--onnx.enabled", "false",
    "--dashboards.enabled", "false",
    "--test_after_fit", "false",
    "--trainer.max_epochs", "2",
    "--trainer.accelerator", "cpu",
]  # fmt: skip
DDP = ["--trainer.devices", "2", "--trainer.strategy", "ddp"]
ONE = ["--trainer.devices", "1", "--trainer.strategy", "auto"]


def _launch(args: list[str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.run", *args], cwd=ROOT, env=env(), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    return proc


def _steps(records: Path) -> dict[int, list[tuple[float, ...]]]:
    """What every process trained on, by global step (a step's batches of every rank and micro-step together)."""
    steps: dict[int, list[tuple[float, ...]]] = defaultdict(list)
    for path in records.glob("rank*.pt"):
        for step, x in torch.load(path):
            steps[step] += map(tuple, x.tolist())
    return {step: sorted(rows) for step, rows in steps.items()}


def _expected(run: Path, global_batch: int) -> dict[int, list[tuple[float, ...]]]:
    """Each step's samples in one process that takes the whole global batch at once (the run's data, its order)."""
    data = yaml.safe_load((run / "config.yaml").read_text())["data"]["init_args"]
    dm = DigitsDataModule(**data)
    dm.setup()
    expected, step = {}, 0
    for epoch in range(2):
        loader = BatchLoader(
            dm.splits["train"], global_batch, shuffle=True, transform=dm.train_transform, seed=dm.seed,
            epoch_fn=lambda e=epoch: e,
        )  # fmt: skip
        for x, _ in loader:
            expected[step] = sorted(map(tuple, x.reshape(len(x), -1)[:, :64].tolist()))
            step += 1
    return expected


def _recorder(records: Path) -> list[str]:
    return ["--trainer.callbacks+=tests.run_helpers.BatchRecorder", f"--trainer.callbacks.out_dir={records}",
            "--trainer.callbacks.width=64"]  # fmt: skip


def _stop_at(step: int) -> list[str]:
    return ["--trainer.callbacks+=tests.run_helpers.SigintAtStep", f"--trainer.callbacks.step={step}"]


def test_a_checkpoint_of_two_processes_resumes_on_one_with_the_global_batch_kept(
    runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = tmp_path / "records"
    # 2 processes of 64: a global batch of 128, 10 steps an epoch; stopped mid-epoch 1.
    first = _launch([*FAST, *DDP, "--runs_dir", str(runs_dir), *_recorder(records), *_stop_at(13)])
    assert first.returncode == 130, first.stderr[-3000:]
    run = runs_dir / "digits_mlp" / "version_0"
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 13 and saved[GEOMETRY_KEY] == {"batch_size": 64, "world_size": 2, "accumulate": 1}
    code, out, err = run_launcher(["--resume", str(run), *ONE], capsys)
    assert code == 0, err
    assert (
        "note: resuming a run of 2 processes on 1: gradient accumulation 1 -> 2 keeps the global batch at 128 samples "
        "(64 per process x 1 process x 2 batches)"
    ) in err
    # The run goes on where it stopped, every step on exactly the samples of the uninterrupted run's step.
    assert _steps(records) == _expected(run, 128)
    done = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert (done["epoch"], done["global_step"]) == (1, 20)
    assert done[GEOMETRY_KEY] == {"batch_size": 64, "world_size": 1, "accumulate": 2}
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["trainer"]["accumulate_grad_batches"] == 2 and config["data"]["init_args"]["batch_size"] == 64
    assert json.loads((run / "status.json").read_text())["state"] == "completed"


@pytest.mark.slow
def test_a_checkpoint_of_one_process_resumes_on_two_with_the_global_batch_kept(
    runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = tmp_path / "records"
    # 1 process of 64: 20 steps an epoch; stopped mid-epoch 1.
    code, _, err = run_launcher([*FAST, *ONE, "--runs_dir", str(runs_dir), *_recorder(records), *_stop_at(25)], capsys)
    assert code == 130, err
    run = runs_dir / "digits_mlp" / "version_0"
    resumed = _launch(["--resume", str(run), *DDP])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (
        "note: resuming a run of 1 process on 2: batch per process 64 -> 32 keeps the global batch at 64 samples "
        "(32 per process x 2 processes)"
    ) in resumed.stderr
    assert _steps(records) == _expected(run, 64)
    done = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert (done["epoch"], done["global_step"]) == (1, 40)
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["init_args"]["batch_size"] == 32


@pytest.mark.parametrize(
    ("saved", "now", "expected", "note"),
    [
        ((64, 2, 1), (64, 1, 1), (64, 1, 2), "gradient accumulation 1 -> 2 keeps the global batch at 128"),
        ((64, 1, 1), (64, 2, 1), (32, 2, 1), "batch per process 64 -> 32 keeps the global batch at 64"),
        ((64, 1, 4), (64, 2, 4), (64, 2, 2), "gradient accumulation 4 -> 2 keeps the global batch at 256"),
        ((64, 4, 1), (64, 3, 1), (64, 3, 1), "the global batch changes from 256 samples"),
        ((64, 2, 1), (32, 1, 1), (32, 1, 1), "the global batch changes from 128 samples"),  # given anew: kept
        ((64, 2, 1), (64, 2, 1), (64, 2, 1), ""),
    ],
)
def test_resize_plan(saved: tuple, now: tuple, expected: tuple, note: str) -> None:
    resize = plan_resize(BatchGeometry(*saved), BatchGeometry(*now))
    assert resize.new == BatchGeometry(*expected)
    assert note in resize.note and bool(note) == bool(resize.note)


def test_samples_that_do_not_cut_into_new_batches_restart_the_epoch() -> None:
    from experiments.callbacks.geometry import remap_progress

    resize = plan_resize(BatchGeometry(48, 2, 1), BatchGeometry(64, 1, 1))  # given anew: 96 -> 64 samples a step
    counts = {"ready": 3, "completed": 2, "started": 3, "processed": 3}
    loops = {
        "fit_loop": {
            "state_dict": {"combined_loader": [{"epoch": 1, "batches": 3}]},
            "epoch_loop.batch_progress": {"current": dict(counts), "total": {k: v + 10 for k, v in counts.items()},
                                          "is_last_batch": False},
        }
    }  # fmt: skip
    assert "the epoch starts again" in remap_progress(loops, resize)
    assert loops["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 0}]
    assert set(loops["fit_loop"]["epoch_loop.batch_progress"]["current"].values()) == {0}
    # 3 batches of 96 samples map onto 4.5 batches of 64: no whole number, while 10 earlier batches map onto 15.
    assert loops["fit_loop"]["epoch_loop.batch_progress"]["total"]["ready"] == 15
