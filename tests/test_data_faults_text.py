"""Text data that is not what it claims: a damaged token cache is rebuilt with a warning naming the file, files that
are not text are left out of a corpus folder before it is split, and a bad tokenizer file or a char tokenizer that
cannot read the text is one ``error:`` line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_launcher
from fakedata import SHAKESPEARE, write_code_corpus, write_jpeg_folder, write_tinyshakespeare

from datamodules import TextClassificationDataModule, TextDataModule
from datamodules import text as text_module
from datamodules.tokenizer import CharTokenizer, read_tokenizer
from fileio.errors import DataError


# -- the token cache -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_code_corpus(tmp_path_factory.mktemp("corpus"))


def cached(corpus: Path, data: Path) -> TextDataModule:
    dm = TextDataModule(path=str(corpus), tokenizer="char", block_size=16, data_dir=str(data))
    dm.setup()
    return dm


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))  # same size: only the checksum tells


DAMAGE = {
    "train.bin truncated": ("train.bin", _truncate),
    "val.bin empty": ("val.bin", lambda p: p.write_bytes(b"")),
    "train.bin random bytes": ("train.bin", _random_bytes),
    "test.bin missing": ("test.bin", Path.unlink),
    "meta.json truncated": ("meta.json", _truncate),
    "meta.json not a cache description": ("meta.json", lambda p: p.write_text("[1, 2]")),
    "meta.json missing": ("meta.json", Path.unlink),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_token_cache_is_rebuilt_with_a_warning_naming_the_file(
    damage: str, corpus: Path, tmp_path: Path
) -> None:
    first = cached(corpus, tmp_path)
    folder = first.cache_folder()
    before = {split: np.array(tokens) for split, tokens in first.tokens.items()}  # copies, not maps of the files
    del first
    name, hurt = DAMAGE[damage]
    hurt(folder / name)
    named = folder if name == "meta.json" and damage.endswith("missing") else folder / name
    with pytest.warns(UserWarning, match=f"^token cache .*{re.escape(str(named))}.*; rebuilding the cache") as caught:
        again = cached(corpus, tmp_path)
    assert len([w for w in caught if "token cache" in str(w.message)]) == 1
    assert again.cache_folder() == folder and text_module.cache_problem(folder) is None
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # the damaged copy is gone
    assert set(again.tokens) == set(before)
    for split, tokens in before.items():  # the same tokens as before the damage
        assert np.array_equal(np.asarray(again.tokens[split]), tokens), split


def test_the_cache_is_checksummed_once_per_process(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed: list[str] = []
    crc32 = text_module._crc32_file
    monkeypatch.setattr(text_module, "_crc32_file", lambda p: hashed.append(Path(p).name) or crc32(p))
    cached(corpus, tmp_path)  # builds the cache: checksums are taken while writing
    assert hashed == []
    cached(corpus, tmp_path)  # first use of an existing cache in this process: checked
    assert sorted(hashed) == ["test.bin", "train.bin", "val.bin"]
    cached(corpus, tmp_path)
    assert len(hashed) == 3  # known intact: only the sizes are compared


def test_a_damaged_token_cache_through_the_launcher_rebuilds_and_trains(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    args = ["stdlib_gpt", "--data.path", str(corpus), "--data.data_dir", str(tmp_path / "data"), "--runs_dir",
            str(runs), "--data.tokenizer", "byte", "--data.block_size", "16", "--data.batch_size", "4",
            "--data.eval_batch_size", "8", "--model.n_layer", "1", "--model.n_head", "2", "--model.n_embd", "16",
            "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
            "--onnx.enabled", "false", "--samples.enabled", "false", "--dashboards.enabled", "false",
            "--test_after_fit", "false"]  # fmt: skip
    assert run_launcher(args, capsys)[0] == 0
    (train_bin,) = (tmp_path / "data" / "tokens").glob("*/train.bin")
    _truncate(train_bin)
    with pytest.warns(UserWarning, match=f"token cache file {re.escape(str(train_bin))} is damaged"):
        code, out, err = run_launcher(args, capsys)
    assert code == 0 and "Traceback" not in err, err
    assert text_module.cache_problem(train_bin.parent) is None  # rebuilt whole


# -- files that are not text in a corpus folder ----------------------------------------------------------------------
def _binary_files(folder: Path) -> list[str]:
    """Three files that are not text beside the corpus: a JPEG, a compiled Python file and a gzip archive."""
    write_jpeg_folder(folder / "_jpg", ["cat"], n_per_class=1)
    (folder / "_jpg" / "cat" / "0000.jpg").rename(folder / "photo.jpg")
    (folder / "module.pyc").write_bytes(b"\xa7\r\r\n\x00\x00\x00\x00" + bytes(range(256)) * 4)
    (folder / "input.txt.gz").write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(255, -1, -1)) * 8)
    for path in sorted((folder / "_jpg").rglob("*"), reverse=True):
        path.rmdir()
    return ["input.txt.gz", "module.pyc", "photo.jpg"]


@pytest.mark.parametrize("corpus_kind", ["200 KB of text", "Tiny Shakespeare", "a folder of code"])
def test_files_that_are_not_text_are_skipped_before_the_split(corpus_kind: str, tmp_path: Path) -> None:
    if corpus_kind == "200 KB of text":
        folder = tmp_path / "notes"
        folder.mkdir()
        (folder / "notes.txt").write_text("A line of plain notes, nothing more.\n" * 5600)  # 201,600 bytes
        texts = ["notes.txt"]
    elif corpus_kind == "Tiny Shakespeare":
        folder = write_tinyshakespeare(tmp_path).parent
        texts = ["input.txt"]
    else:
        folder = write_code_corpus(tmp_path / "code")
        texts = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.py"))
    binaries = _binary_files(folder)
    total = len(texts) + len(binaries)
    for seed in (0, 1, 2):
        dm = TextDataModule(path=str(folder), tokenizer="byte", block_size=16, seed=seed, data_dir=str(tmp_path))
        with pytest.warns(UserWarning) as caught:
            dm.setup()
        assert [str(w.message) for w in caught if "not UTF-8" in str(w.message)] == [
            f"skipped 3 of the {total} files in {folder} that are not UTF-8 text ({', '.join(binaries)}); the corpus "
            f"is the other {len(texts)}"
        ]
        assert dm.corpus().documents == texts and dm.corpus().skipped == binaries
        assert all(dm.split_info(split)["tokens"] > 16 for split in ("train", "val", "test"))
    if len(texts) == 1:  # one text file: split by position, as a single-file corpus
        text = (folder / texts[0]).read_text()
        assert dm.tokenizer.decode(dm.tokens["train"]) == text[: int(len(text) * 0.8)]


def test_a_folder_of_nothing_but_binaries_says_so(tmp_path: Path) -> None:
    folder = tmp_path / "bins"
    folder.mkdir()
    _binary_files(folder)
    with pytest.raises(
        DataError, match=r"^no text files in .*bins matching '\*\*/\*' \(3 file\(s\) that are not UTF-8"
    ):
        TextDataModule(path=str(folder), data_dir=str(tmp_path)).corpus()


# -- tokenizer files -------------------------------------------------------------------------------------------------
BAD_TOKENIZERS = {
    "truncated JSON": (b'{"kind": "char", "chars": "abc', "is not a tokenizer file: not JSON (Unterminated string"),
    "binary": (bytes(range(256)) * 4, "is not a tokenizer file: not JSON ('utf-8' codec can't decode"),
    "empty": (b"", "is not a tokenizer file: not JSON (Expecting value"),
    "nested too deep": (b"[" * 100_000, "is not a tokenizer file: not JSON (maximum recursion depth"),
    "a list": (b"[1, 2, 3]", "holds no known tokenizer (expected kind byte, char or bpe"),
    "two bytes": (b"{}", "holds no known tokenizer (expected kind byte, char or bpe"),
    "one token": (b'{"kind": "char", "chars": "a"}', "holds a char tokenizer of 1 token: a language model needs"),
    "empty alphabet": (b'{"kind": "char", "chars": ""}', "holds a malformed char tokenizer (a char tokenizer needs"),
    "repeated characters": (b'{"kind": "char", "chars": "aab"}', "holds a malformed char tokenizer"),
    "malformed BPE": (
        b'{"kind": "bpe", "tokenizer": {"model": {"type": "BPE", "vocab": 5}}}',
        "holds a malformed bpe tokenizer (invalid type: integer `5`",
    ),
    "malformed tokenizers library file": (b'{"model": {"type": "nonsense"}}', "holds a malformed bpe tokenizer"),
}


@pytest.mark.parametrize("case", list(BAD_TOKENIZERS))
def test_a_bad_tokenizer_file_is_one_error_line_naming_it(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    content, message = BAD_TOKENIZERS[case]
    path = tmp_path / "tokenizer.json"
    path.write_bytes(content)
    (tmp_path / "corpus.txt").write_text(SHAKESPEARE * 20)
    runs = tmp_path / "runs"
    args = [
        "shakespeare_char_gpt",
        "--data.url",
        "null",
        "--data.path",
        str(tmp_path / "corpus.txt"),
        "--data.data_dir",
        str(tmp_path / "data"),
        "--runs_dir",
        str(runs),
        "--data.tokenizer_path",
        str(path),
    ]
    code, _, err = run_launcher(args, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"error: {path} (data.tokenizer_path) ") and message in lines[0], lines[0]
    assert lines[0].endswith("; pass a run folder's tokenizer.json, a tokenizers library tokenizer.json or a "
                             "language model's .ckpt")  # fmt: skip


def test_read_tokenizer_names_the_setting_it_was_given_as(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text("{")
    with pytest.raises(DataError, match=re.escape(f"{path} (the run's tokenizer.json) is not a tokenizer file")):
        read_tokenizer(tmp_path, setting="the run's tokenizer.json")  # a run folder: its tokenizer.json


# -- a char tokenizer that cannot read the text -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def char_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny character-level GPT pre-trained on a few lines of Shakespeare: its last checkpoint."""
    from experiments.run import main

    root = tmp_path_factory.mktemp("char")
    (root / "pretrain.txt").write_text(SHAKESPEARE * 20)
    assert main(char_args(root / "pretrain.txt", root / "runs")) == 0
    return root / "runs" / "shakespeare_char_gpt" / "version_0" / "checkpoints" / "last.ckpt"


def char_args(corpus: Path, runs: Path, *extra: str) -> list[str]:
    return ["shakespeare_char_gpt", "--data.url", "null", "--data.path", str(corpus), "--data.data_dir",
            str(runs.parent / "data"), "--runs_dir", str(runs), "--data.block_size", "16", "--data.batch_size", "4",
            "--data.eval_batch_size", "8", "--model.n_layer", "1", "--model.n_head", "2", "--model.n_embd", "16",
            "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
            "--onnx.enabled", "false", "--samples.enabled", "false", "--dashboards.enabled", "false",
            "--test_after_fit", "false", *extra]  # fmt: skip


def test_fine_tuning_a_char_model_after_the_errors_advice(
    char_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    known = "".join(torch.load(char_model, weights_only=True)["tokenizer"]["chars"])
    # Other text written with some of the model's characters: the advice (pass its tokenizer) works.
    same_chars = tmp_path / "verse.txt"
    same_chars.write_text("".join(reversed(SHAKESPEARE.split("ROMEO")[0].splitlines(keepends=True))) * 30)
    runs = tmp_path / "runs"
    code, _, err = run_launcher(char_args(same_chars, runs, "--model.pretrained", str(char_model)), capsys)
    assert code == 2 and f"pass --data.tokenizer_path {char_model} to tokenize with the model's own" in err
    tuned_args = char_args(same_chars, runs, "--model.pretrained", str(char_model), "--data.tokenizer_path")
    code, out, err = run_launcher([*tuned_args, str(char_model)], capsys)
    assert code == 0, err
    (tuned,) = runs.glob("shakespeare_char_gpt/version_*/checkpoints/last.ckpt")
    assert torch.load(tuned, weights_only=True)["tokenizer"] == {"kind": "char", "chars": known}

    # Text with characters the model has no token for: no advice that cannot work, and one line either way.
    other = tmp_path / "other.txt"
    other.write_text(SHAKESPEARE.upper() * 20)
    lacking = sorted(set(SHAKESPEARE.upper()) - set(known))
    shown = ", ".join(repr(c) for c in lacking[:8]) + (f" and {len(lacking) - 8} more" if len(lacking) > 8 else "")
    code, _, err = run_launcher(char_args(other, runs, "--model.pretrained", str(char_model)), capsys)
    assert code == 2 and err.strip() == (
        f"error: model.pretrained '{char_model}' reads a char tokenizer of {len(known)} characters, and this run's "
        f"text has {len(lacking)} character(s) it has no token for ({shown}), so not even --data.tokenizer_path can "
        "make the model read it: use text written with the model's characters, or a model trained with "
        "data.tokenizer byte or bpe, which read any text"
    )
    advised = char_args(other, runs, "--model.pretrained", str(char_model), "--data.tokenizer_path", str(char_model))
    code, _, err = run_launcher(advised, capsys)
    assert code == 2 and "Traceback" not in err, err
    assert err.strip() == (
        f"error: the corpus {other} has {len(lacking)} character(s) that the char tokenizer of data.tokenizer_path "
        f"{char_model} has no token for ({shown}): a char tokenizer reads only the characters of the text it was "
        f"made from. Use text written with its {len(known)} characters, or a model trained with data.tokenizer "
        "byte or bpe, which read any text"
    )


def test_text_classification_with_characters_its_char_tokenizer_lacks(tmp_path: Path) -> None:
    rows = [{"text": f"{'abc' if i % 2 else 'cab'} {i % 7}", "label": str(i % 2)} for i in range(40)]
    table = tmp_path / "texts.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text(json.dumps(CharTokenizer("abc 0123").to_dict()))  # no '4', '5', '6'
    dm = TextClassificationDataModule(path=str(table), tokenizer_path=str(tokenizer), block_size=8)
    with pytest.raises(DataError) as err:
        dm.setup("fit")
    assert re.fullmatch(
        rf"the (train|val|test) texts of {re.escape(str(table))} have [123] character\(s\) that the char tokenizer "
        rf"of data.tokenizer_path {re.escape(str(tokenizer))} has no token for \('[456]'.*\): a char tokenizer reads "
        r"only the characters of the text it was made from\. Use data.tokenizer byte or bpe, which read any text, "
        r"or texts written with its characters",
        str(err.value),
    ), str(err.value)


def test_a_classifier_from_a_char_model_that_cannot_read_the_text_gets_no_advice_that_cannot_work(
    tmp_path: Path,
) -> None:
    from lightning_models.finetune import check_pretrained_tokenizer

    ckpt = tmp_path / "lm.ckpt"
    torch.save({"state_dict": {}, "tokenizer": CharTokenizer("abc ").to_dict()}, ckpt)
    with pytest.raises(DataError) as err:
        check_pretrained_tokenizer(str(ckpt), CharTokenizer(" abcxy"))
    assert str(err.value) == (
        f"model.pretrained '{ckpt}' reads a char tokenizer of 4 characters, and this run's text has 2 character(s) it "
        "has no token for ('x', 'y'), so not even --data.tokenizer_path can make the model read it: use text written "
        "with the model's characters, or a model trained with data.tokenizer byte or bpe, which read any text"
    )
    with pytest.raises(DataError, match=f"pass --data.tokenizer_path {re.escape(str(ckpt))} to tokenize with"):
        check_pretrained_tokenizer(str(ckpt), CharTokenizer(" ab"))  # fewer characters: the model's tokenizer reads it
    torch.save({"state_dict": {}, "tokenizer": {"kind": "char", "chars": "aab"}}, ckpt)  # damaged: repeated 'a'
    with pytest.raises(DataError, match=f"^model.pretrained '{re.escape(str(ckpt))}' holds a malformed char tokenizer"):
        check_pretrained_tokenizer(str(ckpt), CharTokenizer(" ab"))
