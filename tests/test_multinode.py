"""Runs across "nodes": two launchers on one machine joined over 127.0.0.1, as torchrun or Lightning's own variables
join them on a cluster. Each node is a separate process tree, so what holds here holds across machines that share
the runs folder.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from multinode import finish, plain_nodes, torchrun_nodes, wait_for

FAST = [
    "digits_mlp",
    "--model.hidden", "[32]",
    "--progress_bar.refresh_rate", "0",
    "--onnx.enabled", "false",
    "--dashboards.enabled", "false",
    "--trainer.accelerator", "cpu",
    "--trainer.strategy", "ddp",
]  # fmt: skip


def _status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


@pytest.mark.parametrize("launcher", ["plain", "torchrun"])
def test_sigterm_reaching_one_node_stops_every_rank_with_one_resumable_checkpoint(
    runs_dir: Path, tmp_path: Path, launcher: str
) -> None:
    marks = tmp_path / "marks"
    args = [
        *FAST, "--runs_dir", str(runs_dir), "--trainer.max_epochs", "3", "--test_after_fit", "false",
        "--trainer.callbacks+=tests.run_helpers.MarkAtStep", f"--trainer.callbacks.out_dir={marks}",
        "--trainer.callbacks.step=4",
    ]  # fmt: skip
    start = plain_nodes if launcher == "plain" else torchrun_nodes
    nodes = start(args, tmp_path / "logs")
    wait_for(marks / "rank1.pid", nodes)
    # The scheduler of node 1 alone stops its process (a preempted node, `kill` by hand).
    worker = int((marks / "rank1.pid").read_text())
    import os

    os.kill(worker, signal.SIGTERM)
    codes = finish(nodes, timeout=90)
    out = nodes[0].output()
    run = runs_dir / "digits_mlp" / "version_0"
    status = _status(run)
    assert status["state"] == "interrupted", (status, out)
    assert "interrupted: SIGTERM at epoch" in out, out
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] >= 4 and status["global_step"] == saved["global_step"]
    assert f"--resume {run}" in status["resume"]
    if launcher == "plain":
        assert codes == [143, 143], (codes, out, nodes[1].output())
    else:
        assert all(code != 0 for code in codes)  # torchrun reports a stopped worker as a failure
    # Both nodes resume the run together, from that step, to the end.
    resumed = start(
        ["--resume", str(run), "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp"], tmp_path / "resume"
    )
    codes = finish(resumed, timeout=120)
    assert codes == [0, 0], (resumed[0].output()[-3000:], resumed[1].output()[-3000:])
    assert _status(run)["state"] == "completed"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2
