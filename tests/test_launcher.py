"""The launcher end to end: artifacts, listing, name and key errors, checkpoint round trip, distinct run folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, TINY, run_launcher
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from experiments.launcher.recipes import DEFAULT_EXPERIMENT, experiment_names


def test_default_experiment_end_to_end(runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_launcher(["--runs_dir", str(runs_dir), *TINY, "--trainer.log_every_n_steps", "1"], capsys)
    assert code == 0
    run = runs_dir / DEFAULT_EXPERIMENT / "version_0"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"]["class_path"] == "lightning_models.SmallCNN"
    assert cfg["data"]["class_path"] == "datamodules.DigitsDataModule"
    assert cfg["trainer"]["max_epochs"] == 2
    # Linked values are not stated twice: the saved config leaves them to the link, the checkpoint records them.
    assert "num_classes" not in cfg["model"]["init_args"]
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and any(p.startswith("best-epoch") for p in ckpts)
    # Summary: test metrics, best checkpoint, run folder, TensorBoard command.
    assert "test/acc=" in out and "best ckpt" in out and str(run) in out
    assert f"--logdir {run}" in out and "--host 127.0.0.1" in out
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "val/loss", "val/acc", "val/f1", "test/acc", "test/loss", "hp_metric"} <= tags
    assert any(t.startswith("lr-") for t in tags)
    # Train metrics: one value per epoch (over the batches of the logging steps), the loss every logging step.
    assert [e.step for e in events.Scalars("train/loss")] == [0, 1, 2, 3, 4, 5]
    assert len(events.Scalars("train/acc")) == 2 and all(0.0 <= e.value <= 1.0 for e in events.Scalars("train/acc"))
    acc = events.Scalars("test/acc")[-1].value
    assert 0.0 <= acc <= 1.0
    # hp_metric is the best monitored value (val/acc), not a placeholder.
    best_val = max(e.value for e in events.Scalars("val/acc"))
    assert events.Scalars("hp_metric")[-1].value == pytest.approx(best_val, abs=1e-6)


def test_two_runs_land_in_different_folders(runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "digits_mlp",
        "--runs_dir",
        str(runs_dir),
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--test_after_fit",
        "false",
    ]
    assert run_launcher(args, capsys)[0] == 0
    assert run_launcher(args, capsys)[0] == 0
    versions = sorted(p.name for p in (runs_dir / "digits_mlp").iterdir())
    assert versions == ["version_0", "version_1"]
    for v in versions:
        assert (runs_dir / "digits_mlp" / v / "config.yaml").is_file()


def test_list_shows_every_named_experiment() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "experiments.run", "--list"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    names = experiment_names()
    assert DEFAULT_EXPERIMENT in names
    for name, desc in names.items():
        assert desc, f"{name}.yaml needs a one-line '# description' first line"
        assert any(line.startswith(name) and desc in line for line in out.splitlines())
    assert not any(line.startswith("_") for line in out.splitlines())


def test_unknown_experiment_lists_valid_names(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_launcher(["no_such_experiment"], capsys)
    assert code == 2
    assert "unknown experiment 'no_such_experiment'" in err
    assert DEFAULT_EXPERIMENT in err
    assert "Traceback" not in err


def test_unknown_override_key_fails_clearly(runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_launcher(["--runs_dir", str(runs_dir), "--model.no_such_arg", "3"], capsys)
    assert code == 2
    assert "no_such_arg" in err
    assert "Traceback" not in err
    assert not any(runs_dir.iterdir()), "a failed parse must not create a run folder"


def test_user_config_file_runs_under_its_own_name(
    tmp_path: Path, runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "my_exp.yaml"
    cfg.write_text(
        "model:\n  class_path: lightning_models.MLPClassifier\n  init_args:\n    hidden: [16]\n"
        "data:\n  class_path: datamodules.DigitsDataModule\n"
    )
    code, out, _ = run_launcher(["--config", str(cfg), "--runs_dir", str(runs_dir), *TINY], capsys)
    assert code == 0
    assert (runs_dir / "my_exp" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    saved = yaml.safe_load((runs_dir / "my_exp" / "version_0" / "config.yaml").read_text())
    assert saved["model"]["init_args"]["hidden"] == [16]


def test_checkpoint_loads_back_with_identical_predictions(runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from datamodules import DigitsDataModule
    from lightning_models import SmallCNN

    assert run_launcher(["--runs_dir", str(runs_dir), *TINY], capsys)[0] == 0
    ckpt = runs_dir / DEFAULT_EXPERIMENT / "version_0" / "checkpoints" / "last.ckpt"
    dm = DigitsDataModule()
    dm.setup()
    x = dm.eval_transform(dm.splits["test"].x[:32])
    model = SmallCNN.load_from_checkpoint(ckpt).eval()
    again = SmallCNN.load_from_checkpoint(ckpt).eval()
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    fresh = SmallCNN(num_classes=10, input_shape=(1, 8, 8), channels=[32, 64]).eval()
    fresh.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
        assert torch.equal(model(x), fresh(x))
    assert model.hparams.num_classes == 10 and tuple(model.hparams.input_shape) == (1, 8, 8)
    assert model.example_input_array.shape == (2, 1, 8, 8)


def test_last_checkpoint_follows_every_epoch(runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # "Best" by the highest val/loss is the first epoch, so Lightning alone would stop refreshing last.ckpt there.
    args = [
        "digits_mlp",
        "--runs_dir",
        str(runs_dir),
        "--trainer.max_epochs",
        "3",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--checkpoint.monitor",
        "val/loss",
        "--checkpoint.mode",
        "max",
        "--test_after_fit",
        "false",
        "--onnx.enabled",
        "false",
    ]
    assert run_launcher(args, capsys)[0] == 0
    ckpts = runs_dir / "digits_mlp" / "version_0" / "checkpoints"
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["epoch"] == 2
    assert [p.name for p in ckpts.glob("best-*")] == ["best-epoch000.ckpt"]


@pytest.mark.parametrize(
    ("switch", "absent"),
    [
        ("--trainer.enable_progress_bar", "progress"),
        ("--trainer.enable_checkpointing", "checkpoints"),
        ("--trainer.logger", "events"),
    ],
)
def test_switching_off_a_builtin_feature_drops_its_callback(
    switch: str, absent: str, runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "digits_mlp",
        "--runs_dir",
        str(runs_dir),
        switch,
        "false",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.limit_test_batches",
        "1",
        "--onnx.enabled",
        "false",
    ]
    code, out, err = run_launcher(args, capsys)
    assert code == 0, err
    assert "test/acc=" in out
    runs = list((runs_dir / "digits_mlp").glob("version_*")) if (runs_dir / "digits_mlp").exists() else []
    if absent == "progress":
        assert "Epoch 0:" not in out + err
    elif absent == "checkpoints":
        assert not any((r / "checkpoints").exists() for r in runs)
    else:
        assert not any(any(r.glob("events.out.tfevents*")) for r in runs)
        # Without a logger the checkpoints still land in the run's own folder, never in the working directory.
        assert [r.name for r in runs] == ["version_0"]
        assert (runs[0] / "checkpoints" / "last.ckpt").is_file() and (runs[0] / "config.yaml").is_file()


def test_denormals_are_flushed_by_default_and_can_be_kept(runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # True where the CPU can flush denormals (x86 with SSE3; not every ARM build). Resets the flag other
    # launcher runs in this process left on.
    supported = torch.set_flush_denormal(False)

    def denormal_survives() -> bool:
        return (torch.tensor([1e-39]) * 1.0).item() > 0

    base = ["digits_mlp", "--runs_dir", str(runs_dir), *TINY, "--onnx.enabled", "false", "--test_after_fit", "false"]
    try:
        assert run_launcher([*base, "--flush_denormal", "false"], capsys)[0] == 0
        assert denormal_survives()
        assert run_launcher(base, capsys)[0] == 0
        assert denormal_survives() is not supported
    finally:
        torch.set_flush_denormal(False)


def test_help_leads_with_the_common_options_and_is_fast_once_cached(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    first = subprocess.run(
        [sys.executable, "-m", "experiments.run", "--help"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert first.returncode == 0, first.stderr
    from experiments.launcher.help import SUMMARY

    assert first.stdout.startswith(SUMMARY)
    assert "--trainer.max_epochs MAX_EPOCHS" in first.stdout and "--model.help [CLASS_PATH_OR_NAME]" in first.stdout
    # The second time the full list comes from the cache: no PyTorch or Lightning import at all.
    probe = (
        "import sys; from experiments.run import main; main(['--help']); "
        "print(sorted({'torch', 'lightning'} & set(sys.modules)))"
    )
    second = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert second.stdout.endswith("[]\n") and second.stdout[: -len("[]\n")] == first.stdout
