"""``experiments.predict``: real runs trained by the launcher (a Titanic-like table, digits images, a regression
table), predictions from the checkpoint and from model.onnx that agree, unreadable files listed and skipped, and
one ``error:`` line (exit 2, nothing written) for inputs the model cannot take."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
import pytest
from fakedata import titanic_rows, write_titanic
from PIL import Image

from experiments.inference.loading import input_spec_of
from experiments.predict import main
from fileio.checkpoints import load_checkpoint


def train(runs: Path, experiment: str, settings: dict[str, Any]) -> Path:
    """The run folder of ``experiment`` trained with ``settings`` (through the Python API)."""
    from experiments.api import launch

    run = launch(experiment, settings, runs_dir=runs).run_dir
    assert run is not None and run.parent.parent == runs
    return run


@pytest.fixture(scope="module")
def titanic_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """binary_mlp trained on a Titanic-like CSV (text categories, gaps, an identifier) with no preprocessing given."""
    root = tmp_path_factory.mktemp("titanic")
    data = write_titanic(root / "titanic.csv", n=400, seed=0)
    settings = {"data": "datamodules.CSVDataModule", "data.path": str(data), "data.target": "survived"}
    return train(root / "runs", "binary_mlp", {**settings, "trainer.max_epochs": 15})


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    return train(root / "runs", "digits_cnn", {"trainer.max_epochs": 2, "trainer.limit_train_batches": 8})


@pytest.fixture
def digit_pngs(tmp_path: Path) -> Path:
    """12 digit images as 8-bit grayscale PNG files in a folder and a subfolder, plus one corrupt file."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder = tmp_path / "new_digits"
    (folder / "more").mkdir(parents=True)
    for i in range(12):
        pixels = np.round(digits.images[-i - 1] * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels).save(folder / ("more" if i % 2 else "") / f"digit_{i:02d}.png")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return folder


def predict(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_error(code: int, err: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# -- tables ----------------------------------------------------------------------------------------------------------
def test_table_predictions_from_checkpoint_and_onnx_agree(
    titanic_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    held_out = write_titanic(tmp_path / "passengers.csv", n=150, seed=7)
    frames = {}
    for backend in ("torch", "onnx"):
        output = tmp_path / f"{backend}.csv"
        args = [titanic_run, held_out, "--backend", backend, "--output", output, "--topk", "2", "--keep", "name"]
        code, out, err = predict(args, capsys)
        assert code == 0, err
        assert f"predicted 150 rows with {titanic_run}" in out and f"({backend}, cpu)" in out
        accuracy = float(out.split("accuracy against the 'survived' column: ")[1].split()[0])
        assert accuracy > 0.75, out
        frames[backend] = pd.read_csv(output, dtype={"label": str, "label_2": str})
    a, b = frames["torch"], frames["onnx"]
    assert list(a.columns) == ["file", "row", "name", "survived", "label", "probability", "label_2", "probability_2"]
    assert a["row"].tolist() == list(range(2, 152))  # spreadsheet rows: the header is row 1
    assert (a["label"] == b["label"]).all() and (a["label_2"] == b["label_2"]).all()
    np.testing.assert_allclose(a["probability"], b["probability"], atol=1e-5)
    np.testing.assert_allclose(a["probability"] + a["probability_2"], 1.0, atol=1e-5)
    assert set(a["label"]) <= {"0", "1"}


def test_default_output_goes_to_the_run_folder_and_never_replaces_one(
    titanic_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = write_titanic(tmp_path / "few.csv", n=5, seed=3)
    for name in ("predictions.csv", "predictions_1.csv"):
        code, out, err = predict([titanic_run, rows], capsys)
        assert code == 0, err
        assert out.strip().endswith(f"predictions  {titanic_run / name}")
    first = pd.read_csv(titanic_run / "predictions.csv")
    assert len(first) == 5 and list(first.columns) == ["file", "row", "survived", "label", "probability"]
    (titanic_run / "predictions.csv").unlink()
    (titanic_run / "predictions_1.csv").unlink()


def test_checkpoint_run_folder_and_onnx_carry_the_fitted_preprocessing(titanic_run: Path) -> None:
    best = json.loads((titanic_run / "status.json").read_text())["best_checkpoint"]
    spec = input_spec_of(load_checkpoint(best, trust=False))  # the safe (weights_only) loader reads it
    assert spec is not None and spec["kind"] == "table"
    categorical = spec["preprocessing"]["categorical"]
    vocab = dict(zip(categorical["columns"], categorical["categories"], strict=True))
    assert vocab["sex"] == ["female", "male"] and set(vocab["embarked"]) == {"(missing)", "C", "Q", "S"}
    assert "name" not in spec["columns"] and spec["class_names"] == ["0", "1"]
    assert json.loads((titanic_run / "preprocessing.json").read_text()) == spec
    meta = {p.key: p.value for p in onnx.load(str(titanic_run / "model.onnx")).metadata_props}
    assert json.loads(meta["features"]) == spec["features"] and json.loads(meta["class_names"]) == ["0", "1"]
    assert json.loads(meta["input_spec"]) == spec and meta["output_kind"] == "logit"
    assert "not in the graph" in meta["input"]


def _drop_column(path: Path, column: str) -> None:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.drop(columns=[column]).to_csv(path, index=False)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing column", "has no column(s) ['age'] that the model was trained on"),
        ("unseen category", "column 'embarked', row 4: category 'Southampton' was never seen in training"),
        ("text in a numeric column", "column 'fare', row 3: 'cheap' is not a number"),
        ("image for a table model", "is an image, but this model takes table rows with the columns"),
        ("folder without tables", "has no tables (.csv, .parquet, .pq, .tsv files) (it holds image files)"),
        ("missing input", "input not found"),
        ("header only", "none of the 1 input file(s) could be read, nothing predicted: NEW: has a header but no data"),
        ("run folder without checkpoint", "no checkpoint in"),
    ],
)
def test_bad_table_inputs_are_one_line_and_write_nothing(
    titanic_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, expected: str
) -> None:
    rows = titanic_rows(6, seed=4)
    run = titanic_run
    if case == "unseen category":
        rows[2]["embarked"] = "Southampton"
    if case == "text in a numeric column":
        rows[1]["fare"] = "cheap"
    table = write_titanic(tmp_path / "new.csv", rows=rows)
    inputs: list[Path] = [table]
    if case == "missing column":
        _drop_column(table, "age")
    elif case in ("image for a table model", "folder without tables"):
        Image.new("L", (8, 8)).save(tmp_path / "img.png")
        inputs = [tmp_path / "img.png" if case.startswith("image") else tmp_path]
        table.unlink()
    elif case == "missing input":
        inputs = [tmp_path / "nothere.csv"]
    elif case == "header only":
        table.write_text(table.read_text().splitlines()[0] + "\n")
    elif case == "run folder without checkpoint":
        run = tmp_path / "empty_run"
        run.mkdir()
    before = sorted(p.name for p in titanic_run.iterdir())
    line = one_error(*predict([run, *inputs, "--output", tmp_path / "out.csv"], capsys)[::2])
    assert expected.replace("NEW", str(table)) in line
    assert not (tmp_path / "out.csv").exists() and sorted(p.name for p in titanic_run.iterdir()) == before
    if case == "unseen category":
        code, out, err = predict(
            [run, *inputs, "--unknown_categories", "ignore", "--output", tmp_path / "o.csv"], capsys
        )
        assert code == 0 and len(pd.read_csv(tmp_path / "o.csv")) == 6, err


def test_regression_predictions_are_in_the_targets_units(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sklearn.datasets import load_diabetes

    run = train(tmp_path / "runs", "tabular_regression", {"trainer.max_epochs": 40})
    data = load_diabetes()
    table = pd.DataFrame(data.data[:60], columns=data.feature_names).assign(target=data.target[:60])
    table.to_parquet(tmp_path / "patients.parquet")
    values = {}
    for backend in ("torch", "onnx"):
        out_csv = tmp_path / f"{backend}.csv"
        code, out, err = predict(
            [run, tmp_path / "patients.parquet", "--backend", backend, "--output", out_csv], capsys
        )
        assert code == 0, err
        assert "mean absolute error against the 'target' column" in out
        values[backend] = pd.read_csv(out_csv)["value"].to_numpy()
    np.testing.assert_allclose(values["torch"], values["onnx"], rtol=1e-5, atol=1e-3)
    assert 100 < values["torch"].mean() < 200  # disease progression units, not the standardized target
    assert np.corrcoef(values["torch"], data.target[:60])[0, 1] > 0.5


# -- images ----------------------------------------------------------------------------------------------------------
def test_image_folder_with_a_corrupt_file_is_listed_and_the_rest_predicted(
    digits_run: Path, digit_pngs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = {}
    for backend, run in (("torch", digits_run), ("onnx", digits_run / "model.onnx")):
        output = tmp_path / f"{backend}.csv"
        code, out, err = predict([run, digit_pngs, "--topk", "3", "--output", output], capsys)
        assert code == 0, err
        assert "predicted 12 images" in out and "skipped 1 file(s) that could not be read:" in out
        assert f"{digit_pngs / 'corrupt.png'}: cannot identify image file" in out
        frames[backend] = pd.read_csv(output, dtype={"label": str, "label_2": str, "label_3": str})
    a, b = frames["torch"], frames["onnx"]
    assert len(a) == 12 and {Path(f).name for f in a["file"]} == {f"digit_{i:02d}.png" for i in range(12)}
    assert (a[["label", "label_2", "label_3"]] == b[["label", "label_2", "label_3"]]).all().all()
    np.testing.assert_allclose(a[["probability", "probability_2"]], b[["probability", "probability_2"]], atol=1e-5)
    assert (a["probability"] >= a["probability_2"]).all() and (a["probability_2"] >= a["probability_3"]).all()

    line = one_error(*predict([digits_run, digit_pngs, "--strict", "--output", tmp_path / "s.csv"], capsys)[::2])
    assert f"cannot read {digit_pngs / 'corrupt.png'}" in line and "--strict" in line
    assert not (tmp_path / "s.csv").exists()


def test_checkpoint_backend_normalizes_raw_pixels_as_training_did(digits_run: Path) -> None:
    """Raw uint8 digits through the predict model give what the trained model gives the normalized batch."""
    import torch

    from datamodules import DigitsDataModule
    from experiments.predict import load_torch
    from lightning_models import SmallCNN

    dm = DigitsDataModule()
    dm.setup()
    pixels = dm.splits["test"].x[:64]
    best = Path(json.loads((digits_run / "status.json").read_text())["best_checkpoint"])
    loaded = load_torch(best, digits_run, "cpu")
    ckpt = load_checkpoint(best)
    model = SmallCNN(**{k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}).eval()
    model.load_state_dict(ckpt["state_dict"])
    with torch.no_grad():
        expected = model(dm.normalize(pixels)).numpy()
    np.testing.assert_array_equal(loaded.forward(pixels.numpy()), expected)
    assert loaded.spec == dm.input_spec() and loaded.output_kind == "logits"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("colour image", "is a colour image (mode RGB), but the model was trained on grayscale images (1x8x8)"),
        ("table for an image model", "is a table, but this model takes grayscale images (1x8x8)"),
        ("text file for an image model", "notes.txt is a text file, but this model takes grayscale images (1x8x8)"),
        ("folder without images", "has no images"),
        ("onnx backend for a checkpoint", "is a checkpoint: --backend onnx needs the run folder or its .onnx file"),
        ("only unreadable files", "none of the 1 input file(s) could be read, nothing predicted: "),
        ("onnx file from elsewhere", "carries no input description (metadata_props 'input_spec')"),
    ],
)
def test_bad_image_inputs_are_one_line(
    digits_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, expected: str
) -> None:
    run: Path = digits_run
    extra: list[str] = []
    if case == "colour image":
        Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "red.png")
        inputs = [tmp_path / "red.png"]
    elif case == "table for an image model":
        inputs = [write_titanic(tmp_path / "t.csv", n=3)]
    elif case == "text file for an image model":
        (tmp_path / "notes.txt").write_text("hello\n")
        inputs = [tmp_path / "notes.txt"]
    elif case == "folder without images":
        (tmp_path / "notes.txt").write_text("hello")
        inputs = [tmp_path]
    elif case == "only unreadable files":
        (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 20)
        inputs = [tmp_path / "broken.jpg"]
    elif case == "onnx file from elsewhere":
        from test_view import write_tiny_onnx

        run = write_tiny_onnx(tmp_path / "other.onnx")
        inputs = [write_titanic(tmp_path / "t.csv", n=3)]
    else:
        run = next((digits_run / "checkpoints").glob("best*.ckpt"))
        Image.new("L", (8, 8)).save(tmp_path / "a.png")
        inputs, extra = [tmp_path / "a.png"], ["--backend", "onnx"]
    line = one_error(*predict([run, *inputs, *extra, "--output", tmp_path / "out.csv"], capsys)[::2])
    assert expected in line
    assert not (tmp_path / "out.csv").exists()


# -- the guide's onnxruntime snippets run as written ------------------------------------------------------------------
def _snippets(marker: str) -> list[str]:
    text = (Path(__file__).resolve().parent.parent / "docs" / "predict.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    return [b for b in blocks if marker in b]


def test_guide_snippets_load_feed_raw_data_and_read_class_names(
    digits_run: Path, titanic_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from sklearn.datasets import load_digits

    (image_code,) = _snippets('Image.open("digit.png")')
    (table_code,) = _snippets('read_table("passengers.csv"')
    digits = load_digits()
    Image.fromarray(np.round(digits.images[0] * 255 / 16).astype(np.uint8)).save(tmp_path / "digit.png")
    write_titanic(tmp_path / "passengers.csv", n=20, seed=9)
    monkeypatch.chdir(tmp_path)
    exec(image_code.replace("runs/digits_cnn/version_0", str(digits_run)), {})
    assert capsys.readouterr().out.strip() in [str(i) for i in range(10)]
    exec(table_code.replace("runs/binary_mlp/version_0", str(titanic_run)), {})
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("[") and set(eval(printed)) <= {"0", "1"}


def test_progress_is_a_plain_line_every_few_seconds_in_logs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from experiments import predict as module

    clock = iter([0.0, 1.0, 6.0, 7.0, 12.5])
    monkeypatch.setattr(module.time, "perf_counter", lambda: next(clock))
    progress = module.Progress(total=4096 * 3, unit="rows")  # stderr is captured: not a terminal
    for _ in range(3):
        progress.update(4096)
    progress.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["predict: 8192/12288 (67%) rows, 6 s"]
