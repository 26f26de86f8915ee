"""The benchmark command runs its loops on a tiny synthetic split and leaves nothing behind."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest


def test_bench_runs_every_loop_and_removes_its_temporary_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from experiments import bench

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    out = tmp_path / "bench.md"
    args = ["--models", "mnist_mlp", "--seconds", "0.01", "--samples", "512", "--workers", "0"]
    assert bench.main([*args, "--skip", "startup", "accuracy", "onnx", "--out", str(out)]) == 0
    row = next(line for line in out.read_text().splitlines() if line.startswith("| mnist_mlp |"))
    rates = [float(cell) for cell in row.split("|")[4:8]]  # samples/s of (a), (b), (L) and (c)
    assert all(rate > 0 for rate in rates), row
    assert [p.name for p in tmp_path.iterdir()] == ["bench.md"]  # no zerotune-bench-* folder left behind


def test_hand_written_loops_follow_the_recipes_precision_and_memory_format() -> None:
    import torch

    from experiments.benchmarks.synthetic import Case

    fast, plain = Case.from_config("mnist_fast"), Case.from_config("mnist_mlp")
    assert (fast.precision, plain.precision) == ("bf16-mixed", "32-true")
    cpu = torch.device("cpu")
    dm = fast.datamodule()
    model = fast.training_model(dm, cpu)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert model.training and conv.weight.is_contiguous(memory_format=torch.channels_last)
    with fast.autocast(cpu):
        assert model(torch.zeros(2, *dm.input_shape)).dtype == torch.bfloat16
    with plain.autocast(cpu):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32
