"""``experiments.predict`` on texts: a tiny ``stdlib_classifier`` run trained by the launcher predicts on lines of
``.txt`` files, standard input and the text column of a CSV, from its checkpoint and from model.onnx; the inputs
are encoded exactly as the training tensors were, and inputs the model cannot take are one ``error:`` line."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from pretrained_fixtures import QUIET, TINY_SHAPE, TOPICS, labelled_csv  # noqa: F401 (a fixture)
from test_predict import one_error, predict

from datamodules import TextClassificationDataModule
from datamodules.text_classification import PAD_ID
from experiments.predict import input_spec_of
from experiments.run import main as run_main
from lightning_models import SequenceClassifier
from lightning_models.checkpoints import load_checkpoint

BLOCK = 32
DATA = ["--data.block_size", str(BLOCK), "--data.bpe_vocab_size", "300", "--data.batch_size", "16"]


@pytest.fixture(scope="module")
def text_run(labelled_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """stdlib_classifier (2 layers, 32 wide, BPE of 300 tokens) trained 6 epochs on 3 topics; ONNX export on."""
    runs = tmp_path_factory.mktemp("text") / "runs"
    args = ["stdlib_classifier", "--runs_dir", str(runs), "--data.path", str(labelled_csv), *DATA, *TINY_SHAPE]
    assert run_main([*args, "--trainer.max_epochs", "6", *QUIET]) == 0
    return runs / "stdlib_classifier" / "version_0"


def trained(run: Path) -> tuple[SequenceClassifier, TextClassificationDataModule]:
    """The run's best model (from its checkpoint) and its datamodule, set up as training set it up."""
    best = Path(json.loads((run / "status.json").read_text())["best_checkpoint"])
    ckpt = load_checkpoint(best)
    model = SequenceClassifier(**{k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")})
    model.load_state_dict(ckpt["state_dict"])
    dm = TextClassificationDataModule(**yaml.safe_load((run / "config.yaml").read_text())["data"]["init_args"])
    dm.setup()
    return model.eval(), dm


@pytest.fixture(scope="module")
def lines(text_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int], torch.Tensor]:
    """``new.txt``: 8 training texts, blank lines, a CRLF line and one text longer than a block.

    Returns the file, the line numbers of its texts, and the ``(9, BLOCK)`` ids training made of them (the training
    split's own tensors; the long text cut as training cuts).
    """
    _, dm = trained(text_run)
    texts = dm.texts()["train"][0][:8]
    long_text = " ".join([texts[0]] * 12)
    ids = dm.tokenizer.encode(long_text)
    assert len(ids) > BLOCK  # it is cut
    expected = torch.cat([dm.splits["train"].x[:8], torch.as_tensor(ids[:BLOCK], dtype=torch.long)[None]])
    path = tmp_path_factory.mktemp("texts") / "new.txt"
    body = "\n".join([*texts[:3], "", "   ", texts[3] + "\r", *texts[4:], long_text]) + "\n\n"
    path.write_bytes(body.encode())
    return path, [1, 2, 3, 6, 7, 8, 9, 10, 11], expected


def probabilities(model: SequenceClassifier, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model(x).double(), dim=1).numpy()


def test_text_predictions_are_the_models_forward_on_the_training_encoding_in_both_backends(
    text_run: Path, lines: tuple[Path, list[int], torch.Tensor], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, numbers, x = lines
    model, dm = trained(text_run)
    assert (x[:, -1] == PAD_ID).any() and (x != PAD_ID).all(dim=1).any()  # padded texts and a full block
    probs = probabilities(model, x)
    names = np.asarray(dm.class_names)
    order = np.argsort(-probs, axis=1, kind="stable")
    frames = {}
    for backend, run in (("torch", text_run), ("onnx", text_run), ("onnx file", text_run / "model.onnx")):
        output = tmp_path / f"{backend}.csv"
        extra = ["--backend", "onnx"] if backend == "onnx" else []
        code, out, err = predict([run, path, "--topk", "3", "--output", output, *extra], capsys)
        assert code == 0, err
        assert (
            out.startswith("predicted 9 texts with ")
            and ("(torch, cpu)" if backend == "torch" else "(onnx, cpu)") in out
        )
        frames[backend] = frame = pd.read_csv(output, dtype=str)
        assert list(frame.columns) == ["id", "label", "probability", "label_2", "probability_2", "label_3",
                                       "probability_3"]  # fmt: skip
        assert frame["id"].tolist() == [f"{path}:{n}" for n in numbers]
        for rank, suffix in enumerate(("", "_2", "_3")):
            assert frame[f"label{suffix}"].tolist() == names[order[:, rank]].tolist()
            np.testing.assert_allclose(
                frame[f"probability{suffix}"].astype(float), probs[np.arange(9), order[:, rank]], atol=2e-6
            )
    a = frames["torch"]
    for other in ("onnx", "onnx file"):
        b = frames[other]
        assert (a[["id", "label", "label_2", "label_3"]] == b[["id", "label", "label_2", "label_3"]]).all().all()
        np.testing.assert_allclose(a["probability"].astype(float), b["probability"].astype(float), atol=1e-5)
    # Training texts of three clearly separated topics: the trained model gets them right.
    assert (a["label"].iloc[:8] == np.asarray(dm.texts()["train"][1][:8])).mean() >= 0.75


def test_the_run_names_the_tokenizer_that_checkpoint_and_onnx_carry(text_run: Path) -> None:
    _, dm = trained(text_run)
    best = json.loads((text_run / "status.json").read_text())["best_checkpoint"]
    ckpt = load_checkpoint(best, trust=False)
    spec = input_spec_of(ckpt)
    assert spec is not None and spec["kind"] == "text" and spec == dm.input_spec()
    assert spec["block_size"] == BLOCK and spec["pad_id"] == PAD_ID and spec["class_names"] == sorted(TOPICS)
    # Named, not copied: the tokenizer itself is the model's checkpoint entry and the ONNX file's metadata.
    assert spec["tokenizer"] == {"kind": "bpe", "vocab_size": 300, "fingerprint": dm.tokenizer.fingerprint()}
    assert ckpt["tokenizer"] == dm.tokenizer.to_dict()
    assert json.loads((text_run / "preprocessing.json").read_text()) == spec
    proto = onnx.load(str(text_run / "model.onnx"))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["input_spec"]) == spec and json.loads(meta["tokenizer"]) == dm.tokenizer.to_dict()
    assert meta["input"].startswith("int64 token ids (batch, sequence), sequence at most 32")
    dims = [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64 and all(dims), dims


def test_standard_input_and_the_csv_text_column_with_its_labels(
    text_run: Path,
    labelled_csv: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model, dm = trained(text_run)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"socket host port\n\nsum sqrt log\n")))
    output = tmp_path / "out.csv"
    code, out, err = predict([text_run, "-", labelled_csv, "--backend", "onnx", "--output", output], capsys)
    assert code == 0, err
    frame = pd.read_csv(output, dtype=str, keep_default_na=False)
    assert list(frame.columns) == ["id", "true_label", "label", "probability"]
    assert frame["id"].tolist()[:3] == ["<stdin>:1", "<stdin>:3", f"{labelled_csv}:2"]
    assert frame["id"].iloc[-1] == f"{labelled_csv}:91" and len(frame) == 92  # the CSV header is line 1
    rows = pd.read_csv(labelled_csv, dtype=str)
    assert frame["true_label"].tolist() == ["", "", *rows["label"]]
    x = torch.cat([dm.splits[s].x for s in ("train", "val", "test")])
    every = dm.texts()
    texts = [t for s in ("train", "val", "test") for t in every[s][0]]
    expected = dm.class_names[int(probabilities(model, x[[texts.index(rows["text"][0])]]).argmax())]
    assert frame["label"].iloc[2] == expected
    accuracy = float(out.split("accuracy against the 'true_label' column: ")[1].split()[0])
    assert accuracy == pytest.approx((frame["label"][2:] == frame["true_label"][2:]).mean(), abs=1e-4)
    assert accuracy >= 0.8, out


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("not utf-8", "latin1.txt is not UTF-8 text (invalid continuation byte at byte 8): save it as UTF-8"),
        ("empty file", "empty.txt is empty: nothing to predict; pass files with one text per line"),
        ("blank lines only", "blank.txt has only blank lines: nothing to predict"),
        (
            "image for a text model",
            "img.png is an image, but this model takes text (lines of .txt files, or the 'text' column",
        ),
        ("folder without texts", "has no texts (.csv, .jsonl, .tsv, .txt files) (it holds image files)"),
        ("csv without the text column", "other.csv, line 2: no column 'text' (the text column the model was trained"),
        ("stdin twice", "- (standard input) is given twice"),
        ("onnx file without its tokenizer", "holds no tokenizer, but the model reads text split by a bpe tokenizer"),
    ],
)
def test_bad_text_inputs_are_one_line_and_write_nothing(
    text_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, expected: str
) -> None:
    run: Path = text_run
    inputs: list[str | Path] = []
    if case == "not utf-8":
        inputs = [tmp_path / "latin1.txt"]
        inputs[0].write_bytes("open café read".encode("latin-1"))  # type: ignore[union-attr]
    elif case == "empty file":
        inputs = [tmp_path / "empty.txt"]
        inputs[0].write_bytes(b"")  # type: ignore[union-attr]
    elif case == "blank lines only":
        inputs = [tmp_path / "blank.txt"]
        inputs[0].write_text("\n  \n\t\n")  # type: ignore[union-attr]
    elif case in ("image for a text model", "folder without texts"):
        Image.new("L", (8, 8)).save(tmp_path / "img.png")
        inputs = [tmp_path / "img.png" if case.startswith("image") else tmp_path]
    elif case == "csv without the text column":
        inputs = [tmp_path / "other.csv"]
        inputs[0].write_text("body,label\nopen read,files\n")  # type: ignore[union-attr]
    elif case == "stdin twice":
        inputs = ["-", "-"]
    else:
        proto = onnx.load(str(text_run / "model.onnx"))
        kept = [p for p in proto.metadata_props if p.key != "tokenizer"]
        del proto.metadata_props[:]
        proto.metadata_props.extend(kept)
        run = tmp_path / "copied.onnx"
        onnx.save(proto, str(run))
        (tmp_path / "a.txt").write_text("open read\n")
        inputs = [tmp_path / "a.txt"]
    before = sorted(p.name for p in text_run.iterdir())
    line = one_error(*predict([run, *inputs, "--output", tmp_path / "out.csv"], capsys)[::2])
    assert expected in line
    assert not (tmp_path / "out.csv").exists() and sorted(p.name for p in text_run.iterdir()) == before
