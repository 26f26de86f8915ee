"""Progress output: plain lines (no carriage returns, no cursor codes) when standard output is a file or a pipe, as
in CI and under nohup; tqdm bars on a terminal. Driven through the real launcher in a subprocess."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

from conftest import ROOT

RUN = [
    "digits_mlp",
    "--model.hidden", "[32]",
    "--trainer.max_epochs", "3",
    "--trainer.limit_train_batches", "4",
    "--onnx.enabled", "false",
]  # fmt: skip
# Epochs count from 0, as in the bars, the checkpoint names and the messages; the training loss shows once logged
# (every log_every_n_steps steps).
LINE = re.compile(
    r"^epoch (\d) \(of 3\)  step (\d+)/12  (train/loss [\d.]+  )?val/loss [\d.]+  val/acc [\d.]+  val/f1 [\d.]+  "
    r"\d+s elapsed"
)


def test_log_file_gets_one_plain_line_per_epoch(runs_dir: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.run", *RUN, "--runs_dir", str(runs_dir)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=180,
    )
    log = proc.stdout.decode()
    assert proc.returncode == 0, log[-3000:]
    assert "\r" not in log and "\x1b[" not in log
    assert max(map(len, log.splitlines())) <= 300
    epochs = [LINE.match(line) for line in log.splitlines() if line.startswith("epoch ")]
    assert all(epochs) and [(m[1], m[2]) for m in epochs] == [("0", "4"), ("1", "8"), ("2", "12")], log
    # The time left, on every line but the last epoch's.
    assert [", eta " in m.string for m in epochs] == [True, True, False]


def test_interrupt_message_starts_its_own_line(runs_dir: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable, "-m", "experiments.run", *RUN, "--runs_dir", str(runs_dir),
            "--trainer.callbacks+=tests.run_helpers.SigintAtStep", "--trainer.callbacks.step=6",
        ],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=180,
    )  # fmt: skip
    log = proc.stdout.decode()
    assert proc.returncode == 130, log[-3000:]
    starts = [line for line in log.splitlines() if "interrupted:" in line]
    assert starts and all(line.startswith("interrupted: SIGINT at epoch 1, global step 6") for line in starts), log


def test_terminal_keeps_the_bars(runs_dir: Path) -> None:
    leader, follower = pty.openpty()
    # A terminal of 24 rows and 120 columns (a new pseudo-terminal has none, and tqdm then draws an empty bar).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.run", *RUN, "--runs_dir", str(runs_dir)],
        cwd=ROOT, stdout=follower, stderr=follower,
    )  # fmt: skip
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=180) == 0
    os.close(leader)
    screen = b"".join(chunks).decode(errors="replace")
    assert "\r" in screen and "Epoch 2: 100%" in screen  # tqdm's bar, redrawn in place
    assert not any(LINE.match(line) for line in screen.splitlines())
