"""Text classification: the datamodule's file formats, splits, default stdlib task and errors; the sequence
classifier's padding handling; fine-tuning a pre-trained GPT or BERT end to end with dashboards and ONNX."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from conftest import run_launcher
from pretrained_fixtures import QUIET, QUIET_SETTINGS, SHAPE, TEXT, TINY_SHAPE, TOPICS
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from datamodules import TextClassificationDataModule, TextDataModule
from datamodules.text_classification import PAD_ID
from datamodules.tokenizer import CharTokenizer
from experiments.api import launch
from fileio.errors import DataError
from lightning_models import GPT, SequenceClassifier


def write_rows(path: Path, rows: list[dict[str, str]]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        sep = "\t" if path.suffix == ".tsv" else ","
        keys = list(rows[0])
        path.write_text("\n".join([sep.join(keys)] + [sep.join(r[k] for k in keys) for r in rows]) + "\n")
    return path


ROWS = [{"body": f"{w} {w} text {i}", "topic": t} for t, w in (("a", "alpha"), ("b", "beta")) for i in range(10)]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_formats_columns_and_stratified_splits(suffix: str, tmp_path: Path) -> None:
    path = write_rows(tmp_path / f"texts{suffix}", ROWS)
    dm = TextClassificationDataModule(
        path=str(path), text_column="body", label_column="topic", tokenizer="byte", block_size=12,
        val_fraction=0.2, test_fraction=0.2,
    )  # fmt: skip
    assert dm.class_names == ["a", "b"] and dm.num_classes == 2 and dm.vocab_size == 256
    dm.setup()
    assert {s: len(split) for s, split in dm.splits.items()} == {"train": 12, "val": 4, "test": 4}
    for split in dm.splits.values():
        assert torch.bincount(split.y).tolist() == [len(split) // 2] * 2  # stratified
    x = dm.splits["train"].x
    assert x.shape == (12, 12) and x.dtype == torch.long
    text = dm.texts()["train"][0][0]
    ids = list(text.encode())[:12]
    assert x[0, : len(ids)].tolist() == ids and (x[0, len(ids) :] == PAD_ID).all()


def test_default_task_is_stdlib_snippets_labelled_by_package() -> None:
    dm = TextClassificationDataModule(tokenizer="byte", max_per_class=40, packages=["json", "email", "logging"])
    assert dm.class_names == ["email", "json", "logging"]
    texts, labels = dm.texts()["test"]
    root = Path(sysconfig.get_paths()["stdlib"])
    for text, label in list(zip(texts, labels, strict=True))[:12]:
        sources = "\n".join(p.read_text(errors="replace") for p in (root / label).rglob("*.py"))
        assert text in sources  # each snippet is a piece of a file of its own package
        assert len(text.splitlines()) <= 12


def test_datamodule_errors_name_the_file_and_the_fix(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "t.csv", ROWS)
    with pytest.raises(DataError, match=r"line 2: no column \['text', 'label'\].*it has \['body', 'topic'\]"):
        TextClassificationDataModule(path=str(path)).texts()
    (tmp_path / "t.txt").write_text("text,label\n")
    with pytest.raises(DataError, match="unknown format '.txt'; use a .csv, .tsv or .jsonl file"):
        TextClassificationDataModule(path=str(tmp_path / "t.txt")).texts()
    with pytest.raises(DataError, match="some classes have fewer training rows"):
        dm = TextClassificationDataModule(path=str(path), text_column="body", label_column="topic", train_per_class=9)
        dm.texts()


@pytest.mark.parametrize(("causal", "pooling"), [(True, "last"), (True, "mean"), (False, "mean"), (False, "first")])
def test_padding_never_changes_the_prediction(causal: bool, pooling: str) -> None:
    torch.manual_seed(0)
    model = SequenceClassifier(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32, num_classes=3,
                               causal=causal, pooling=pooling).eval()  # fmt: skip
    ids = torch.randint(0, 40, (1, 9))
    short = torch.full((1, 16), PAD_ID)
    short[0, :9] = ids
    with torch.no_grad():
        torch.testing.assert_close(model(short), model(ids), rtol=1e-5, atol=1e-5)
        longer = short.clone()
        longer[0, 9] = 5  # one more real token does change it
        assert (model(longer) - model(short)).abs().max() > 1e-5


def test_classifier_fine_tunes_a_pretrained_gpt_with_dashboards_and_onnx(
    tiny_gpt_ckpt: Path, labelled_csv: Path, runs_dir: Path
) -> None:
    settings = {
        "data.path": str(labelled_csv),
        "data.block_size": 32,
        "data.tokenizer_path": str(tiny_gpt_ckpt),
        "model.pretrained": str(tiny_gpt_ckpt),
        "trainer.max_epochs": 2,
        "data.batch_size": 16,
        "progress_bar.refresh_rate": 0,
        **SHAPE,
    }
    report = launch("stdlib_classifier", settings, runs_dir=runs_dir).report
    pretrained = report.pretrained
    assert pretrained is not None and pretrained.path == str(tiny_gpt_ckpt) and pretrained.loaded
    assert "lm_head.weight" in pretrained.unused  # the language-model head is not used
    assert report.onnx is not None and report.onnx.ok and "sequence 16" in report.onnx.other_shapes, report.onnx
    run = runs_dir / "stdlib_classifier" / "version_0"
    assert report.run_dir == run
    acc = EventAccumulator(str(run), size_guidance={"images": 0})
    acc.Reload()
    assert "val/confusion_matrix" in acc.Tags()["images"]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["class_names"] == sorted(TOPICS) and ckpt["tokenizer"]["kind"] == "bpe"


def test_pretrained_weights_with_another_tokenizer_are_refused(
    tiny_gpt_ckpt: Path, labelled_csv: Path, runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_launcher(
        ["stdlib_classifier", "--runs_dir", str(runs_dir), "--data.path", str(labelled_csv), "--data.block_size", "32",
         "--data.bpe_vocab_size", "300", "--model.pretrained", str(tiny_gpt_ckpt), *TINY_SHAPE, *QUIET],
        capsys,
    )  # fmt: skip
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and f"--data.tokenizer_path {tiny_gpt_ckpt}" in lines[0], err[-2000:]


def test_encoder_classifier_from_a_bert_checkpoint(code_corpus: Path, labelled_csv: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    pretraining = {
        "data.path": str(code_corpus),
        "data.cache_dir": str(tmp_path / "tok"),
        "trainer.max_steps": 3,
        "trainer.val_check_interval": 3,
        "onnx.enabled": False,
        **SHAPE,
        **TEXT,
        **QUIET_SETTINGS,
    }
    launch("stdlib_bert", pretraining, runs_dir=runs)
    bert = runs / "stdlib_bert" / "version_0" / "checkpoints" / "last.ckpt"
    settings = {
        "data.path": str(labelled_csv),
        "data.block_size": 32,
        "data.tokenizer_path": str(bert),
        "model.pretrained": str(bert),
        "model.causal": False,
        "model.bias": True,
        "model.finetune": "lora",
        "trainer.max_epochs": 1,
        "onnx.enabled": False,
        **SHAPE,
        **QUIET_SETTINGS,
    }
    pretrained = launch("stdlib_classifier", settings, runs_dir=runs).report.pretrained
    assert pretrained is not None and pretrained.path == str(bert)
    # Every body tensor of the encoder, its [MASK] row included, loads: 2 embeddings, 12 per block, 2 final norm.
    assert len(pretrained.loaded) == 28, pretrained


def text_model_and_data(kind: str, tmp_path: Path, pretrained: str) -> tuple[Any, Any]:
    """A tiny classifier or language model on char-tokenized data, set to start from ``pretrained``."""
    shape = {"block_size": 8, "n_layer": 1, "n_head": 1, "n_embd": 8, "pretrained": pretrained}
    if kind == "classifier":
        table = write_rows(tmp_path / "t.jsonl", [{"text": f"ab {i % 3}", "label": str(i % 2)} for i in range(20)])
        dm = TextClassificationDataModule(path=str(table), tokenizer="char", block_size=8)
        model = SequenceClassifier(vocab_size=dm.vocab_size, num_classes=2, **shape)
    else:
        (tmp_path / "c.txt").write_text("ab 012 " * 200)
        dm = TextDataModule(path=str(tmp_path / "c.txt"), tokenizer="char", block_size=8, data_dir=str(tmp_path / "d"))
        model = GPT(vocab_size=dm.vocab_size, **shape)
    model._trainer = SimpleNamespace(datamodule=dm, ckpt_path=None)  # what setup reads of a trainer
    return model, dm


@pytest.mark.parametrize("suffix", [".ckpt", ".pt"])
@pytest.mark.parametrize("kind", ["classifier", "language model"])
def test_one_check_of_the_pretrained_tokenizer_for_every_text_model(
    kind: str, suffix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = tmp_path / f"pretrained{suffix}"
    model, dm = text_model_and_data(kind, tmp_path, str(weights))
    assert dm.tokenizer == CharTokenizer(" 012ab")
    trained = {k: v + 1.0 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    # The same characters in another order: every id would mean another character.
    torch.save({"state_dict": trained, "tokenizer": CharTokenizer("ba210 ").to_dict()}, weights)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(DataError) as err:
        model.setup("fit")
    assert str(err.value) == (
        f"model.pretrained '{weights}' was trained with another tokenizer than this run's data uses, so its token ids "
        f"would mean other text; pass --data.tokenizer_path {weights} to tokenize with the model's own"
    )
    # Refused before anything was loaded: the weights are the model's own, no load was reported.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert "pretrained:" not in capsys.readouterr().out
    # The same tokenizer is taken, whatever the file's suffix.
    torch.save({"state_dict": trained, "tokenizer": CharTokenizer(" 012ab").to_dict()}, weights)
    model.setup("fit")
    assert "pretrained: loaded" in capsys.readouterr().out and model.tokenizer == dm.tokenizer
