"""Fine-tuning Hugging Face encoders end to end: a model folder (or ``hf:ORG/NAME`` from the Hub's cache) as
``--model.pretrained``, its own WordPiece tokenizer, SST-2 in GLUE's layout, logits equal to transformers'
``...ForSequenceClassification``, length-bucketed batches, the export back to the Hugging Face layout, prediction
from the checkpoint and from ONNX, and the race against a plain transformers loop.

Every model here is a tiny random one that transformers itself creates and saves into a temporary folder, with a
tokenizer written by the ``tokenizers`` library in the format the Hub serves; nothing is downloaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, run_launcher
from fakedata import WORDPIECE, write_sst2, write_wordpiece_tokenizer
from test_hf_encoders import TINY as ENCODER_TINY

from datamodules.base import BatchLoader, Split
from datamodules.text_classification import PAD_ID, TextClassificationDataModule, encode_texts
from datamodules.tokenizer import BPETokenizer, PretrainedTokenizer, read_tokenizer, tokenizer_from_dict
from fileio.errors import DataError
from lightning_models import SequenceClassifier
from lightning_models.finetune import load_pretrained
from lightning_models.schedules import warmup_linear

transformers = pytest.importorskip("transformers")

#: test_hf_encoders' tiny BERT with room for 40 positions (the recipe's texts, special tokens included).
TINY = {
    **{k: v for k, v in ENCODER_TINY.items() if k not in ("vocab_size", "type_vocab_size")},
    "max_position_embeddings": 40,
}
#: A run of the SST-2 recipe kept to a few small batches.
QUICK = {
    "trainer.max_steps": 6,
    "trainer.val_check_interval": 3,
    "trainer.limit_val_batches": 2,
    "trainer.num_sanity_val_steps": 0,
    "data.batch_size": 8,
    "data.eval_batch_size": 16,
    "data.block_size": 32,
    "dashboards.enabled": False,
}
SENTENCES = ["The film is great fun!", "a dull , tedious plot", "boring", "it was a very moving story and the cast"]


def save_model(folder: Path, model_type: str = "bert", head: bool = True) -> torch.nn.Module:
    """A random tiny ``model_type`` sequence classifier (or bare encoder) with the fake WordPiece tokenizer, saved
    as the Hub serves models: config.json, model.safetensors, tokenizer files."""
    torch.manual_seed(0)
    config_class = {"bert": transformers.BertConfig, "roberta": transformers.RobertaConfig}[model_type]
    config = config_class(vocab_size=len(WORDPIECE) + 2, num_labels=2, **TINY)
    cls = transformers.AutoModelForSequenceClassification if head else transformers.AutoModel
    model = cls.from_config(config).eval()
    with torch.no_grad():  # LayerNorms start at 1 and 0: random ones make a wrong mapping of them visible
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    write_wordpiece_tokenizer(folder)
    return model


@pytest.fixture(scope="module")
def minibert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("minibert")
    save_model(folder)
    return folder


@pytest.fixture(scope="module")
def sst2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sst2(tmp_path_factory.mktemp("glue"), n_train=96, n_dev=32)


def padded(ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded zerotune input (``-1`` padding) and transformers' attention mask."""
    width = max(map(len, ids))
    x = torch.full((len(ids), width), PAD_ID, dtype=torch.long)
    for i, row in enumerate(ids):
        x[i, : len(row)] = torch.tensor(row)
    return x, (x >= 0).long()


# -- the tokenizer ---------------------------------------------------------------------------------------------------
def test_a_model_folders_tokenizer_is_the_one_transformers_uses(minibert: Path) -> None:
    ours = read_tokenizer(minibert)
    theirs = transformers.AutoTokenizer.from_pretrained(minibert)
    assert isinstance(ours, PretrainedTokenizer)
    assert ours.special_ids == {"cls_token": 2, "sep_token": 3, "pad_token": 0, "mask_token": 4, "unk_token": 1}
    for max_length in (None, 4):
        want = theirs(SENTENCES, truncation=max_length is not None, max_length=max_length)["input_ids"]
        assert [list(ids) for ids in ours.encode_batch(SENTENCES, max_length)] == want
    # Truncation keeps the closing [SEP]; the file's own fixed padding is not applied.
    assert [list(ids)[-1] for ids in ours.encode_batch(SENTENCES, 4)] == [3, 3, 3, 3]
    assert tokenizer_from_dict(json.loads(json.dumps(ours.to_dict()))) == ours


def test_a_byte_level_bpe_without_special_tokens_stays_a_bpe_tokenizer() -> None:
    trained = BPETokenizer.train(["some text to learn merges from"] * 3, 300)
    assert type(tokenizer_from_dict(json.loads(trained.spec))) is BPETokenizer


# -- the model -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_the_classifier_computes_what_transformers_computes(tmp_path: Path, model_type: str) -> None:
    reference = save_model(tmp_path, model_type)
    model = SequenceClassifier(vocab_size=len(WORDPIECE), block_size=16, pooling="pooler", pretrained=str(tmp_path),
                               num_classes=2).eval()  # fmt: skip
    report = load_pretrained(model, tmp_path, renames=model.pretrained_key_map)
    assert not report.missing and not report.mismatched, report
    assert model.hparams.hf_config["model_type"] == model_type and model.backbone.h[0].norm_first is False
    x, mask = padded([[2, 7, 21, 3], [2, 9, 3], [2, 5, 6, 7, 8, 21, 22, 3]])
    with torch.no_grad():
        got = model(x)
        # RoBERTa pads with its padding id (1): its positions are counted past it.
        want = reference(input_ids=x.clamp(min=0) if model_type == "bert" else x.where(x >= 0, 1), attention_mask=mask)
        alone = model(x[1:2, :3])
    assert (got - want.logits).abs().max().item() < 1e-5
    assert (alone - got[1:2]).abs().max().item() < 1e-5


def test_the_body_is_built_from_config_json_not_the_stated_sizes(minibert: Path) -> None:
    model = SequenceClassifier(len(WORDPIECE), 16, n_layer=9, n_embd=64, n_head=8, pretrained=str(minibert))
    assert len(model.backbone.h) == 2 and model.backbone.wte.weight.shape[1] == 32
    # The checkpoint keeps the config, so a trained model is rebuilt without the folder.
    again = SequenceClassifier(len(WORDPIECE), 16, hf_config=model.hparams.hf_config, pretrained="/gone")
    with pytest.raises(ValueError, match="data.block_size 64 is longer than the 40 positions"):
        SequenceClassifier(len(WORDPIECE), 64, pretrained=str(minibert))
    assert again.state_dict().keys() == model.state_dict().keys()


def test_an_unsupported_model_type_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(DataError, match="model_type 't5'.*supported: bert, roberta, distilbert"):
        SequenceClassifier(pretrained=str(tmp_path))


# -- the Hub ---------------------------------------------------------------------------------------------------------
def test_a_hub_name_is_read_from_the_hub_cache(minibert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    from fileio.hub import resolve_source

    # The cache as snapshot_download leaves it: refs/main names the snapshot folder holding the files.
    repo = tmp_path / "models--acme--minibert"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    for file in minibert.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert resolve_source("hf:acme/minibert") == snapshot
    model = SequenceClassifier(len(WORDPIECE), 16, pretrained="hf:acme/minibert", pooling="pooler")
    assert load_pretrained(model, "hf:acme/minibert").missing == []
    assert read_tokenizer("hf:acme/minibert") == read_tokenizer(minibert)
    with pytest.raises(DataError, match="'hf:acme/other' could not be fetched .* pass the model's local folder"):
        resolve_source("hf:acme/other")
    with pytest.raises(DataError, match="is not a Hub name: write hf:ORG/NAME"):
        resolve_source("hf:minibert")


# -- the data --------------------------------------------------------------------------------------------------------
def test_a_glue_folder_is_read_with_dev_as_validation(sst2: Path, minibert: Path) -> None:
    dm = TextClassificationDataModule(data_dir=str(sst2), text_column="sentence", tokenizer_path=str(minibert),
                                      block_size=12, batch_size=8)  # fmt: skip
    texts = dm.texts()
    assert len(texts["train"][0]) == 96 and len(texts["val"][0]) == 32
    assert texts["test"] == texts["val"]  # GLUE's test file has no labels: the test stage measures dev again
    assert dm.class_names == ["0", "1"] and dm.vocab_size == len(WORDPIECE)
    dm.setup()
    split = dm.splits["train"]
    assert split.lengths is not None and int(split.lengths.max()) <= 12
    first = split.x[0, : int(split.lengths[0])].tolist()
    assert first[0] == 2 and first[-1] == 3  # [CLS] ... [SEP]
    with pytest.raises(DataError, match="needs a train and a dev"):
        TextClassificationDataModule(data_dir=str(minibert))
    with pytest.raises(DataError, match="is not a folder"):
        TextClassificationDataModule(data_dir=str(sst2 / "missing"))


def test_length_bucketing_sees_every_text_once_with_little_padding() -> None:
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(2, 60, (1000,), generator=generator)
    x = torch.arange(60).expand(1000, 60).clone()
    x[x >= lengths[:, None]] = PAD_ID
    split = Split(x, torch.arange(1000), lengths)

    def epoch(bucket_batches: int, number: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = BatchLoader(split, 32, shuffle=True, seed=3, bucket_batches=bucket_batches, epoch_fn=lambda: number)
        return list(loader)

    def padding(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        return sum(int((b == PAD_ID).sum()) for b, _ in batches) / sum(b.numel() for b, _ in batches)

    bucketed, plain = epoch(50), epoch(0)
    for batches in (bucketed, plain):
        assert sorted(torch.cat([y for _, y in batches]).tolist()) == list(range(1000))
        # Each batch is cut to its longest text: its last column holds a real token.
        assert all(int(lengths[y].max()) == b.shape[1] for b, y in batches)
    assert padding(bucketed) < 0.1 < 0.3 < padding(plain)
    assert [y.tolist() for _, y in epoch(50)] == [y.tolist() for _, y in bucketed]  # drawn from the seed
    assert [y.tolist() for _, y in epoch(50, 1)] != [y.tolist() for _, y in bucketed]


def test_the_linear_schedule_warms_up_then_decays_to_zero() -> None:
    factor = warmup_linear(10, 110)
    assert [factor(s) for s in (0, 5, 10, 60, 110, 200)] == [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]


# -- the recipe, end to end ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finetuned(minibert: Path, sst2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from experiments.api import launch

    runs = tmp_path_factory.mktemp("runs")
    result = launch("sst2_minilm_quick", {**QUICK, "model.pretrained": str(minibert), "data.data_dir": str(sst2)},
                    runs_dir=runs)  # fmt: skip
    assert result.report.onnx is not None and result.report.onnx.ok
    return result.run_dir


def test_the_recipe_fine_tunes_the_folder_with_its_tokenizer(finetuned: Path, minibert: Path) -> None:
    saved = yaml.safe_load((finetuned / "config.yaml").read_text())
    assert saved["data"]["init_args"]["tokenizer_path"] == str(minibert)  # the model brought its tokenizer
    status = json.loads((finetuned / "status.json").read_text())
    assert status["state"] == "completed"
    ckpt = torch.load(next((finetuned / "checkpoints").glob("best-*.ckpt")), weights_only=True)
    assert ckpt["hyper_parameters"]["hf_config"]["model_type"] == "bert"
    assert ckpt["tokenizer"]["kind"] == "pretrained"
    assert json.loads((finetuned / "tokenizer.json").read_text()) == ckpt["tokenizer"]  # in the run folder too


def test_the_export_loads_in_transformers_with_the_same_logits(finetuned: Path, minibert: Path, tmp_path: Path) -> None:
    from experiments.api import export_hf
    from experiments.inference.loading import load_trained
    from experiments.rundir.console import UsageError

    folder = export_hf(finetuned, tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"] and config["id2label"] == {"0": "0", "1": "1"}
    trained = load_trained(finetuned)
    x = encode_texts(trained.tokenizer, SENTENCES, 16)
    theirs_model = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    batch = transformers.AutoTokenizer.from_pretrained(folder)(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = trained.model(x[:, : batch["input_ids"].shape[1]])
        theirs = theirs_model(**batch).logits
    assert (batch["input_ids"] == x[:, : batch["input_ids"].shape[1]].clamp(min=0)).all()
    assert (ours - theirs).abs().max().item() < 1e-5
    with pytest.raises(UsageError, match="exists; pass --force"):
        export_hf(finetuned, folder)
    assert export_hf(finetuned, folder, force=True) == folder
    assert sorted(p.name for p in folder.parent.iterdir()) == ["hf"]  # nothing left beside it
    # A model folder it did not write, the run's own base model among them, is never replaced, even with --force.
    before = {p.name: p.read_bytes() for p in minibert.iterdir()}
    with pytest.raises(UsageError, match="exists; pass a new folder with --out"):
        export_hf(finetuned, minibert, force=True)
    assert {p.name: p.read_bytes() for p in minibert.iterdir()} == before


def test_predict_on_sentences_from_both_backends(finetuned: Path, tmp_path: Path) -> None:
    lines = tmp_path / "sentences.txt"
    lines.write_text("\n".join(SENTENCES) + "\n")
    outputs = []
    for target in (finetuned, finetuned / "model.onnx"):
        command = [sys.executable, "-m", "experiments", "predict", str(target), "-", "--output", "-"]
        done = subprocess.run(command, input=lines.read_text(), capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert done.returncode == 0, done.stderr
        rows = [line.split(",") for line in done.stdout.strip().splitlines()]
        assert rows[0] == ["id", "label", "probability"] and len(rows) == 1 + len(SENTENCES)
        assert all(r[1] in ("0", "1") and 0.5 <= float(r[2]) <= 1 for r in rows[1:])
        outputs.append(rows)
    # The same labels and probabilities from the checkpoint and from ONNX.
    assert [r[1] for r in outputs[0]] == [r[1] for r in outputs[1]]
    assert all(abs(float(a[2]) - float(b[2])) < 1e-4 for a, b in zip(outputs[0][1:], outputs[1][1:], strict=True))


def test_a_run_not_from_a_hugging_face_model_does_not_export(tmp_path: Path, sst2: Path) -> None:
    from experiments.api import export_hf, launch
    from experiments.rundir.console import UsageError

    settings = {**QUICK, "data.data_dir": str(sst2), "model.n_layer": 1, "model.n_embd": 16, "model.n_head": 2,
                "data.bpe_vocab_size": 300, "onnx.enabled": False}  # fmt: skip
    run = launch("sst2_minilm_quick", settings, runs_dir=tmp_path).run_dir
    with pytest.raises(UsageError, match="was not fine-tuned from a Hugging Face model"):
        export_hf(run)


# -- the race --------------------------------------------------------------------------------------------------------
def test_the_race_runs_both_sides_and_writes_the_table(minibert: Path, sst2: Path, tmp_path: Path) -> None:
    from experiments.bench_hf import main

    args = ["--model", str(minibert), "--data_dir", str(sst2), "--steps", "4", "--eval_every", "2",
            "--batch_size", "8", "--max_length", "32", "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    table = (tmp_path / "race.md").read_text()
    assert "| transformers loop | 4 |" in table and "| zerotune | 4 |" in table
    points = (tmp_path / "race.csv").read_text().splitlines()
    assert points[0] == "side,step,seconds,dev_acc" and len(points) == 1 + 2 * 2
    assert (tmp_path / "race.png").stat().st_size > 1000


# -- mistakes: one line each, exit 2, no run folder left behind ------------------------------------------------------
def test_the_mistakes_of_fine_tuning_a_hub_model_are_one_line_each(
    minibert: Path, sst2: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    from experiments.export_hf import main as export_main

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    t5 = tmp_path / "t5"
    t5.mkdir()
    (t5 / "config.json").write_text(json.dumps({"model_type": "t5"}))
    from tokenizers.implementations import BertWordPieceTokenizer

    other = tmp_path / "other.json"  # as many tokens as the model's, in another order
    BertWordPieceTokenizer({w: i for i, w in enumerate(reversed(WORDPIECE))}).save(str(other))
    (tmp_path / "bpe.json").write_text(BPETokenizer.train(["another tokenizer's text"] * 3, 300).spec)
    runs = tmp_path / "runs"
    base = ["sst2_minilm_quick", "--runs_dir", str(runs), "--data.data_dir", str(sst2)]
    cases = {
        "model_type 't5', which zerotune cannot convert; supported: bert, roberta, distilbert": ["--model.pretrained",
                                                                                                  str(t5)],
        "'hf:acme/absent' could not be fetched from the Hugging Face Hub": ["--model.pretrained", "hf:acme/absent"],
        "data.block_size 64 is longer than the 40 positions": ["--model.pretrained", str(minibert)],
        "the data's tokenizer has 274 tokens, the Hugging Face model 39": [
            "--model.pretrained", str(minibert), "--data.tokenizer_path", str(tmp_path / "bpe.json"),
            "--data.block_size", "32"],
        "comes with its own tokenizer.json, and this run's data uses another": [
            "--model.pretrained", str(minibert), "--data.tokenizer_path", str(other), "--data.block_size", "32"],
        "needs a train and a dev (or validation) file": ["--data.data_dir", str(minibert)],
    }  # fmt: skip
    for message, args in cases.items():
        code, _, err = run_launcher([*base, *args], capsys)
        assert code == 2 and message in err, (message, err[-800:])
        assert err.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in err
    assert not any(runs.rglob("config.yaml"))
    assert export_main([str(tmp_path / "nowhere")]) == 2
    assert "error: " in capsys.readouterr().err


def test_the_last_layers_or_lora_train_on_a_hugging_face_body(minibert: Path) -> None:
    def trains(**method: object) -> set[str]:
        model = SequenceClassifier(len(WORDPIECE), 16, pooling="pooler", pretrained=str(minibert), **method)
        return {n.split(".weight")[0].split(".bias")[0] for n, p in model.named_parameters() if p.requires_grad}

    # The embeddings (tokens, positions, token types, their LayerNorm) and the first block are frozen.
    last = trains(finetune="partial", freeze_blocks=1)
    assert not any(n.startswith(("backbone.w", "backbone.ln_e", "backbone.h.0.")) for n in last)
    assert {"backbone.h.1.attn.qkv", "pooler", "head"} <= last
    lora = trains(finetune="lora")
    assert {n for n in lora if "lora_" not in n} == {"pooler", "head"} and any("attn.qkv" in n for n in lora)


def test_an_adapters_only_lora_run_reads_its_base_from_the_model_folder(
    minibert: Path, sst2: Path, tmp_path: Path
) -> None:
    from experiments.api import export_hf, launch
    from experiments.inference.loading import load_trained

    settings = {**QUICK, "model.pretrained": str(minibert), "data.data_dir": str(sst2), "model.finetune": "lora"}
    result = launch("sst2_minilm_quick", settings, runs_dir=tmp_path)
    assert result.report.onnx is not None and result.report.onnx.ok
    ckpt = torch.load(result.best_checkpoint, weights_only=True)
    assert ckpt["lora"] == {"adapters_only": True, "base": str(minibert)}
    assert not any(k.startswith("backbone.wte") for k in ckpt["state_dict"])  # the base stays in the folder
    trained = load_trained(result.run_dir)
    x = encode_texts(trained.tokenizer, SENTENCES, 16)
    folder = export_hf(result.run_dir)  # adapters merged
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        ours = trained.model(x)
        want = theirs(input_ids=x.clamp(min=0), attention_mask=(x >= 0).long()).logits
    assert (ours - want).abs().max().item() < 1e-5


@pytest.mark.parametrize("fused", [None, False])
def test_adam_takes_the_fused_kernel_by_default(minibert: Path, fused: bool | None) -> None:
    model = SequenceClassifier(len(WORDPIECE), 16, pretrained=str(minibert), optimizer="adamw", fused=fused)
    optimizer = model.build_optimizer()
    assert isinstance(optimizer, torch.optim.AdamW) and bool(optimizer.defaults["fused"]) is (fused is None)
