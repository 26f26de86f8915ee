"""``experiments.predict`` on texts: a tiny ``stdlib_classifier`` run trained by the launcher predicts on lines of
``.txt`` files, standard input and the text column of a CSV, from its checkpoint and from model.onnx; the inputs
are encoded exactly as the training tensors were, and inputs the model cannot take are one ``error:`` line."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from pretrained_fixtures import QUIET_SETTINGS, SHAPE, TOPICS, labelled_csv  # noqa: F401 (a fixture)
from test_predict import one_error, predict

from datamodules import TextClassificationDataModule
from datamodules.text_classification import PAD_ID
from experiments.api import launch
from experiments.inference.loading import input_spec_of
from fileio.checkpoints import load_checkpoint
from lightning_models import SequenceClassifier

BLOCK = 32
DATA = {"data.block_size": BLOCK, "data.bpe_vocab_size": 300, "data.batch_size": 16}


@pytest.fixture(scope="module")
def text_run(labelled_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """stdlib_classifier (2 layers, 32 wide, BPE of 300 tokens) trained 6 epochs on 3 topics; ONNX export on."""
    runs = tmp_path_factory.mktemp("text") / "runs"
    settings = {"data.path": str(labelled_csv), **DATA, **SHAPE, "trainer.max_epochs": 6, **QUIET_SETTINGS}
    return launch("stdlib_classifier", settings, runs_dir=runs).run_dir


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


# -- long and large inputs -------------------------------------------------------------------------------------------
def test_a_text_is_cut_before_tokenizing_and_keeps_the_tokens_of_the_whole_line(
    text_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datamodules.text_classification import encode_texts
    from datamodules.tokenizer import ByteTokenizer, CharTokenizer
    from experiments.inference.inputs import PredictOptions, TextLines, text_window

    _, dm = trained(text_run)
    words = " ".join(dm.texts()["train"][0][:40])
    texts = [words * 30, "\x00" * 200_000, "é" * 50_000 + words, words[:20], "  " + words * 10]
    for tokenizer in (dm.tokenizer, ByteTokenizer(), CharTokenizer("".join(sorted(set("".join(texts)))))):
        expected = encode_texts(tokenizer, texts, BLOCK).numpy()  # the whole lines tokenized, as training does
        kind = TextLines({"kind": "text", "tokenizer": tokenizer.to_dict(), "block_size": BLOCK}, PredictOptions())
        seen: list[int] = []
        original = type(kind.tokenizer).encode_batch

        def recording(
            self: object, batch: list[str], *args: Any, seen: list[int] = seen, original=original
        ) -> list[np.ndarray]:
            seen.extend(map(len, batch))
            return original(self, batch, *args)

        monkeypatch.setattr(type(kind.tokenizer), "encode_batch", recording)
        got = kind.encode([str(i) for i in range(len(texts))], texts)
        np.testing.assert_array_equal(got, expected, err_msg=tokenizer.kind)
        # The tokenizer saw at most the window (enough characters for the block), however long the line.
        assert max(seen) <= text_window(tokenizer, BLOCK) < 50_000, tokenizer.kind
        monkeypatch.undo()


def test_text_lines_are_decoded_a_chunk_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from experiments.inference import inputs as predict_inputs
    from experiments.inference.inputs import text_lines
    from fileio.errors import DataError

    monkeypatch.setattr(predict_inputs, "READ_CHUNK", 3)  # characters of several bytes are split between chunks
    body = "\ufeffhéllo wörld\r\n\n  \r\n€uro\nabc\r"
    lines = list(text_lines(io.BytesIO(body.encode()), "x", keep=6))
    assert lines == [(1, "héllo ", True), (2, "", False), (3, "  ", False), (4, "€uro", True), (5, "abc", True)]
    assert list(text_lines(io.BytesIO(b"ab\r"), "x", keep=2)) == [(1, "ab", True)]
    assert list(text_lines(io.BytesIO(b"abc\r"), "x", keep=2)) == [(1, "ab", True)]
    bad = "ok\nçava".encode() + b" caf\xe9 x\n"
    with pytest.raises(DataError, match=r"^x is not UTF-8 text \(invalid continuation byte at byte 12\)"):
        list(text_lines(io.BytesIO(bad), "x", keep=10))
    with pytest.raises(UnicodeDecodeError) as whole:
        bad.decode()
    assert whole.value.start == 12


#: A text file of this many bytes, nearly all NUL bytes on one line (a sparse file: written at once, no disk used).
LARGE = 200 * 2**20
_MEASURE = """
import json, resource, sys
from experiments.predict import main
peaks = []
for inputs in json.loads(sys.argv[1]):
    assert main(inputs) == 0
    peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
print(json.dumps(peaks))
"""


def test_a_huge_line_costs_neither_memory_nor_time(text_run: Path, tmp_path: Path) -> None:
    """200 MB of NUL bytes on one line between two texts: peak memory as for a two-line file, the texts predicted as
    in a small file (used to take 15 GiB per 100 MB, for the first block of tokens only)."""
    import subprocess
    import time

    from conftest import ROOT

    first, last = "open read write close path", "socket host port listen"
    small, large = tmp_path / "small.txt", tmp_path / "large.txt"
    small.write_text(f"{first}\n{last}\n")
    with open(large, "wb") as f:
        f.write(f"{first}\n".encode())
        f.truncate(LARGE)  # the rest of line 2 is a hole: NUL bytes
        f.seek(0, 2)
        f.write(f"\n{last}\n".encode())
    runs = [[str(text_run), str(p), "--output", str(tmp_path / f"{p.stem}.csv")] for p in (small, large)]
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, json.dumps(runs)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    before, after = json.loads(proc.stdout.splitlines()[-1])
    assert after - before < 64 * 2**20, f"peak memory grew by {(after - before) / 2**20:.0f} MiB"
    assert seconds < 120
    a, b = pd.read_csv(tmp_path / "small.csv"), pd.read_csv(tmp_path / "large.csv")
    assert b["id"].tolist() == [f"{large}:1", f"{large}:2", f"{large}:3"]
    for i, j in ((0, 0), (1, 2)):  # the texts before and after the long line are predicted as in the small file
        assert a["label"][i] == b["label"][j] and a["probability"][i] == b["probability"][j]


def test_a_csv_or_json_lines_row_too_long_to_read_is_one_line(
    text_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from experiments.inference import inputs as predict_inputs

    monkeypatch.setattr(predict_inputs, "MAX_ROW_BYTES", 1000)
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"text": "open read"}) + "\n" + json.dumps({"text": "x" * 2000}) + "\n")
    line = one_error(*predict([text_run, path, "--output", tmp_path / "out.csv"], capsys)[::2])
    assert line == (
        f"error: {path}, line 2 is longer than 0 MiB: a row that long is not read; split the text, or pass it as a "
        ".txt file (one text per line, read in pieces)"
    )
    assert not (tmp_path / "out.csv").exists()
