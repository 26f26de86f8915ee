"""Text data: tokenizers round-trip and serialize, corpora split by document, the token cache follows the corpus,
training windows resume exactly, evaluation blocks cover a split once, and bad corpora are one clear error."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fakedata import CODE
from fakedata import write_code_corpus as write_corpus

from datamodules import TextDataModule
from datamodules.text import FixedBlocks, RandomWindows
from datamodules.tokenizer import (
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    StreamDecoder,
    Tokenizer,
    tokenizer_from_dict,
    train_tokenizer,
)
from fileio.errors import DataError

#: Text with characters of 1, 2, 3 and 4 UTF-8 bytes, tabs, carriage returns and code.
TRICKY = "héllo wörld — naïve café 你好 🙂\n\tdef f(x):\r\n    return {'a': x ** 2}  # ok\n"


@pytest.mark.parametrize("kind", ["byte", "char", "bpe"])
def test_tokenizers_round_trip_count_bytes_and_serialize(kind: str) -> None:
    tok = train_tokenizer(kind, [CODE * 3, TRICKY], vocab_size=300)
    ids = tok.encode(TRICKY)
    assert tok.decode(ids) == TRICKY
    table = tok.token_bytes()
    assert len(table) == tok.vocab_size
    assert sum(table[i] for i in ids) == len(TRICKY.encode("utf-8"))
    data = json.loads(json.dumps(tok.to_dict()))  # plain data: survives JSON and weights_only checkpoints
    again = tokenizer_from_dict(data)
    assert again == tok and again.fingerprint() == tok.fingerprint()
    assert again.decode(again.encode(TRICKY)) == TRICKY
    # Streaming one token at a time prints exactly the text, never half a character.
    stream = StreamDecoder(tok)
    pieces = [stream.push([i]) for i in ids] + [stream.flush()]
    assert "".join(pieces) == TRICKY and not any("\ufffd" in p for p in pieces)


def test_bpe_is_trained_to_the_requested_size_deterministically() -> None:
    a = BPETokenizer.train([CODE * 5], 300)
    b = BPETokenizer.train([CODE * 5], 300)
    assert a == b and a.vocab_size == 300
    assert len(a.encode(CODE)) < 0.6 * len(ByteTokenizer().encode(CODE))  # 44 merges already compress code
    assert a.decode(a.encode("unseen: 𝔘𝔫𝔦𝔠𝔬𝔡𝔢")) == "unseen: 𝔘𝔫𝔦𝔠𝔬𝔡𝔢"  # falls back to bytes


def test_char_tokenizer_names_an_unknown_character() -> None:
    tok = CharTokenizer.train(["abc"])
    with pytest.raises(ValueError, match="character 'z' is not in this char tokenizer's alphabet of 3"):
        tok.encode("abz")


def test_a_downloaded_tokenizers_json_loads_as_bpe(tmp_path: Path) -> None:
    tok = BPETokenizer.train([CODE], 280)
    path = tmp_path / "tokenizer.json"
    path.write_text(tok.spec)  # the tokenizers library's own format, as GPT-2's tokenizer.json
    dm = TextDataModule(path=str(write_corpus(tmp_path / "c")), tokenizer_path=str(path), data_dir=str(tmp_path))
    assert dm.vocab_size == 280 and dm.tokenizer == tok


def test_single_file_splits_by_position_like_nanogpt(tmp_path: Path) -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    (tmp_path / "input.txt").write_text(text)
    dm = TextDataModule(
        path=str(tmp_path / "input.txt"), tokenizer="char", test_fraction=0.0, block_size=8, data_dir=str(tmp_path)
    )
    dm.setup()
    assert dm.vocab_size == 26
    assert dm.tokenizer.decode(dm.tokens["train"]) == text[:900]  # first int(0.9 n) characters train
    assert dm.tokenizer.decode(dm.tokens["val"]) == text[900:]
    assert "test" not in dm.tokens  # test_fraction 0: the test stage evaluates the validation split
    x, y = next(iter(dm.test_dataloader()))
    assert dm.tokenizer.decode(x[0]) == text[900:908]


def test_folder_splits_by_document_deterministically(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus", n_files=20)
    dm = TextDataModule(path=str(corpus), tokenizer="byte", data_dir=str(tmp_path), val_fraction=0.2, test_fraction=0.1)
    parts = dm.split_documents(dm.corpus())
    again = TextDataModule(path=str(corpus), data_dir=str(tmp_path), val_fraction=0.2, test_fraction=0.1)
    assert parts == again.split_documents(again.corpus())
    seen = [d for docs in parts.values() for d in docs]
    assert sorted(seen) == sorted(dm.corpus().documents) and len(set(seen)) == len(seen)  # each file in one split
    sizes = {d: (corpus / d).stat().st_size for d in seen}
    total = sum(sizes.values())
    assert 0.2 <= sum(sizes[d] for d in parts["val"]) / total < 0.3
    assert 0.1 <= sum(sizes[d] for d in parts["test"]) / total < 0.2
    other_seed = TextDataModule(path=str(corpus), data_dir=str(tmp_path), val_fraction=0.2, test_fraction=0.1, seed=5)
    assert other_seed.split_documents(other_seed.corpus()) != parts


def test_include_exclude_and_glob_choose_documents(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    (corpus / "notes.md").write_text("# notes\n")
    (corpus / ".hidden.py").write_text("x = 1\n")
    docs = TextDataModule(path=str(corpus), glob="**/*.py").corpus().documents
    assert "notes.md" not in docs and ".hidden.py" not in docs and "top_0.py" in docs and "pkg_1/mod_1.py" in docs
    only = TextDataModule(path=str(corpus), include=["pkg_1"]).corpus().documents
    assert only and all(d.startswith("pkg_1/") for d in only)
    without = TextDataModule(path=str(corpus), exclude=["pkg_1", "top_0"]).corpus().documents
    assert not any(d.startswith(("pkg_1/", "top_0")) for d in without)
    assert TextDataModule(path=str(corpus), glob="*.md").corpus().documents == ["notes.md"]


def test_standard_library_corpus_leaves_out_tests_and_the_held_out_package() -> None:
    docs = TextDataModule().corpus().documents
    assert len(docs) > 300 and "json/decoder.py" in docs and "os.py" in docs
    assert not any(part in ("test", "tests", "idle_test", "site-packages") for d in docs for part in d.split("/"))
    assert not any(d.startswith("email/") for d in docs)  # held out for fine-tuning
    held_out = TextDataModule(include=["email"], exclude=[]).corpus()
    assert held_out.documents and all(d.startswith("email/") for d in held_out.documents)
    assert held_out.name == f"stdlib-py{sys.version_info[0]}.{sys.version_info[1]}"


def test_token_cache_is_reused_and_rebuilt_when_the_corpus_changes(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    common = {"path": str(corpus), "tokenizer": "bpe", "bpe_vocab_size": 300, "data_dir": str(tmp_path)}
    dm = TextDataModule(**common)
    dm.setup()
    first = dm.cache_folder()
    assert first.parent == tmp_path / "tokens" and {p.name for p in first.iterdir()} >= {"train.bin", "meta.json"}
    assert dm.tokens["train"].dtype == np.uint16 and isinstance(dm.tokens["train"], np.memmap)
    stamp = (first / "train.bin").stat().st_mtime_ns

    same = TextDataModule(**common)
    same.setup()
    assert same.cache_folder() == first and (first / "train.bin").stat().st_mtime_ns == stamp  # reused
    assert same.tokenizer == dm.tokenizer

    doc = corpus / dm.split_documents(dm.corpus())["train"][0]
    doc.write_text(doc.read_text() + "\nextra = 'a changed corpus'\n")
    changed = TextDataModule(**common)
    changed.setup()
    assert changed.cache_folder() != first  # rebuilt from the changed files
    assert changed.split_info("train")["tokens"] > dm.split_info("train")["tokens"]
    other_tokenizer = TextDataModule(**{**common, "tokenizer": "byte"})
    assert other_tokenizer.cache_folder() not in (first, changed.cache_folder())


def test_bpe_is_trained_on_the_training_split_only(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus", n_files=10)
    dm = TextDataModule(path=str(corpus), tokenizer="bpe", bpe_vocab_size=400, data_dir=str(tmp_path))
    parts = dm.split_documents(dm.corpus())
    held_out = parts["val"][0]
    # A word that appears only in a held-out file, many times: the training split never shows it to the BPE.
    (corpus / held_out).write_text((corpus / held_out).read_text() + " zyzzyvaqux" * 200)
    dm = TextDataModule(path=str(corpus), tokenizer="bpe", bpe_vocab_size=400, data_dir=str(tmp_path))
    dm.setup()
    assert len(dm.tokenizer.encode(" zyzzyvaqux")) > 3


def test_random_windows_continue_exactly_after_a_resume() -> None:
    tokens = torch.arange(1000, dtype=torch.int32)
    loader = RandomWindows(tokens, block_size=8, batch_size=4, steps=10, seed=3)
    full = list(loader)
    assert len(full) == 10 and all(x.shape == (4, 8) and x.dtype == torch.long for x, _ in full)
    for x, y in full:
        assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y, x + 1)  # contiguous windows of the text
    it = iter(loader)
    for _ in range(4):
        next(it)
    state = loader.state_dict()
    resumed = RandomWindows(tokens, block_size=8, batch_size=4, steps=10, seed=3)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == 6 and all(torch.equal(a[0], b[0]) for a, b in zip(rest, full[4:], strict=True))


def test_random_windows_share_each_batch_among_processes_whatever_their_number() -> None:
    tokens = torch.arange(5000, dtype=torch.int32)
    # One process with batches of 8 windows trains on exactly what 2 processes of 4 or 4 processes of 2 do together.
    one = [x for x, _ in RandomWindows(tokens, block_size=8, batch_size=8, steps=10, seed=3)]
    for world in (2, 4):
        ranks = [
            [x for x, _ in RandomWindows(tokens, 8, 8 // world, 10, seed=3, rank=r, world_size=world)]
            for r in range(world)
        ]
        for step, whole in enumerate(one):
            shares = [ranks[r][step] for r in range(world)]
            assert all(share.shape == (8 // world, 8) for share in shares)
            together = torch.cat(shares)
            assert sorted(together[:, 0].tolist()) == sorted(whole[:, 0].tolist())  # the same windows ...
            assert len(set(together[:, 0].tolist())) == len(together)  # ... and no window twice


def test_fixed_blocks_score_every_token_once_and_shard_without_padding() -> None:
    tokens = torch.arange(103, dtype=torch.int32)
    targets = torch.cat([y.reshape(-1) for _, y in FixedBlocks(tokens, block_size=10, batch_size=3)])
    assert torch.equal(targets, torch.arange(1, 101))  # (103 - 1) // 10 = 10 blocks, each token once
    shards = [torch.cat([y.reshape(-1) for _, y in FixedBlocks(tokens, 10, 3, rank=r, world_size=3)]) for r in range(3)]
    assert sorted(torch.cat(shards).tolist()) == list(range(1, 101))
    spread = FixedBlocks(tokens, block_size=10, batch_size=8, limit=4)
    assert spread.starts.tolist() == [0, 30, 60, 90]  # evenly over the split, always the same


def test_memory_mapped_and_on_device_batches_are_the_same(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    kwargs = {"path": str(corpus), "tokenizer": "byte", "block_size": 16, "batch_size": 4, "data_dir": str(tmp_path)}
    on_device, mapped = TextDataModule(**kwargs), TextDataModule(**kwargs, on_device=False)
    for split in ("train_dataloader", "val_dataloader"):
        for (xa, ya), (xb, yb) in zip(getattr(on_device, split)(), getattr(mapped, split)(), strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_resume_with_another_tokenizer_re_tokenizes_with_the_checkpoints(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    dm = TextDataModule(path=str(corpus), tokenizer="bpe", bpe_vocab_size=300, data_dir=str(tmp_path))
    dm.setup()
    text = dm.tokenizer.decode(dm.tokens["train"])
    before = dm.cache_folder()
    saved: Tokenizer = BPETokenizer.train([CODE], 290)
    dm.load_state_dict({"tokenizer": saved.to_dict()})  # what Lightning does with a checkpoint's datamodule state
    assert dm.tokenizer == saved and dm.cache_folder() != before
    assert saved.decode(dm.tokens["train"]) == text  # the same text, in the checkpoint's tokens


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: (p / "empty").mkdir(), "no text files in"),
        (lambda p: (p / "empty.txt").write_text(""), "holds no text (its 1 file(s) are empty"),
        (
            lambda p: (p / "short.txt").write_text("x" * 100),
            "has 10 tokens, fewer than one block of block_size + 1 = 17",
        ),
    ],
    ids=["empty folder", "empty file", "shorter than a block"],
)
def test_bad_corpora_raise_a_data_error_naming_the_fix(tmp_path: Path, setup, message: str) -> None:
    setup(tmp_path)
    path = next(p for p in tmp_path.iterdir())
    dm = TextDataModule(path=str(path), tokenizer="byte", block_size=16, data_dir=str(tmp_path / "data"))
    with pytest.raises(DataError, match=re.escape(message)):
        dm.setup()


def test_missing_corpus_and_bad_settings_are_named() -> None:
    with pytest.raises(DataError, match="text corpus not found: 'nope' \\(data.path\\)"):
        TextDataModule(path="nope/").setup()
    with pytest.raises(ValueError, match="data.bpe_vocab_size must be above 256"):
        TextDataModule(bpe_vocab_size=100)
    with pytest.raises(ValueError, match="data.val_fraction"):
        TextDataModule(val_fraction=0.0)


def fit_tiny_lm(corpus: Path, data_dir: Path, bpe_vocab_size: int, ckpt_path: Path | None = None) -> tuple[Any, Any]:
    """Two training steps of a 1-layer GPT (a 300-row embedding) on ``corpus``; returns the model and the data."""
    import lightning as L

    from lightning_models import GPT

    dm = TextDataModule(path=str(corpus), tokenizer="bpe", bpe_vocab_size=bpe_vocab_size, block_size=8, batch_size=2,
                        val_blocks=1, data_dir=str(data_dir))  # fmt: skip
    model = GPT(vocab_size=300, block_size=8, n_layer=1, n_head=1, n_embd=8)
    trainer = L.Trainer(max_steps=2 if ckpt_path is None else 3, limit_val_batches=1, num_sanity_val_steps=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(data_dir), accelerator="cpu")  # fmt: skip
    trainer.fit(model, dm, ckpt_path=ckpt_path)
    trainer.save_checkpoint(data_dir / "last.ckpt")
    return model, dm


@pytest.fixture(scope="module")
def lm_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Tokenizer]:
    """A checkpoint of a language model trained with a 300-token BPE, and that tokenizer."""
    root = tmp_path_factory.mktemp("lm")
    _, dm = fit_tiny_lm(write_corpus(root / "corpus"), root, 300)
    return root / "last.ckpt", dm.tokenizer


def test_a_checkpoint_keeps_the_tokenizer_in_one_place(lm_checkpoint: tuple[Path, Tokenizer]) -> None:
    path, tokenizer = lm_checkpoint
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["tokenizer"] == tokenizer.to_dict()
    # The datamodule keeps no copy of its own: earlier versions also wrote checkpoint["TextDataModule"]["tokenizer"].
    assert "TextDataModule" not in checkpoint
    copies = [k for k, v in checkpoint.items() if isinstance(v, dict) and isinstance(v.get("tokenizer"), dict)]
    assert copies == ["tokenizer"]  # the BPE's own description sits inside the one entry


@pytest.mark.parametrize("layout", ["this version's", "earlier versions'"])
def test_resume_takes_the_checkpoints_tokenizer(
    lm_checkpoint: tuple[Path, Tokenizer], layout: str, tmp_path: Path
) -> None:
    path, saved = lm_checkpoint
    checkpoint = torch.load(path, weights_only=True)
    if layout == "earlier versions'":  # the datamodule's copy beside the model's, as earlier versions wrote it
        checkpoint["TextDataModule"] = {"tokenizer": saved.to_dict()}
    old = tmp_path / "resume.ckpt"
    torch.save(checkpoint, old)
    corpus = write_corpus(tmp_path / "corpus")
    # The data would fit another tokenizer (290 tokens); the resumed run reads it with the checkpoint's.
    model, dm = fit_tiny_lm(corpus, tmp_path, 290, ckpt_path=old)
    assert dm.tokenizer == saved and model.tokenizer == saved
    fresh = TextDataModule(path=str(corpus), tokenizer="bpe", bpe_vocab_size=290, block_size=8, data_dir=str(tmp_path))
    fresh.setup()
    assert fresh.tokenizer != saved
    assert saved.decode(dm.tokens["train"]) == fresh.tokenizer.decode(fresh.tokens["train"])  # the same text
