"""Launcher mistakes found once a run has its folder: one line, and no folder left behind for a run that never
trained; messages that say what is true."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, run_launcher
from safetensors.torch import save_file

from experiments.launcher.recipes import CONFIG_DIR
from lightning_models import MLPClassifier


def _one_error(code: int, err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_weights_of_another_size_name_the_shapes_and_leave_no_run_folder(
    tmp_path: Path, runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = MLPClassifier(num_classes=10, input_shape=(1, 8, 8), hidden=[16])
    weights = tmp_path / "other.safetensors"
    save_file({k: torch.zeros(*[d + 1 for d in v.shape]) for k, v in model.state_dict().items()}, weights)
    args = ["digits_mlp", "--model.hidden", "[16]", "--model.pretrained", str(weights), "--runs_dir", str(runs_dir)]
    line = _one_error(*run_launcher([*args, *TINY], capsys)[::2])
    assert f"no tensor in '{weights}' fits this model: every one whose name matches has another shape" in line
    assert "net.1.0.weight file [17, 65] vs model [16, 64]" in line
    assert list((runs_dir / "digits_mlp").iterdir()) == []  # nothing is created for a config mistake


def test_a_corpus_mistake_leaves_no_run_folder(
    tmp_path: Path, runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "short.txt"
    corpus.write_text("too short for one block of text")
    args = ["shakespeare_char_gpt", "--data.path", str(corpus), "--data.cache_dir", str(tmp_path / "tokens")]
    line = _one_error(*run_launcher([*args, "--runs_dir", str(runs_dir), "--trainer.max_steps", "2"], capsys)[::2])
    assert "fewer than one block" in line
    assert list((runs_dir / "shakespeare_char_gpt").iterdir()) == []


def test_a_mistake_in_a_folder_named_by_the_caller_keeps_the_folder(
    tmp_path: Path, runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder the launcher did not create (``--version``, as a sweep's trial folder with its log) is never removed."""
    folder = runs_dir / "digits_mlp" / "trial_0"
    folder.mkdir(parents=True)
    (folder / "output.log").write_text("the trial's log\n")
    args = ["digits_mlp", "--runs_dir", str(runs_dir), "--version", "trial_0", *TINY]
    _one_error(*run_launcher([*args, "--model.pretrained", str(tmp_path / "other.ckpt")], capsys)[::2])
    assert (folder / "output.log").read_text() == "the trial's log\n"


def test_resuming_a_crashed_run_without_a_checkpoint_does_not_claim_to_resume(
    runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = runs_dir / "digits_mlp" / "version_0"
    run.mkdir(parents=True)
    shutil.copy(CONFIG_DIR / "digits_mlp.yaml", run / "config.yaml")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    import socket

    status = {"state": "running", "host": socket.gethostname(), "pid": gone.pid, "pid_started": None}
    (run / "status.json").write_text(json.dumps(status))
    line = _one_error(*run_launcher(["--resume", str(run)], capsys)[::2])
    assert "no checkpoints/last.ckpt in that run folder" in line
