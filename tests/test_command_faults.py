"""Faults of the commands that use a run: ``predict`` and ``merge_lora`` never write over an input, a checkpoint or a
file of a run folder (an existing output only with ``--force``), write atomically, and say in one line why they
cannot write; ``generate`` turns bad settings, prompts and devices into one ``error:`` line and stops quietly when
its reader goes away; ``predict`` on a language model points at ``generate``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT
from PIL import Image
from pretrained_fixtures import QUIET, TINY_SHAPE, TINY_TEXT

from experiments import generate, merge_lora, predict

FAST = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--onnx.enabled", "false", *QUIET]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits_mlp run of two steps: config, status, hparams, events and checkpoints, as every run has them."""
    runs = tmp_path_factory.mktemp("digits") / "runs"
    from experiments.run import main

    assert main(["digits_mlp", "--runs_dir", str(runs), *FAST]) == 0
    return runs / "digits_mlp" / "version_0"


@pytest.fixture(scope="module")
def lora_run(code_corpus: Path, tiny_gpt_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two LoRA steps on the tiny pre-trained GPT (full checkpoints: the base is named in the hyperparameters)."""
    root = tmp_path_factory.mktemp("lora")
    from experiments.run import main

    args = ["email_gpt_finetune", "--runs_dir", str(root / "runs"), "--data.path", str(code_corpus),
            "--data.cache_dir", str(root / "tokens"), "--data.tokenizer_path", str(tiny_gpt_ckpt),
            "--model.pretrained", str(tiny_gpt_ckpt), "--model.finetune", "lora", "--model.lora_checkpoint", "full",
            *TINY_SHAPE, *TINY_TEXT, "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
            "--onnx.enabled", "false", *QUIET]  # fmt: skip
    assert main(args) == 0
    return root / "runs" / "email_gpt_finetune" / "version_0"


@pytest.fixture
def digit_png(tmp_path: Path) -> Path:
    path = tmp_path / "digit.png"
    Image.fromarray(np.full((8, 8), 128, dtype=np.uint8)).save(path)
    return path


def one_error(code: int, err: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def contents(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes (what a command must leave as it was)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def best_of(run: Path) -> Path:
    return next((run / "checkpoints").glob("best*.ckpt"))


def events_of(run: Path) -> Path:
    return next(run.glob("events.out.tfevents.*"))


def in_read_only(folder: Path, cmd: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` with ``folder`` read-only: by permissions for a normal user, by a read-only bind mount (in a
    private user and mount namespace) for root, whom permissions do not stop."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        finally:
            folder.chmod(0o755)
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("running as root without user namespaces: cannot make a read-only folder")
    script = 'mount --bind -o ro "$0" "$0" && exec "$@"'
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, str(folder), *cmd], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


# -- predict: where the predictions go ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("its own input", "is an input of this command: writing it would destroy it (never done, even with --force)"),
        ("the input through a symbolic link", "is an input of this command (INPUT)"),
        ("the input through a hard link", "is an input of this command (INPUT)"),
        ("the input as ./x/../x", "is an input of this command"),
        ("the run's config.yaml", "is config.yaml of the run folder RUN, which the run needs"),
        ("the run's status.json", "is status.json of the run folder RUN"),
        ("the run's best checkpoint", "is checkpoints/best-"),
        ("the run's event file", "is events.out.tfevents."),
        ("a checkpoint outside a run", "is a checkpoint: writing it would destroy it (never done, even with --force)"),
    ],
)
def test_predict_never_writes_its_input_a_checkpoint_or_a_run_file(
    digits_run: Path,
    digit_png: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    case: str,
    expected: str,
) -> None:
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    target = {
        "its own input": digit_png,
        "the input as ./x/../x": Path(".") / digit_png.parent.name / ".." / digit_png.parent.name / digit_png.name,
        "the run's config.yaml": run / "config.yaml",
        "the run's status.json": run / "status.json",
        "the run's best checkpoint": best_of(run),
        "the run's event file": events_of(run),
    }.get(case, tmp_path / "out.csv")
    if case == "the input as ./x/../x":
        monkeypatch.chdir(tmp_path.parent)
    elif case == "the input through a symbolic link":
        target.symlink_to(digit_png)
    elif case == "the input through a hard link":
        os.link(digit_png, target)
    elif case == "a checkpoint outside a run":
        target = tmp_path / "weights.pt"
        torch.save({"w": torch.ones(2)}, target)
    before, image = contents(run), digit_png.read_bytes()
    saved = target.read_bytes()
    code = predict.main([str(run), str(digit_png), "--output", str(target), "--force"])
    line = one_error(code, capsys.readouterr().err)
    assert expected.replace("INPUT", str(digit_png)).replace("RUN", str(run)) in line
    assert contents(run) == before and digit_png.read_bytes() == image and target.read_bytes() == saved


def test_predict_replaces_an_existing_output_only_with_force(
    digits_run: Path, digit_png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "earlier.csv"
    output.write_text("kept\n")
    code = predict.main([str(digits_run), str(digit_png), "--output", str(output)])
    line = one_error(code, capsys.readouterr().err)
    assert line == f"error: --output {output} exists: pass --force to replace it, or another file name"
    assert output.read_text() == "kept\n"
    assert predict.main([str(digits_run), str(digit_png), "--output", str(output), "--force"]) == 0
    assert pd.read_csv(output)["file"].tolist() == [str(digit_png)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digit.png", "earlier.csv"]  # no temporary file left


def test_predict_into_a_folder_or_under_a_file_is_one_line(
    digits_run: Path, digit_png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = predict.main([str(digits_run), str(digit_png), "--output", str(tmp_path)])
    line = one_error(code, capsys.readouterr().err)
    assert line == f"error: --output {tmp_path} is a folder: pass a file name, such as {tmp_path / 'predictions.csv'}"
    under = digit_png / "predictions.csv"
    code = predict.main([str(digits_run), str(digit_png), "--output", str(under)])
    line = one_error(code, capsys.readouterr().err)
    assert line == f"error: --output {under}: {digit_png} is a file, not a folder; pass a path in a folder"


def test_a_failed_write_leaves_no_file_and_no_partial_one(
    digits_run: Path, digit_png: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    def disk_full(frame: pd.DataFrame, path: Path, **kwargs: object) -> None:
        Path(path).write_text("file,label\n")  # half written
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", disk_full)
    code = predict.main([str(digits_run), str(digit_png), "--output", str(tmp_path / "out.csv")])
    line = one_error(code, capsys.readouterr().err)
    assert line == f"error: cannot write {tmp_path / 'out.csv'}: No space left on device; nothing was written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digit.png"]


def test_predict_on_a_language_model_points_at_generate(
    tiny_gpt_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_view import write_tiny_onnx

    run = tiny_gpt_ckpt.parent.parent
    (tmp_path / "notes.txt").write_text("def main():\n")
    code = predict.main([str(run), str(tmp_path / "notes.txt"), "--output", str(tmp_path / "out.csv")])
    line = one_error(code, capsys.readouterr().err)
    assert "holds a GPT, a language model: it generates text rather than predicting on inputs" in line
    assert line.endswith(f"use python -m experiments.generate {run} --prompt TEXT")
    # Its exported graph carries no input description either: the run's checkpoint says what the model is.
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    write_tiny_onnx(copy / "model.onnx")
    code = predict.main([str(copy / "model.onnx"), str(tmp_path / "notes.txt"), "--output", str(tmp_path / "o.csv")])
    assert "a language model: it generates text" in one_error(code, capsys.readouterr().err)
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "o.csv").exists()


# -- merge_lora ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("the best checkpoint it reads", "is an input of this command: writing it would destroy it"),
        ("the run's last checkpoint", "is checkpoints/last.ckpt of the run folder RUN, which the run needs"),
        ("the run's config.yaml", "is config.yaml of the run folder RUN"),
        ("its base weights", "is an input of this command: writing it would destroy it"),
    ],
)
def test_merge_lora_never_writes_a_checkpoint_its_base_or_a_run_file(
    lora_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, expected: str
) -> None:
    from safetensors.torch import save_file

    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    # Weights that no other rule protects (not a checkpoint, outside any run): only their being the base does.
    base = tmp_path / "base.safetensors"
    save_file({"w": torch.ones(2)}, str(base))
    ckpt = torch.load(best_of(run), map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["pretrained"] = str(base)
    torch.save(ckpt, best_of(run))
    target = {
        "the best checkpoint it reads": best_of(run),
        "the run's last checkpoint": run / "checkpoints" / "last.ckpt",
        "the run's config.yaml": run / "config.yaml",
        "its base weights": base,
    }[case]
    before, weights = contents(run), base.read_bytes()
    code = merge_lora.main([str(best_of(run)), "--out", str(target), "--force"])
    line = one_error(code, capsys.readouterr().err)
    assert expected.replace("RUN", str(run)) in line
    assert contents(run) == before and base.read_bytes() == weights


def test_merge_lora_replaces_an_existing_output_only_with_force_and_never_a_folder(
    lora_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "merged.safetensors"
    out.write_bytes(b"earlier")
    line = one_error(merge_lora.main([str(lora_run), "--out", str(out)]), capsys.readouterr().err)
    assert line == f"error: --out {out} exists: pass --force to replace it, or another file name"
    assert out.read_bytes() == b"earlier"
    assert merge_lora.main([str(lora_run), "--out", str(out), "--force"]) == 0
    capsys.readouterr()
    from fileio.checkpoints import load_safetensors

    assert "lm_head.weight" in load_safetensors(out)
    line = one_error(merge_lora.main([str(lora_run), "--out", str(tmp_path)]), capsys.readouterr().err)
    assert line == f"error: --out {tmp_path} is a folder: pass a file name, such as {tmp_path / 'merged.safetensors'}"
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left


#: Runs the commands given as JSON lists in one interpreter; prints each one's exit code and standard error as JSON.
_COMMANDS = """
import contextlib, importlib, io, json, sys
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = importlib.import_module(argv[0]).main(argv[1:])
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""


def test_predict_and_merge_lora_into_a_read_only_folder_are_one_line(
    digits_run: Path, lora_run: Path, digit_png: Path, tmp_path: Path
) -> None:
    import json

    locked = tmp_path / "locked"
    locked.mkdir()
    commands = [
        ["experiments.predict", str(digits_run), str(digit_png), "--output", str(locked / "p.csv")],
        ["experiments.merge_lora", str(lora_run), "--out", str(locked / "m.safetensors")],
    ]
    proc = in_read_only(locked, [sys.executable, "-c", _COMMANDS, json.dumps(commands)])
    assert proc.returncode == 0, proc.stderr
    (predict_code, predict_err), (merge_code, merge_err) = json.loads(proc.stdout.splitlines()[-1])
    line = one_error(predict_code, predict_err)
    assert line.startswith(f"error: --output {locked / 'p.csv'}: cannot write in {locked} (")
    assert line.endswith("); pass a path in a folder you can write")
    line = one_error(merge_code, merge_err)
    assert line.startswith(f"error: --out {locked / 'm.safetensors'}: cannot write in {locked} (")
    assert list(locked.iterdir()) == []


# -- generate ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--temperature", "nan"], "--temperature must be a number >= 0 (0: always the most likely token), got nan"),
        (["--temperature", "inf"], "--temperature must be a number >= 0 (0: always the most likely token), got inf"),
        # A prompt of bytes that are not UTF-8 reaches Python as lone surrogates (PEP 383), as here.
        (["--prompt", "def \udcff\udcfe"], "--prompt is not UTF-8 text (byte 0xff at character 4): pass the prompt"),
        (["--device", "tpu9"], "--device tpu9 is not a device: pass auto, cpu, cuda or cuda:N"),
        (["--device", "cuda"], "--device cuda: no CUDA GPU is visible here; leave --device auto to use the CPU"),
        (["--device", "cuda:1"], "--device cuda:1: no CUDA GPU is visible here"),
    ],
    ids=["temperature nan", "temperature inf", "prompt not utf-8", "device tpu9", "device cuda", "device cuda:1"],
)
def test_generate_mistakes_are_one_line(
    tiny_gpt_ckpt: Path,
    argv: list[str],
    expected: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a GPU
    code = generate.main([str(tiny_gpt_ckpt.parent.parent), "--max_new_tokens", "3", *argv])
    out, err = capsys.readouterr()
    assert expected in one_error(code, err) and out == ""


def test_generate_with_a_folder_where_the_tokenizer_file_belongs(
    tiny_gpt_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "checkpoints").mkdir()
    ckpt = torch.load(tiny_gpt_ckpt, map_location="cpu", weights_only=True)
    del ckpt["tokenizer"]
    torch.save(ckpt, tmp_path / "checkpoints" / "last.ckpt")
    (tmp_path / "tokenizer.json").mkdir()
    line = one_error(generate.main([str(tmp_path)]), capsys.readouterr().err)
    assert f"the checkpoint holds none, and {tmp_path / 'tokenizer.json'} is a folder, not a tokenizer file" in line


def test_generate_into_a_reader_that_stops_early_ends_quietly(tiny_gpt_ckpt: Path) -> None:
    """``generate ... | head -c 20``: the reader closes the pipe; no traceback, the exit code of a SIGPIPE."""
    cmd = [sys.executable, "-m", "experiments.generate", str(tiny_gpt_ckpt.parent.parent), "--prompt", "def ",
           "--max_new_tokens", "400", "--num_samples", "20"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert len(proc.stdout.read(20)) == 20
        proc.stdout.close()  # as head does once it has its bytes
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert err.startswith("# GPT from ") and err.count("\n") == 1, err
    assert code == 141
