"""Mistakes in names, settings, config files, data and checkpoint files: one ``error:`` line, exit code 2.

Every case runs the launcher in-process and checks the exit code, that the single message names the setting or
file and what is valid, that no traceback is printed and that no run folder was created for a config mistake.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_launcher

from fileio.checkpoints import TRUST_ENV, load_checkpoint, load_state_dict_file
from fileio.errors import DataError
from lightning_models import MLPClassifier, SmallCNN
from lightning_models.checkpoints import check_compatible


def _one_error(code: int, err: str) -> str:
    """The single error line, after checking the exit code and that nothing else went to stderr."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


BAD_ARGS = [
    (["no_such_experiment"], ["unknown experiment 'no_such_experiment'", "digits_mlp", "--list"]),
    (["digits_mlp", "--model.lrr", "0.1"], ["unknown setting --model.lrr; did you mean --model.lr?"]),
    (["digits_mlp", "--trainer.max_epochz", "3"], ["did you mean --trainer.max_epochs?"]),
    (["digits_mlp", "--data.batch_sizee", "8"], ["did you mean --data.batch_size?"]),
    (["digits_mlp", "--model.zzz", "1"], ["unknown setting --model.zzz; valid settings under --model:", "lr,"]),
    (["digits_mlp", "--trainer.max_epochs", "abc"], ["--trainer.max_epochs expects an int (or null), got 'abc'"]),
    (["digits_mlp", "--data.batch_size", "x"], ["--data.batch_size expects an int, got 'x'"]),
    (["digits_mlp", "--model.lr", "-1"], ["model.lr must be positive, got -1.0"]),
    (["digits_mlp", "--data.sanity_batch_size", "0"], ["data.sanity_batch_size must be >= 1 or null, got 0"]),
    (
        ["digits_mlp", "--model.optimizer", "adamx"],
        ["--model.optimizer must be one of adam, adamw, sgd; got 'adamx' (did you mean 'adam'?)"],
    ),
    (
        ["digits_mlp", "--model.scheduler", "cosin"],
        ["one of none, cosine, linear, onecycle, step", "did you mean 'cosine'"],
    ),
    (["digits_mlp", "--model", "MLPClassifer"], ["did you mean lightning_models.MLPClassifier?"]),
    (["digits_mlp", "--trainer.max_epochs", "-5"], ["`max_epochs` must be a non-negative integer or -1"]),
    (["digits_mlp", "--trainer.callbacks+=nope.Callback"], ["cannot import 'nope.Callback'", "No module named"]),
]


@pytest.mark.parametrize(("argv", "expected"), BAD_ARGS, ids=[" ".join(argv) for argv, _ in BAD_ARGS])
def test_bad_names_keys_and_values_are_one_line(
    argv: list[str], expected: list[str], runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_launcher([*argv, "--runs_dir", str(runs_dir)], capsys)
    line = _one_error(code, err)
    for text in expected:
        assert text in line
    assert not list(runs_dir.rglob("version_*")), "a config mistake must not create a run folder"


MLP = "model:\n  class_path: lightning_models.MLPClassifier\n"
DIGITS = "data:\n  class_path: datamodules.DigitsDataModule\n"


@pytest.mark.parametrize(
    ("yaml", "expected"),
    [
        (None, "config file not found: '"),
        (MLP + "  init_args:\n    lrr: 0.1\n" + DIGITS, "unknown setting --model.lrr; did you mean --model.lr?"),
        (MLP + DIGITS + "trainer:\n  max_epochz: 3\n", "did you mean --trainer.max_epochs?"),
        ("model: [unclosed\n", "is not valid YAML, line 2 column 1"),
        (MLP.replace("Classifier", "Classifer") + DIGITS, "did you mean lightning_models.MLPClassifier?"),
        (DIGITS, "no model set: give --model CLASS"),
    ],
    ids=["missing file", "unknown model key", "unknown trainer key", "bad yaml", "misspelled class", "no model"],
)
def test_config_file_mistakes_are_one_line(
    yaml: str | None, expected: str, tmp_path: Path, runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "mine.yaml"
    if yaml is not None:
        cfg.write_text(yaml)
    code, _, err = run_launcher(["--config", str(cfg), "--runs_dir", str(runs_dir)], capsys)
    line = _one_error(code, err)
    assert expected in line
    if yaml is None or "YAML" in expected:
        assert str(cfg) in line
    assert not list(runs_dir.rglob("version_*"))


def test_print_config_shows_resolved_config_without_running(runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    code, out, err = run_launcher(
        ["digits_mlp", "--model.lr", "0.25", "--print_config", "--runs_dir", str(runs_dir)], capsys
    )
    assert code == 0, err
    cfg = yaml.safe_load(out)
    assert cfg["model"]["class_path"] == "lightning_models.MLPClassifier"
    assert cfg["model"]["init_args"]["lr"] == 0.25  # the override
    assert cfg["trainer"]["max_epochs"] == 30  # from digits_mlp.yaml
    assert cfg["trainer"]["log_every_n_steps"] == 10  # from _defaults.yaml
    assert not any(runs_dir.iterdir())


# -- data --------------------------------------------------------------------------------------------------------
CSV_EXPERIMENT = (
    "model:\n  class_path: lightning_models.MLPClassifier\n  init_args:\n    hidden: [8]\n"
    "data:\n  class_path: datamodules.CSVDataModule\n  init_args:\n    path: {path}\n    target: y\n"
)


def test_missing_csv_is_one_line(tmp_path: Path, runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "csv.yaml"
    cfg.write_text(CSV_EXPERIMENT.format(path=tmp_path / "nope.csv"))
    line = _one_error(*run_launcher(["--config", str(cfg), "--runs_dir", str(runs_dir)], capsys)[::2])
    assert f"CSV file not found: {tmp_path / 'nope.csv'} (data.path)" in line


def test_bad_csv_cell_names_file_column_and_row(
    tmp_path: Path, runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "table.csv"
    rows = [f"{i},{i * 2},{i % 2}" for i in range(40)]
    rows[17] = "17,oops,1"
    data.write_text("a,b,y\n" + "\n".join(rows) + "\n")
    cfg = tmp_path / "csv.yaml"
    # A column declared numeric must hold numbers (undeclared, a text cell would make it a categorical column).
    cfg.write_text(CSV_EXPERIMENT.format(path=data) + "    numeric: [b]\n")
    line = _one_error(*run_launcher(["--config", str(cfg), "--runs_dir", str(runs_dir)], capsys)[::2])
    assert f"{data}: column 'b', row 19: 'oops' is not a number" in line


def test_missing_mnist_without_download_is_one_line(
    tmp_path: Path, runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["mnist_mlp", "--data.data_dir", str(tmp_path / "nodata"), "--data.download", "false"]
    line = _one_error(*run_launcher([*args, "--runs_dir", str(runs_dir)], capsys)[::2])
    assert f"MNIST files missing in {tmp_path / 'nodata' / 'MNIST' / 'raw'} (data.download is false)" in line
    assert "train-images-idx3-ubyte" in line


# -- checkpoint and weights files ----------------------------------------------------------------------------------
@pytest.fixture
def good_ckpt(tmp_path: Path) -> Path:
    """A Lightning-style checkpoint of a small MLP for 8x8 digits."""
    model = MLPClassifier(num_classes=10, input_shape=(1, 8, 8), hidden=[16])
    path = tmp_path / "good.ckpt"
    torch.save({"state_dict": model.state_dict(), "epoch": 3, "global_step": 60}, path)
    return path


def test_unreadable_checkpoint_files_name_the_file(tmp_path: Path, good_ckpt: Path) -> None:
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good_ckpt.read_bytes()[: good_ckpt.stat().st_size // 2])
    text = tmp_path / "notes.ckpt"
    text.write_text("hello, not a checkpoint\n")
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    cases = {
        tmp_path / "missing.ckpt": "checkpoint file not found",
        truncated: "it is truncated",
        text: "it is not a PyTorch checkpoint (it starts with 'hello, not a checkpoint')",
        empty: "is empty (0 bytes)",
        tmp_path: "is a folder, not a checkpoint file",
    }
    for path, expected in cases.items():
        with pytest.raises(DataError) as info:
            load_state_dict_file(path)
        assert expected in str(info.value) and str(path) in str(info.value)
    state = load_state_dict_file(good_ckpt)
    assert set(state) == set(MLPClassifier(num_classes=10, input_shape=(1, 8, 8), hidden=[16]).state_dict())
    plain = tmp_path / "plain.pt"
    torch.save(MLPClassifier(num_classes=10, input_shape=(1, 8, 8), hidden=[16]).state_dict(), plain)
    assert set(load_state_dict_file(plain)) == set(state)


def test_file_needing_code_is_refused_unless_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=0.1)}, path)
    monkeypatch.delenv(TRUST_ENV, raising=False)
    with pytest.raises(DataError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert f"refusing to load '{path}': it contains a pickled argparse.Namespace" in message
    assert "could run any code" in message and "--trust_checkpoint true" in message
    assert load_checkpoint(path, trust=True)["args"].lr == 0.1
    monkeypatch.setenv(TRUST_ENV, "1")  # what --trust_checkpoint true sets for every load in the run
    assert torch.equal(load_state_dict_file(path)["w"], torch.ones(2))


class _Payload:
    """What a malicious checkpoint carries: unpickling it calls os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_that_would_run_a_command_is_refused_as_such(tmp_path: Path, runs_dir: Path) -> None:
    marker, path = tmp_path / "pwned", tmp_path / "model.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload(marker)}, path)
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.run", "digits_cnn", "--ckpt_path", str(path), "--runs_dir", str(runs_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        f"error: refusing to load '{path}': it contains a pickled posix.system, and unpickling it could run any code "
        "the file's author put in it. If you trust where the file came from, rerun with --trust_checkpoint true"
    )
    assert not marker.exists()


def test_checkpoint_of_another_architecture_names_keys_and_shapes(good_ckpt: Path) -> None:
    state = load_state_dict_file(good_ckpt)
    check_compatible(MLPClassifier(num_classes=10, input_shape=(1, 8, 8), hidden=[16]), state, source=good_ckpt)
    with pytest.raises(DataError) as info:
        check_compatible(MLPClassifier(num_classes=5, input_shape=(1, 8, 8), hidden=[16]), state, source=good_ckpt)
    assert f"'{good_ckpt}' does not fit MLPClassifier" in str(info.value)
    assert "shape mismatch: net.1.2.weight file [10, 16] vs model [5, 16]" in str(info.value)
    with pytest.raises(DataError) as info:
        check_compatible(SmallCNN(num_classes=10, input_shape=(1, 8, 8)), state, source=good_ckpt, limit=2)
    message = str(info.value)
    assert "missing in file: " in message and "not in model: net.1.0.weight, net.1.0.bias and 2 more" in message


@pytest.mark.parametrize("case", ["text", "text with a comment", "other architecture", "needs code"])
def test_bad_ckpt_path_is_one_line_through_the_launcher(
    case: str, tmp_path: Path, good_ckpt: Path, runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "given.ckpt"
    if case == "text":
        path.write_text("hello\n")
    elif case == "text with a comment":
        path.write_text("# my notes\nlr = 0.1\n")  # a file of text is no pickle, whatever its first character
    elif case == "other architecture":
        path = good_ckpt  # an MLP checkpoint for a CNN experiment
    else:
        torch.save({"state_dict": {}, "args": argparse.Namespace(lr=0.1)}, path)
    args = ["digits_cnn", "--ckpt_path", str(path), "--runs_dir", str(runs_dir), "--progress_bar.refresh_rate", "0"]
    line = _one_error(*run_launcher(args, capsys)[::2])
    expected = {
        "text": f"cannot read checkpoint '{path}': it is not a PyTorch checkpoint",
        "text with a comment": f"cannot read checkpoint '{path}': it is not a PyTorch checkpoint (it starts with '# my",
        "other architecture": f"'{path}' does not fit SmallCNN",
        "needs code": "--trust_checkpoint true",
    }[case]
    assert expected in line
    assert ("--trust_checkpoint" in line) == (case == "needs code")


def test_ctrl_c_before_training_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import experiments.launcher.launch as launcher
    from experiments.run import main

    def interrupted(args: list[str]) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(launcher, "run", interrupted)  # Ctrl+C while the config is read and classes are built
    assert main(["digits_mlp"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "interrupted: SIGINT before training started: nothing to resume" and "Traceback" not in err
