"""A checkpoint file that would run code when unpickled is refused wherever a run reads one by a path it was given
indirectly: the best checkpoint a restored ``ModelCheckpoint`` state names, through ``--ckpt_path`` and ``--resume``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import TINY, TINY_SETTINGS, run_launcher

FAST = ["digits_mlp", "--model.hidden", "[16]", "--progress_bar.refresh_rate", "0", "--dashboards.enabled", "false"]


class _Payload:
    """What a malicious file carries: unpickling it calls os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def _plant(path: Path, marker: Path) -> None:
    """A file that passes for a checkpoint by name and runs ``touch marker`` when unpickled without weights_only."""
    torch.save({"state_dict": {}, "x": _Payload(marker)}, path)


def _finished_run(runs: Path) -> Path:
    """A genuine two-epoch ``digits_mlp`` run folder (its checkpoints, config and status)."""
    from experiments.api import launch

    settings = {"model.hidden": [16], "progress_bar.refresh_rate": 0, "dashboards.enabled": False, **TINY_SETTINGS}
    return launch("digits_mlp", settings, runs_dir=runs).run_dir


def _refused(err: str, planted: Path) -> bool:
    return f"error: refusing to load '{planted}': it contains a pickled posix.system" in err


def test_best_path_restored_through_ckpt_path_is_never_unpickled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    finished_run = _finished_run(tmp_path / "first")
    marker, planted = tmp_path / "MARKER", tmp_path / "elsewhere.ckpt"
    _plant(planted, marker)
    ckpt = torch.load(finished_run / "checkpoints" / "last.ckpt", weights_only=True)
    for state in ckpt["callbacks"].values():
        if "best_model_path" in state:
            state["best_model_path"] = str(planted)
    crafted = tmp_path / "crafted.ckpt"
    torch.save(ckpt, crafted)
    code, _, err = run_launcher(
        [*FAST, *TINY, "--runs_dir", str(tmp_path / "runs"), "--ckpt_path", str(crafted)], capsys
    )
    assert not marker.exists(), "the planted checkpoint ran code"
    assert code == 2 and _refused(err, planted), err
    assert "Traceback" not in err


def test_best_checkpoint_replaced_in_a_resumed_run_is_never_unpickled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _finished_run(tmp_path / "runs")
    capsys.readouterr()
    marker = tmp_path / "MARKER"
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    _plant(best, marker)
    # Finished already: the resumed fit goes straight to its end (ONNX export of the best checkpoint), then tests it.
    code, _, err = run_launcher(["--resume", str(run), "--trainer.max_epochs", "2"], capsys)
    assert not marker.exists(), "the planted checkpoint ran code"
    assert code == 2 and _refused(err, best), err
