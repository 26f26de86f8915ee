"""Runs across "nodes": two launchers on one machine joined over 127.0.0.1, as torchrun or Lightning's own variables
join them on a cluster. Each node is a separate process tree, so what holds here holds across machines that share
the runs folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from multinode import ROOT, env, finish, plain_nodes, torchrun_nodes, wait_for
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

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


@pytest.mark.parametrize("launcher", ["plain", pytest.param("torchrun", marks=pytest.mark.slow)])
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


def _fake_earlier_run(runs_dir: Path, name: str) -> dict[str, bytes]:
    """An earlier run in ``version_0``, so the new run gets ``version_1``; returns its files' contents."""
    earlier = runs_dir / name / "version_0"
    earlier.mkdir(parents=True)
    (earlier / "config.yaml").write_text("earlier: run\n")
    (earlier / "status.json").write_text('{"state": "completed"}\n')
    return {p.name: p.read_bytes() for p in earlier.iterdir()}


def test_two_torchrun_nodes_make_one_run_with_every_default_callback(runs_dir: Path, tmp_path: Path) -> None:
    earlier = _fake_earlier_run(runs_dir, "digits_cnn")
    args = [
        "digits_cnn", "--runs_dir", str(runs_dir), "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp",
        "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "3", "--progress_bar.refresh_rate", "0",
        "--trainer.callbacks+=tests.run_helpers.RankMarker", f"--trainer.callbacks.out_dir={tmp_path / 'ranks'}",
    ]  # fmt: skip
    nodes = torchrun_nodes(args, tmp_path / "logs")
    codes = finish(nodes)
    out = nodes[0].output()
    assert codes == [0, 0], (out[-3000:], nodes[1].output()[-3000:])
    ranks = [json.loads((tmp_path / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world_size"] for r in ranks} == {2}
    assert ranks[0]["param_sum"] == ranks[1]["param_sum"]  # the replicas stayed in step across the nodes
    # One run folder, written by rank 0; the earlier run is untouched.
    assert sorted(p.name for p in (runs_dir / "digits_cnn").iterdir()) == ["version_0", "version_1"]
    assert {p.name: p.read_bytes() for p in (runs_dir / "digits_cnn" / "version_0").iterdir()} == earlier
    run = runs_dir / "digits_cnn" / "version_1"
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert len(list((run / "checkpoints").glob("best-*.ckpt"))) == 1
    assert (run / "model.onnx").is_file() and "(ok, atol 0.0001)" in out
    events = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    assert len(events.Scalars("val/acc")) == 2 and "val/confusion_matrix" in events.Tags()["images"]
    status = _status(run)
    assert status["state"] == "completed" and "test/acc" in status["test_metrics"]
    assert out.count(f"run        {run}") == 1 and f"run        {run}" not in nodes[1].output()


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_two_torchrun_nodes_end_with_the_weights_of_one_node_of_two_processes(runs_dir: Path, tmp_path: Path) -> None:
    args = [
        "digits_cnn", "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.deterministic", "true",
        "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "4", "--progress_bar.refresh_rate", "0",
        "--onnx.enabled", "false", "--dashboards.enabled", "false", "--test_after_fit", "false",
    ]  # fmt: skip
    nodes = torchrun_nodes([*args, "--runs_dir", str(runs_dir / "nodes")], tmp_path / "logs")
    assert finish(nodes) == [0, 0], nodes[0].output()[-3000:]
    one = subprocess.run(
        [sys.executable, "-m", "experiments.run", *args, "--runs_dir", str(runs_dir / "one"), "--trainer.devices", "2"],
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    two_nodes = _final_weights(runs_dir / "nodes" / "digits_cnn" / "version_0")
    one_node = _final_weights(runs_dir / "one" / "digits_cnn" / "version_0")
    assert two_nodes.keys() == one_node.keys()
    assert all(torch.equal(two_nodes[k], one_node[k]) for k in one_node), "the weights differ"


def _corpus(tmp_path: Path) -> Path:
    """About 60 KB of text from the standard library's own source."""
    import inspect
    import json as json_module
    import textwrap

    text = "\n".join(inspect.getsource(m) for m in (json_module.decoder, json_module.encoder, textwrap))
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    return path


@pytest.mark.slow
def test_gpt_on_two_torchrun_nodes_shares_out_its_windows(runs_dir: Path, tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    args = [
        "shakespeare_char_gpt", "--data.path", str(corpus), "--data.cache_dir", str(tmp_path / "tokens"),
        "--model.n_layer", "1", "--model.n_head", "2", "--model.n_embd", "32", "--data.block_size", "32",
        "--data.eval_batch_size", "16", "--data.val_blocks", "8", "--trainer.max_steps", "6",
        "--trainer.val_check_interval", "3", "--model.warmup_steps", "1", "--progress_bar.refresh_rate", "0",
        "--trainer.accelerator", "cpu",
    ]  # fmt: skip
    recorded = "--trainer.callbacks+=tests.run_helpers.BatchRecorder"  # each window's first 16 tokens
    nodes = torchrun_nodes(
        [*args, "--runs_dir", str(runs_dir), "--data.batch_size", "4", "--trainer.strategy", "ddp", recorded,
         f"--trainer.callbacks.out_dir={tmp_path / 'nodes'}"],
        tmp_path / "logs",
    )  # fmt: skip
    assert finish(nodes) == [0, 0], nodes[0].output()[-3000:]
    run = runs_dir / "shakespeare_char_gpt" / "version_0"
    assert (run / "model.onnx").is_file() and (run / "tokenizer.json").is_file()
    assert _status(run)["state"] == "completed"
    # One process with the global batch of 8 windows, for comparison.
    one = subprocess.run(
        [sys.executable, "-m", "experiments.run", *args, "--runs_dir", str(tmp_path / "one"), "--data.batch_size", "8",
         "--onnx.enabled", "false", "--samples.enabled", "false", recorded,
         f"--trainer.callbacks.out_dir={tmp_path / 'one'}"],
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    rank0, rank1 = ([x for _, x in torch.load(*(tmp_path / "nodes").glob(f"rank{r}-*.pt"))] for r in (0, 1))
    single = [x for _, x in torch.load(*(tmp_path / "one").glob("rank0-*.pt"))]
    assert len(rank0) == len(rank1) == len(single) == 6
    for a, b, whole in zip(rank0, rank1, single, strict=True):
        assert a.shape == b.shape == (4, 16)
        assert not torch.equal(a, b)
        # Together the two ranks' windows are the 8 of the one process's batch: shared out, none repeated.
        assert sorted(map(tuple, torch.cat([a, b]).tolist())) == sorted(map(tuple, whole.tolist()))
