"""One loader of trained models (:mod:`experiments.inference.loading`), one finder of runs, checkpoints and
tokenizers (:mod:`experiments.rundir.finder`) and one class-path lookup: an adapters-only LoRA run predicts with its
trained base (the checkpoint backend equals the model's own forward and the merged ONNX), the loader's fields, the
finder's choices, and one-line errors."""

from __future__ import annotations

import json
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
from pretrained_fixtures import QUIET_SETTINGS

from datamodules import DigitsDataModule
from experiments import merge_lora, predict
from experiments.api import launch
from experiments.inference.loading import TrainedModel, find_checkpoint, load_trained
from experiments.rundir import finder
from experiments.rundir.console import UsageError
from fileio.checkpoints import load_checkpoint
from lightning_models import ViT
from lightning_models.checkpoints import import_class, model_from_checkpoint
from lightning_models.finetune import load_pretrained

#: A one-block ViT, 16 wide, on the 8x8 digits: a few batches train it in a second.
TINY_VIT = {"model.n_layer": 1, "model.n_head": 2, "model.n_embd": 16}
FAST = {
    "trainer.max_epochs": 1,
    "trainer.limit_train_batches": 3,
    "trainer.limit_val_batches": 1,
    "test_after_fit": False,
    "attention.enabled": False,
    **QUIET_SETTINGS,
}


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(run, base)``: digits_vit trained a few batches (its best checkpoint copied to ``base.ckpt``), then
    fine-tuned from it with LoRA for a few batches: checkpoints hold the adapters and the head only."""
    root = tmp_path_factory.mktemp("lora_vit")
    runs = root / "runs"
    pretraining = launch("digits_vit", {**TINY_VIT, **FAST, "onnx.enabled": False}, runs_dir=runs)
    base = root / "base.ckpt"
    shutil.copy(finder.run_checkpoint(pretraining.run_dir), base)
    lora = {"model.finetune": "lora", "model.lora_targets": ["attn.qkv", "mlp"], "model.pretrained": str(base)}
    result = launch("digits_vit", {**TINY_VIT, **FAST, **lora}, runs_dir=runs, name="lora")
    assert result.run_dir == runs / "lora" / "version_0"
    return result.run_dir, base


@pytest.fixture
def digit_pngs(tmp_path: Path) -> Path:
    """20 held-out digits as 8-bit grayscale PNG files."""
    folder = tmp_path / "digits"
    folder.mkdir()
    for i, pixels in enumerate(_pixels(20)):
        Image.fromarray(pixels[0]).save(folder / f"digit_{i:02d}.png")
    return folder


def _pixels(n: int) -> np.ndarray:
    """The last ``n`` scikit-learn digits as ``uint8`` images ``(n, 1, 8, 8)``, as PNG files hold them."""
    from sklearn.datasets import load_digits

    images = load_digits().images[-n:]
    return np.round(images * 255 / 16).astype(np.uint8)[:, None]


def _own_model(run: Path, base: Path, with_base: bool = True) -> ViT:
    """The fine-tuned model as training built it: the architecture from the hyperparameters, the base weights from
    ``base`` (as at the start of fine-tuning, unless ``with_base`` is false), then the checkpoint's trained tensors."""
    ckpt = load_checkpoint(finder.run_checkpoint(run))
    model = ViT(**{k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")})
    if with_base:
        load_pretrained(model, base)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def test_predict_on_an_adapters_only_lora_run_equals_the_models_own_forward_and_the_merged_onnx(
    lora_run: tuple[Path, Path], digit_pngs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, base = lora_run
    ckpt = load_checkpoint(finder.run_checkpoint(run))
    assert ckpt["lora"] == {"adapters_only": True, "base": str(base)}
    assert ckpt["state_dict"] and all(".lora_" in k or k.startswith("head.") for k in ckpt["state_dict"])

    dm = DigitsDataModule()
    pixels = torch.from_numpy(_pixels(20))
    with torch.no_grad():
        expected = torch.softmax(_own_model(run, base)(dm.normalize(pixels)), dim=1).numpy()
        random_base = torch.softmax(_own_model(run, base, with_base=False)(dm.normalize(pixels)), dim=1).numpy()
    assert np.abs(expected - random_base).max() > 1e-3  # the base weights matter: the comparison can fail
    # The model's own restore path (its on_load_checkpoint reads the base) gives the same model.
    restored, _ = model_from_checkpoint(finder.run_checkpoint(run))
    with torch.no_grad():
        restored_probs = torch.softmax(restored.eval()(dm.normalize(pixels)), dim=1).numpy()
    np.testing.assert_allclose(restored_probs, expected, rtol=0, atol=1e-6)

    frames = {}
    for backend in ("torch", "onnx"):
        output = tmp_path / f"{backend}.csv"
        code = predict.main([str(run), str(digit_pngs), "--backend", backend, "--topk", "10", "--output", str(output)])
        assert code == 0, capsys.readouterr().err
        frames[backend] = pd.read_csv(output, dtype={f"label{s}": str for s in ["", *(f"_{k}" for k in range(2, 11))]})
    names = DigitsDataModule().input_spec()["class_names"]
    for backend, frame in frames.items():
        assert [Path(f).name for f in frame["file"]] == [f"digit_{i:02d}.png" for i in range(20)]
        # Each row's ten (label, probability) pairs, back in class order.
        got = np.zeros_like(expected)
        for rank in ["", *(f"_{k}" for k in range(2, 11))]:
            cols = frame[f"label{rank}"].map(names.index).to_numpy()
            got[np.arange(20), cols] = frame[f"probability{rank}"].to_numpy()
        np.testing.assert_allclose(got, expected, atol=2e-6, err_msg=backend)
    assert (frames["torch"]["label"] == frames["onnx"]["label"]).all()


def test_the_loader_returns_the_model_and_what_it_was_trained_on(lora_run: tuple[Path, Path]) -> None:
    run, base = lora_run
    trained = load_trained(run)
    assert isinstance(trained, TrainedModel)
    assert trained.checkpoint == finder.run_checkpoint(run) and trained.checkpoint.name.startswith("best-")
    assert trained.run == run and trained.base_weights == base and trained.files == (trained.checkpoint, base)
    assert trained.input_spec == DigitsDataModule().input_spec() and trained.tokenizer is None
    assert trained.output_kind == "logits" and not trained.model.training
    x = DigitsDataModule().normalize(torch.from_numpy(_pixels(8)))
    with torch.no_grad():
        torch.testing.assert_close(trained.model(x), _own_model(run, base)(x), rtol=0, atol=0)
    # An experiment folder means its newest run; a checkpoints folder its run; last.ckpt on request.
    assert load_trained(run.parent).checkpoint == trained.checkpoint
    assert find_checkpoint(run / "checkpoints") == trained.checkpoint
    assert load_trained(run, which="last").checkpoint == run / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("command", ["predict", "merge_lora"])
def test_predict_or_merge_with_the_base_weights_gone_is_one_line(
    lora_run: tuple[Path, Path], digit_pngs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    run, base = lora_run
    out = tmp_path / "out.csv"
    moved = base.rename(base.with_name("moved.ckpt"))
    try:
        if command == "predict":
            code = predict.main([str(run), str(digit_pngs), "--output", str(out)])
        else:
            code = merge_lora.main([str(run), "--out", str(out)])
    finally:
        moved.rename(base)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: this checkpoint holds LoRA adapters only; their base weights file '{base}'")
    assert not out.exists()


def test_the_guides_python_snippet_runs_as_written(
    lora_run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run, base = lora_run
    text = (ROOT / "docs" / "predict.md").read_text()
    (code,) = [b.split("```", 1)[0] for b in text.split("```python\n")[1:] if "load_trained(" in b]
    Image.fromarray(_pixels(1)[0, 0]).save(tmp_path / "scan.png")
    monkeypatch.chdir(tmp_path)
    exec(code.replace("runs/digits_cnn/version_0", str(run)), {})
    x = DigitsDataModule().normalize(torch.from_numpy(_pixels(1)))
    with torch.no_grad():
        expected = int(_own_model(run, base)(x).argmax())
    assert capsys.readouterr().out.strip() == DigitsDataModule().input_spec()["class_names"][expected]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("nothing", "NOTHING does not exist: pass a run folder (runs/NAME/version_N) or a .ckpt file"),
        ("empty folder", "no checkpoint in EMPTY: a run saves checkpoints/*.ckpt as it trains"),
        ("weights file", "is a weights file, not a training checkpoint of a zerotune run"),
        ("unknown class", "was saved from nowhere.Model, which cannot be imported here: cannot import 'nowhere.Model'"),
    ],
)
def test_loader_errors_name_the_file_and_the_fix(tmp_path: Path, source: str, expected: str) -> None:
    path = {"nothing": tmp_path / "nothing", "empty folder": tmp_path}.get(source, tmp_path / "x.ckpt")
    if source == "weights file":
        torch.save({"w": torch.zeros(2)}, path)
    elif source == "unknown class":
        torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": "nowhere.Model"}}, path)
    with pytest.raises(UsageError) as err:
        load_trained(path)
    assert expected.replace("NOTHING", str(tmp_path / "nothing")).replace("EMPTY", str(tmp_path)) in str(err.value)


# -- the finder ------------------------------------------------------------------------------------------------------
def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_finder_orders_runs_by_number_and_skips_what_is_no_run(tmp_path: Path) -> None:
    experiment = tmp_path / "runs" / "digits_cnn"
    for name in ("version_2", "version_10", "version_9", "version_x", "trial_0"):
        (experiment / name).mkdir(parents=True)
    _touch(experiment / "version_11")  # a file, not a run folder
    assert [p.name for p in finder.versions(experiment)] == ["version_2", "version_9", "version_10"]
    assert finder.next_version(experiment) == 11 and finder.next_version(tmp_path / "new") == 0
    assert finder.newest_run(experiment) == experiment / "version_10"
    _touch(experiment / "version_9" / "model.onnx")
    has_onnx = lambda folder: (folder / "model.onnx").is_file()  # noqa: E731
    assert finder.newest_run(experiment, has_onnx) == experiment / "version_9"
    assert finder.find_run(experiment, has_onnx) == experiment / "version_9"
    assert finder.find_run(experiment / "version_9", has_onnx) == experiment / "version_9"
    assert finder.find_run(experiment / "version_2", has_onnx) is None
    assert finder.version_number(experiment / "version_10") == 10 and finder.version_number(experiment) is None


def test_finder_picks_the_recorded_best_then_best_then_last_then_a_loose_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "version_0"
    folder = run / "checkpoints"
    loose = _touch(run / "weights.ckpt")
    assert finder.run_checkpoint(run) == loose and finder.run_checkpoint(run, "last") is None
    last = _touch(folder / "last.ckpt")
    assert finder.run_checkpoint(run) == last and finder.run_checkpoint(run, "last") == last
    old, new = _touch(folder / "best-epoch003.ckpt"), _touch(folder / "best-epoch007.ckpt")
    assert finder.run_checkpoint(run) == new  # no score recorded in either: the last by name
    # status.json's record wins; a moved run folder finds the recorded file in its own checkpoints/.
    (run / "status.json").write_text(json.dumps({"best_checkpoint": "/elsewhere/checkpoints/best-epoch003.ckpt"}))
    assert finder.run_checkpoint(run) == old
    assert finder.run_of_checkpoint(old) == run and finder.run_of_checkpoint(loose) == run
    assert finder.find_run(folder, lambda f: finder.run_checkpoint(f) is not None) == run
    assert finder.run_tokenizer(run) is None
    (run / "tokenizer.json").mkdir()
    assert finder.run_tokenizer(run) is None  # a folder is no tokenizer file
    (run / "tokenizer.json").rmdir()
    tokenizer = _touch(run / "tokenizer.json")
    assert finder.run_tokenizer(run) == tokenizer


def _saved_with_score(path: Path, score: float, mode: str, mtime: float) -> Path:
    """A checkpoint holding only what Lightning's ``ModelCheckpoint`` records of it: its score and the mode."""
    key = f"ModelCheckpoint{{'monitor': 'val/acc', 'mode': '{mode}', 'every_n_train_steps': 0, 'every_n_epochs': 1}}"
    state = {"current_score": torch.tensor(score), "best_k_models": {f"/elsewhere/{path.name}": torch.tensor(score)}}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"callbacks": {key: state}}, path)
    os.utime(path, (mtime, mtime))
    return path


@pytest.mark.parametrize(("mode", "expected"), [("max", "best-epoch003.ckpt"), ("min", "best-epoch007.ckpt")])
def test_finder_picks_the_best_checkpoint_by_its_score_not_its_time_or_name(
    tmp_path: Path, mode: str, expected: str
) -> None:
    folder = tmp_path / "version_0" / "checkpoints"
    # save_top_k 3, no status.json (a run that was killed): the best score is neither the newest file nor the last
    # name; merge_lora took the newest file.
    _saved_with_score(folder / "best-epoch003.ckpt", 0.9, mode, mtime=1e9)
    _saved_with_score(folder / "best-epoch007.ckpt", 0.7, mode, mtime=2e9)
    _saved_with_score(folder / "best-epoch010.ckpt", 0.8, mode, mtime=3e9)
    _saved_with_score(folder / "last.ckpt", 0.8, mode, mtime=3e9)
    assert finder.run_checkpoint(folder.parent) == folder / expected
    # A file that records no score does not win over those that do; nor does a tie go to the older name.
    _touch(folder / "best-epoch011.ckpt")
    _saved_with_score(folder / "best-epoch012.ckpt", 0.9 if mode == "max" else 0.7, mode, mtime=1)
    assert finder.run_checkpoint(folder.parent) == folder / "best-epoch012.ckpt"
    # Numbers in names compare by value when no file records a score.
    names = ["best-step999.ckpt", "best-step1000.ckpt"]
    assert finder.best_scored([_touch(tmp_path / "plain" / n) for n in names]) == tmp_path / "plain" / names[1]


def test_finder_and_runs_listing_import_no_pytorch() -> None:
    code = "import sys, experiments.runs, experiments.rundir.finder\n"
    code += "print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- class paths -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("GPT", "'GPT' is not a class path (module.Class, e.g. lightning_models.GPT)"),
        ("nowhere.GPT", "cannot import 'nowhere.GPT': No module named 'nowhere'"),
        ("lightning_models.GTP", "cannot import 'lightning_models.GTP': module 'lightning_models' has no 'GTP'"),
        ("lightning_models.checkpoints.import_class", "'lightning_models.checkpoints.import_class' is a function"),
    ],
)
def test_import_class_names_the_path_and_why(path: str, message: str) -> None:
    assert import_class("lightning_models.ViT") is ViT
    with pytest.raises(ImportError) as err:
        import_class(path)
    assert str(err.value).startswith(message)
