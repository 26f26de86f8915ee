"""status.json tells the truth: interrupts before training say so, dead processes read as crashed, and ``--resume``
refuses a run whose process is still working on it. Each test drives the real launcher in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

from experiments.rundir.status import read_status

FAST = [
    "digits_mlp",
    "--model.hidden", "[32]",
    "--progress_bar.refresh_rate", "0",
    "--onnx.enabled", "false",
    "--dashboards.enabled", "false",
]  # fmt: skip


def launch(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "experiments.run", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def status_file(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


@pytest.mark.parametrize("hook", ["setup", "on_fit_start"])
def test_sigterm_before_training_is_one_line_and_an_honest_status(runs_dir: Path, hook: str) -> None:
    run, marker = runs_dir / "digits_mlp" / "version_0", runs_dir / "paused"
    proc = launch(
        *FAST, "--runs_dir", str(runs_dir),
        "--trainer.callbacks+=tests.run_helpers.PauseAt",
        f"--trainer.callbacks.hook={hook}",
        f"--trainer.callbacks.marker={marker}",
    )  # fmt: skip
    try:
        wait_for(marker, proc)
        assert status_file(run)["state"] in ("starting", "running")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-2:] == [
        "interrupted: SIGTERM before training started; no checkpoint had been saved yet",
        "start it again: nothing was saved yet",
    ], err
    assert "Traceback" not in err
    status = status_file(run)
    assert status["state"] == "interrupted" and status["resume"] is None
    assert status["pid"] == proc.pid and status["host"]
    assert read_status(run)["state"] == "interrupted"  # a finished process is not "crashed"


def test_killed_run_reads_as_crashed_and_resume_refuses_a_live_one(runs_dir: Path) -> None:
    run, marker = runs_dir / "digits_mlp" / "version_0", runs_dir / "paused"
    common = [*FAST, "--runs_dir", str(runs_dir), "--test_after_fit", "false", "--trainer.max_epochs", "3"]
    proc = launch(
        *common,
        "--trainer.callbacks+=tests.run_helpers.PauseAt",
        "--trainer.callbacks.hook=on_train_epoch_end",
        f"--trainer.callbacks.marker={marker}",
        "--trainer.callbacks.epoch=1",
    )
    try:
        wait_for(marker, proc)  # epoch 0's checkpoints are on disk; the process sleeps in epoch 1
        live = read_status(run)
        assert live["state"] == "running" and live["pid"] == proc.pid
        refused = subprocess.run(
            [sys.executable, "-m", "experiments.run", "--resume", str(run)],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.strip() == (
            f"error: --resume {run}: the run is still running (PID {proc.pid} on this host); two processes would "
            "write one run folder. Stop that process first, or pass --force if it is gone"
        )
        proc.send_signal(signal.SIGKILL)  # as the out-of-memory killer would
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.communicate()
    assert status_file(run)["state"] == "running"  # the file itself could not be updated by a killed process
    crashed = read_status(run)
    assert crashed["state"] == "crashed" and f"process {proc.pid} ended during training" in crashed["reason"]
    assert crashed["resume"].endswith(f"--resume {run}")
    resumed = subprocess.run(
        [sys.executable, "-m", "experiments.run", "--resume", str(run)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"note: {run} crashed: process {proc.pid} ended during training" in resumed.stderr
    final = read_status(run)
    assert final["state"] == "completed" and final["epoch"] == 3 and final["pid"] != proc.pid


def test_force_is_only_for_resume(capsys: pytest.CaptureFixture[str]) -> None:
    from experiments.run import main

    assert main(["digits_mlp", "--force"]) == 2
    assert capsys.readouterr().err.startswith("error: --force only applies to --resume")


def test_dead_process_on_another_host_is_left_as_it_says(tmp_path: Path) -> None:
    record = {"state": "running", "host": "elsewhere", "pid": 2**22 + 1, "pid_started": None}
    (tmp_path / "status.json").write_text(json.dumps(record))
    assert read_status(tmp_path)["state"] == "running"  # this host cannot see that process
    record["host"] = os.uname().nodename
    (tmp_path / "status.json").write_text(json.dumps(record))
    assert read_status(tmp_path)["state"] == "crashed"


def test_runs_listing_shows_each_run_as_its_status_reads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from experiments.runs import main

    base = tmp_path / "runs" / "digits_mlp"
    records = {
        "version_0": {"state": "completed", "epoch": 30, "global_step": 600, "test_metrics": {"test/acc": 0.9666}},
        # A process that cannot be alive: PIDs never reach 2**22 + 1 on Linux.
        "version_1": {"state": "running", "host": os.uname().nodename, "pid": 2**22 + 1, "epoch": 3},
        "version_2": {"state": "interrupted", "epoch": 1, "global_step": 24, "reason": "SIGTERM at epoch 1",
                      "resume": "python -m experiments.run --resume runs/digits_mlp/version_2"},
    }  # fmt: skip
    for name, record in records.items():
        (base / name / "checkpoints").mkdir(parents=True)
        (base / name / "status.json").write_text(json.dumps(record))
    (base / "version_1" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert main([str(tmp_path / "runs")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines if not line.startswith(" ")] == [
        [str(base / "version_0"), "completed"],
        [str(base / "version_1"), "crashed"],
        [str(base / "version_2"), "interrupted"],
    ]
    assert "test/acc=0.9666" in lines[0] and "ended during training" in lines[1]
    assert lines[2].strip().startswith("resume with: ") and lines[2].strip().endswith(f"--resume {base / 'version_1'}")
    assert lines[-1].strip() == "resume with: python -m experiments.run --resume runs/digits_mlp/version_2"
    assert main([str(tmp_path / "nope")]) == 2
