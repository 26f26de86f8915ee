"""The learning-rate finder: its suggestion is the rate a run trains at, everywhere the rate is recorded."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_launcher
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from experiments.launcher.lr_range import _unbiased, suggest
from experiments.lr_find import main

# Two short epochs (20 training batches each); the range test takes its 100 steps over as many epochs as it needs.
SHORT = ["--trainer.max_epochs", "2", "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "2"]


def test_auto_lr_trains_at_the_suggested_rate(runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_launcher(["digits_cnn", "--runs_dir", str(runs_dir), "--auto_lr", "true", *SHORT], capsys)
    assert code == 0, err
    lr = float(out.split("auto_lr: training at lr ")[1].split(",")[0])
    assert 1e-8 < lr < 1
    run = runs_dir / "digits_cnn" / "version_0"
    # config.yaml: the rate, and no second search when it is run again.
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["init_args"]["lr"] == lr and config["auto_lr"] is False
    assert f"\nlr: {lr}\n" in (run / "hparams.yaml").read_text()  # what TensorBoard's logger recorded
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["lr"] == lr
    # The optimizer started at the rate, and the warmup-cosine schedule is built on it.
    assert [g["initial_lr"] for g in ckpt["optimizer_states"][0]["param_groups"]] == [lr]
    assert ckpt["lr_schedulers"][0]["base_lrs"] == [lr]
    assert (run / "lr_find.png").stat().st_size > 10_000
    result = json.loads((run / "lr_find.json").read_text())
    assert result["suggestion"] == lr and len(result["lr"]) == len(result["loss"]) == 100
    events = EventAccumulator(str(run), size_guidance={"images": 0})
    events.Reload()
    assert "lr_find/loss_vs_lr" in events.Tags()["images"]
    assert f"lr         {lr:g}, from the learning-rate range test" in out
    # Training at the found rate is exactly a run told that rate: the search leaves no trace in the training.
    code, _, err = run_launcher(["digits_cnn", "--runs_dir", str(runs_dir), "--model.lr", repr(lr), *SHORT], capsys)
    assert code == 0, err
    twin = torch.load(runs_dir / "digits_cnn" / "version_1" / "checkpoints" / "last.ckpt", weights_only=True)
    for key, value in ckpt["state_dict"].items():
        torch.testing.assert_close(twin["state_dict"][key], value, rtol=0, atol=0, msg=key)


def test_lr_find_prints_the_rate_and_the_command(runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["digits_mlp", "--runs_dir", str(runs_dir), "--num_training", "30", "--model.lr", "0.5", *SHORT]
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 0, err
    # Standard error is no terminal here (a log): plain progress lines, no carriage-return bars.
    assert "\r" not in out + err and "Finding best initial lr" not in err
    assert [line for line in err.splitlines() if line.startswith("lr_find:")] == [
        f"lr_find: step {n} of 30" for n in (8, 15, 23, 30)
    ]
    run = runs_dir / "digits_mlp" / "lr_find" / "version_0"
    lr = float(out.split("suggested lr")[1].split()[0])
    assert (run / "lr_find.png").is_file() and (run / "config.yaml").is_file()
    assert json.loads((run / "lr_find.json").read_text())["suggestion"] == lr
    command = shlex.split(out.split("train with    ")[1].splitlines()[0])
    # The user's settings are kept, their rate replaced by the suggestion; the finder's own options are gone.
    assert command[1:4] == ["-m", "experiments.run", "digits_mlp"]
    assert command[-2:] == ["--model.lr", repr(lr)] and "0.5" not in command and "--num_training" not in command
    assert ["--runs_dir", str(runs_dir)] == command[4:6]
    assert not list(Path.cwd().glob(".lr_find_*.ckpt")), "the finder's temporary checkpoint stays out of the cwd"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--min_lr", "1", "--max_lr", "0.1"], "need 0 < min_lr < max_lr"),
        (["--num_training", "5"], "--num_training 5: the test needs at least 13 steps"),
        (["--resume", "runs/x/version_0"], "--resume is a training option"),
        (["--model.lrr", "0.1"], "unknown setting --model.lrr; did you mean --model.lr?"),
    ],
)
def test_lr_find_bad_input_is_one_line(
    args: list[str], message: str, runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["digits_mlp", "--runs_dir", str(runs_dir), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not any(runs_dir.iterdir())


def test_suggestion_is_the_steepest_fall_per_decade() -> None:
    lrs = [10 ** (-8 + 8 * i / 99) for i in range(100)]
    # Flat, a fall centred at 1e-3 (steepest there on a log scale), then divergence past 1e-1.
    losses = [2.3 - 1.5 / (1 + math.exp(-4 * (math.log10(lr) + 3))) + (5 * lr if lr > 0.1 else 0) for lr in lrs]
    assert suggest(lrs, losses, "exponential") == pytest.approx(1e-3, rel=0.25)
    # Lightning's running average divided by 1 - beta**(i+2); the fix makes a constant loss read as constant.
    beta, avg, smoothed = 0.98, 0.0, []
    for i in range(50):
        avg = beta * avg + (1 - beta) * 2.0
        smoothed.append(avg / (1 - beta ** (i + 2)))
    assert _unbiased(smoothed, beta) == pytest.approx([2.0] * 50)
