"""The Python API: typed settings in, a typed result out, the same run the command line makes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from experiments.api import config, launch, resume
from experiments.launcher.launch import apply_overrides, resolve_config
from experiments.rundir.console import UsageError
from experiments.rundir.stops import TrainingStopped

TINY = {
    "model.hidden": [16],
    "trainer.max_epochs": 2,
    "trainer.limit_train_batches": 3,
    "trainer.limit_val_batches": 2,
    "trainer.limit_test_batches": 2,
    "progress_bar.refresh_rate": 0,
    "dashboards.enabled": False,
}


def test_launch_returns_the_run_and_its_report(runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = launch("digits_mlp", {**TINY, "model.lr": 0.01}, runs_dir=runs_dir)
    run = runs_dir / "digits_mlp" / "version_0"
    assert (
        result.run_dir == run
        and result.best_checkpoint is not None
        and result.best_checkpoint.parent == run / "checkpoints"
    )
    assert set(result.test_metrics) >= {"test/acc", "test/loss"}
    report = result.report
    assert report.epochs == 2 and report.fit_seconds is not None and report.fit_seconds > 0
    assert report.onnx is not None and report.onnx.ok and report.onnx.path == run / "model.onnx" == result.onnx
    assert report.onnx.max_abs_diff is not None and report.onnx.max_abs_diff <= report.onnx.atol
    assert report.best is not None and report.best.monitor == "val/acc" and 0 <= report.best.score <= 1
    # Typed values reach the model as they are; the saved config holds them.
    assert result.model.hparams.lr == 0.01 and list(result.model.hparams.hidden) == [16]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["init_args"]["hidden"] == [16] and saved["trainer"]["max_epochs"] == 2
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "completed" and status["test_metrics"] == pytest.approx(result.test_metrics)
    # The summary is the report's.
    assert report.summary() in capsys.readouterr().out


def test_resume_continues_the_saved_config_with_new_settings(runs_dir: Path) -> None:
    first = launch("digits_mlp", TINY, runs_dir=runs_dir)
    again = resume(first.run_dir, {"trainer.max_epochs": 3})
    assert again.run_dir == first.run_dir and again.report.epochs == 3
    assert torch.load(first.run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2
    assert sorted(p.name for p in (runs_dir / "digits_mlp").iterdir()) == ["version_0"]


def test_settings_go_where_the_command_line_puts_them() -> None:
    base = config("digits_cnn")
    assert base["name"] == "digits_cnn" and base["model"]["class_path"] == "lightning_models.SmallCNN"
    done = apply_overrides(
        base, {"model.lr": 0.5, "data.batch_size": 7, "trainer.max_epochs": 1, "onnx.enabled": False}
    )
    assert done["model"]["init_args"]["lr"] == 0.5 and done["data"]["init_args"]["batch_size"] == 7
    assert done["trainer"]["max_epochs"] == 1 and done["onnx"] == {"enabled": False}
    assert base["model"]["init_args"].get("lr") != 0.5  # a copy: the original is untouched
    other = apply_overrides(base, {"model": "lightning_models.MLPClassifier", "model.hidden": [8]})
    assert other["model"]["class_path"] == "lightning_models.MLPClassifier"
    assert other["model"]["init_args"]["hidden"] == [8] and "channels" not in other["model"]["init_args"]
    # The same config through the parser as the command line: equal, value for value.
    from experiments.launcher.launch import build_args

    # Another class keeps the arguments it also takes, as on the command line.
    switched = build_args(["digits_cnn", "--model", "lightning_models.MLPClassifier", "--model.hidden", "[8]"])
    assert resolve_config(switched)["model"] == resolve_config(other)["model"]
    for data in ("datamodules.DigitsDataModule", "datamodules.BreastCancerDataModule"):
        by_hand = resolve_config(build_args(["binary_mlp", "--data", data]))
        assert resolve_config(config("binary_mlp", {"data": data}))["data"] == by_hand["data"]
    argv = build_args(["digits_cnn", "--model.lr", "0.5", "--data.batch_size", "7", "--onnx.enabled", "false"])
    typed = apply_overrides(base, {"model.lr": 0.5, "data.batch_size": 7, "onnx.enabled": False})
    assert resolve_config(typed) == resolve_config(argv)


@pytest.mark.parametrize(
    ("experiment", "settings", "message"),
    [
        ("digits_mpl", {}, "unknown experiment 'digits_mpl'"),
        ("nowhere/mine.yaml", {}, "config file not found: 'nowhere/mine.yaml'"),
        ("digits_mlp", {"model.lrr": 0.1}, "model.lrr"),
        ("digits_mlp", {"model.lr": -1.0}, "model.lr must be positive"),
        ("digits_mlp", {"trainer.max_epochs": "many"}, "--trainer.max_epochs expects an int"),
    ],
)
def test_mistakes_are_one_usage_error(runs_dir: Path, experiment: str, settings: dict, message: str) -> None:
    with pytest.raises(UsageError) as info:
        launch(experiment, settings, runs_dir=runs_dir)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not any(runs_dir.iterdir())  # nothing is created for a mistake in the settings


def test_a_stopped_run_raises_with_its_outcome(runs_dir: Path) -> None:
    from tests.run_helpers import SigintAtStep

    with pytest.raises(TrainingStopped) as info:
        launch("digits_mlp", {**TINY, "trainer.max_epochs": 3}, runs_dir=runs_dir, callbacks=[SigintAtStep(4)])
    outcome = info.value.outcome
    # The signal comes after the fault guard's check of step 4 (callbacks given here run after the run's own), so
    # every process agrees to stop after the next step.
    assert outcome.state == "interrupted" and outcome.exit_code == 130 and "global step 5" in outcome.message
    assert json.loads((runs_dir / "digits_mlp" / "version_0" / "status.json").read_text())["state"] == "interrupted"


def test_the_docs_example_runs_as_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from conftest import ROOT

    section = (ROOT / "docs" / "run.md").read_text().split("## Run from Python", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "docs/run.md", "exec"), namespace)
    result, again, report = namespace["result"], namespace["again"], namespace["report"]
    run = Path("runs/digits_mlp/version_0")
    assert result.run_dir == again.run_dir == run and again.report.epochs == 3 and report.epochs == 2
    assert result.best_checkpoint.parent == run / "checkpoints" and result.best_checkpoint.name.startswith("best-")
    assert report.onnx.path == run / "model.onnx" and report.onnx.ok and report.fit_seconds > 0
    assert result.model.hparams.lr == 0.01 and list(result.model.hparams.hidden) == [32]
    printed = capsys.readouterr().out
    for shown in (str(run), str(result.best_checkpoint), f"{result.test_metrics['test/acc']}"):
        assert f"\n{shown}\n" in printed
