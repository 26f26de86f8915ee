"""Hugging Face BERT checkpoints on zerotune's shared Transformer blocks: the same last hidden states as
``transformers``' own ``BertModel`` (with padding and token types), from safetensors and from ``pytorch_model.bin``,
and one clear error for a model type or shape that does not fit."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from fileio.checkpoints import load_state_dict_file
from fileio.errors import DataError
from lightning_models.hf_encoders import backbone_options, from_hf, load_hf_encoder, to_hf
from lightning_models.transformer import TransformerBackbone

transformers = pytest.importorskip("transformers")

TINY = {
    "vocab_size": 100,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 24,
    "type_vocab_size": 2,
    # Weights ten times BERT's 0.02: large enough pre-activations that the tanh GELU or another LayerNorm epsilon
    # would miss 1e-5 (by about 7e-4 and 2e-4).
    "initializer_range": 0.2,
}


def save_tiny(folder: Path, cls: str = "BertModel", bin_file: bool = False, **config: object) -> torch.nn.Module:
    """A random ``cls`` of :data:`TINY` shape saved into ``folder`` (as ``pytorch_model.bin`` if ``bin_file``)."""
    torch.manual_seed(0)
    model = getattr(transformers, cls)(transformers.BertConfig(**{**TINY, **config})).eval()
    with torch.no_grad():  # LayerNorms start at 1 and 0: random ones make a wrong mapping of them visible
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    if bin_file:
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    return model


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ids, attention mask (the second sentence padded after 5 tokens) and token types (two segments)."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, TINY["vocab_size"], (3, 9), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    ids[1, 5:] = 0
    types = torch.zeros_like(ids)
    types[:, 4:] = 1
    return ids, mask, types


def ours(backbone: TransformerBackbone, ids, mask=None, types=None) -> torch.Tensor:
    with torch.no_grad():
        return backbone(ids, attn_mask=None if mask is None else mask.bool()[:, None, None, :], token_type_ids=types)


def theirs(model: torch.nn.Module, ids, mask=None, types=None) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state


@pytest.mark.parametrize("bin_file", [False, True], ids=["safetensors", "pytorch_model.bin"])
def test_a_bert_checkpoint_computes_what_transformers_computes(tmp_path: Path, bin_file: bool) -> None:
    reference = save_tiny(tmp_path, bin_file=bin_file)
    backbone = load_hf_encoder(tmp_path)
    assert not backbone.training and backbone.ln_e is not None and not backbone.h[0].norm_first
    ids, mask, types = batch()
    for args in [(ids,), (ids, mask), (ids, mask, types), (ids, None, types)]:
        got, want = ours(backbone, *args), theirs(reference, *args)
        assert got.shape == want.shape == (3, 9, TINY["hidden_size"])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (ours(backbone, ids) - ours(backbone, ids, None, types)).abs().max() > 1e-3  # token types count


def test_padding_never_changes_a_sentence(tmp_path: Path) -> None:
    save_tiny(tmp_path)
    backbone = load_hf_encoder(tmp_path)
    ids, mask, types = batch()
    padded = ours(backbone, ids, mask, types)[1, :5]
    alone = ours(backbone, ids[1:2, :5], None, types[1:2, :5])[0]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=0)
    unmasked = ours(backbone, ids, None, types)[1, :5]
    assert (unmasked - alone).abs().max() > 1e-3  # without the mask the padding would leak in


@pytest.mark.parametrize("cls", ["BertForSequenceClassification", "BertForMaskedLM"])
def test_the_encoder_of_a_model_with_a_task_head(tmp_path: Path, cls: str) -> None:
    reference = save_tiny(tmp_path, cls)
    backbone = load_hf_encoder(tmp_path)
    ids, mask, types = batch()
    want = theirs(reference.bert, ids, mask, types)
    torch.testing.assert_close(ours(backbone, ids, mask, types), want, atol=1e-5, rtol=0)


def test_original_bert_layer_norm_names(tmp_path: Path) -> None:
    reference = save_tiny(tmp_path, bin_file=True)
    state = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
             for k, v in reference.state_dict().items()}  # fmt: skip
    assert "embeddings.LayerNorm.gamma" in state
    torch.save(state, tmp_path / "pytorch_model.bin")
    ids, mask, types = batch()
    got = ours(load_hf_encoder(tmp_path), ids, mask, types)
    torch.testing.assert_close(got, theirs(reference, ids, mask, types), atol=1e-5, rtol=0)


def test_to_hf_gives_back_the_file(tmp_path: Path) -> None:
    reference = save_tiny(tmp_path)
    backbone = load_hf_encoder(tmp_path)
    back = to_hf(backbone.state_dict())
    want = {k: v for k, v in reference.state_dict().items() if not k.startswith(("pooler.", "embeddings.position_ids"))}
    assert sorted(back) == sorted(want)
    for key, tensor in want.items():
        assert torch.equal(back[key], tensor), key


def test_defaults_are_unchanged_by_the_options() -> None:
    torch.manual_seed(0)
    backbone = TransformerBackbone(50, 8, 2, 2, 16)
    assert [k for k in backbone.state_dict() if not k.startswith("h.")] == [
        "wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"]  # fmt: skip
    block = backbone.h[0]
    assert block.norm_first and block.mlp.act.approximate == "tanh" and block.ln_1.eps == 1e-5
    assert block.mlp.fc.out_features == 64


def test_an_unsupported_model_type_is_named(tmp_path: Path) -> None:
    save_tiny(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "t5"}))
    with pytest.raises(
        DataError, match=r"model_type 't5', which zerotune cannot convert; supported: bert, roberta, distilbert$"
    ):
        load_hf_encoder(tmp_path)


def test_weights_of_another_shape_name_the_keys_and_shapes(tmp_path: Path) -> None:
    save_tiny(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 48, "num_hidden_layers": 3}))
    with pytest.raises(DataError) as err:
        load_hf_encoder(tmp_path)
    message = str(err.value)
    assert "model.safetensors' does not fit TransformerBackbone" in message
    assert "encoder.layer.0.intermediate.dense.weight file [64, 32] vs model [48, 32]" in message
    assert "missing in file: encoder.layer.2." in message


def test_a_folder_without_weights_or_config(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="config.json' not found"):
        load_hf_encoder(tmp_path)
    save_tiny(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(DataError, match="holds no weights: expected model.safetensors or pytorch_model.bin"):
        load_hf_encoder(tmp_path)


def test_bert_weights_do_not_fit_a_gpt_shaped_backbone(tmp_path: Path) -> None:
    reference = save_tiny(tmp_path)
    gpt_shaped = TransformerBackbone(100, 24, 2, 4, 32, causal=False)
    with pytest.raises(DataError, match="not in model: embeddings.token_type_embeddings.weight"):
        from_hf(reference.state_dict(), gpt_shaped, "model.safetensors")


def test_zerotune_never_imports_transformers() -> None:
    # Lightning itself may import it when installed, so the check reads zerotune's own imports. The one exception is
    # the race against a plain transformers loop (bench_hf), whose side (a) is that loop: it imports transformers
    # inside its functions, and the command refuses to start without it.
    race = {"experiments/bench_hf.py", "experiments/benchmarks/hf_race.py"}
    importers = []
    for package in ("fileio", "lightning_models", "datamodules", "experiments"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                if any(n.split(".")[0] == "transformers" for n in names) and node.col_offset == 0:
                    importers.append(str(path.relative_to(ROOT)))
                elif any(n.split(".")[0] == "transformers" for n in names):
                    importers += [] if str(path.relative_to(ROOT)) in race else [str(path.relative_to(ROOT))]
    assert not importers


#: Tiny RoBERTa and DistilBERT: BERT's sizes under each family's config keys (pad_token_id 1 is RoBERTa's own).
TINY_ROBERTA = {**TINY, "type_vocab_size": 1, "pad_token_id": 1, "max_position_embeddings": 24 + 2}
TINY_DISTILBERT = {
    "vocab_size": 100,
    "dim": 32,
    "n_layers": 2,
    "n_heads": 4,
    "hidden_dim": 64,
    "max_position_embeddings": 24,
    "initializer_range": 0.2,
}
FAMILIES = {
    "roberta": ("RobertaConfig", TINY_ROBERTA, "RobertaModel", "RobertaForSequenceClassification", "roberta"),
    "distilbert": ("DistilBertConfig", TINY_DISTILBERT, "DistilBertModel", "DistilBertForSequenceClassification",
                   "distilbert"),
}  # fmt: skip


def save_family(folder: Path, model_type: str, head: bool = False, **config: object) -> torch.nn.Module:
    """A random tiny ``model_type`` (its encoder, or with a classification head) saved into ``folder``; returns the
    encoder."""
    config_cls, tiny, cls, head_cls, attribute = FAMILIES[model_type]
    torch.manual_seed(0)
    model = getattr(transformers, head_cls if head else cls)(getattr(transformers, config_cls)(**{**tiny, **config}))
    with torch.no_grad():  # random LayerNorms, so a wrong mapping of them shows
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    return (getattr(model, attribute) if head else model).eval()


def right_padded() -> tuple[torch.Tensor, torch.Tensor]:
    """Ids (never the padding id 1 among the real tokens) and attention mask, the second sentence right-padded with
    id 1 after 5 tokens (as RoBERTa's tokenizer pads)."""
    ids = torch.randint(2, TINY["vocab_size"], (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    ids[1, 5:] = 1
    return ids, mask


@pytest.mark.parametrize("head", [False, True], ids=["encoder", "sequence-classification"])
@pytest.mark.parametrize("model_type", ["roberta", "distilbert"])
def test_roberta_and_distilbert_compute_what_transformers_computes(tmp_path: Path, model_type: str, head: bool) -> None:
    reference = save_family(tmp_path, model_type, head)
    backbone = load_hf_encoder(tmp_path)
    assert backbone.h[0].ln_1.eps == 1e-12 and backbone.h[0].mlp.act.approximate == "none"
    ids, mask = right_padded()
    with torch.no_grad():
        unpadded = reference(input_ids=ids[[0, 2]]).last_hidden_state  # no padding id among them
        padded = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(ours(backbone, ids[[0, 2]]), unpadded, atol=1e-5, rtol=0)
    # Padded positions are nobody's output (RoBERTa gives them the padding id's position), the real ones must agree.
    real = mask.bool()
    got = ours(backbone, ids, mask)
    torch.testing.assert_close(got[real], padded[real], atol=1e-5, rtol=0)
    alone = ours(backbone, ids[1:2, :5])[0]
    torch.testing.assert_close(got[1, :5], alone, atol=1e-5, rtol=0)
    assert (ours(backbone, ids)[1, :5] - alone).abs().max() > 1e-3  # without the mask the padding would leak in


def test_roberta_positions_start_after_the_padding_id(tmp_path: Path) -> None:
    save_family(tmp_path, "roberta", pad_token_id=3)
    backbone = load_hf_encoder(tmp_path)
    assert backbone.position_offset == 4 and backbone.wpe.num_embeddings == 26
    shifted = TransformerBackbone(**{**backbone_options(json.loads((tmp_path / "config.json").read_text())),
                                     "position_offset": 0})  # fmt: skip
    shifted.load_state_dict(backbone.state_dict())
    ids = right_padded()[0]
    assert (ours(shifted, ids) - ours(backbone, ids)).abs().max() > 1e-3  # the offset is what makes it agree


@pytest.mark.parametrize("model_type", ["roberta", "distilbert"])
def test_to_hf_gives_back_the_file_of_each_family(tmp_path: Path, model_type: str) -> None:
    reference = save_family(tmp_path, model_type)
    back = to_hf(load_hf_encoder(tmp_path).state_dict(), model_type=model_type)
    want = {k: v for k, v in reference.state_dict().items() if not k.startswith("pooler.")}
    assert sorted(back) == sorted(want)
    for key, tensor in want.items():
        assert torch.equal(back[key], tensor), key


def test_sinusoidal_distilbert_positions_are_refused(tmp_path: Path) -> None:
    save_family(tmp_path, "distilbert")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["sinusoidal_pos_embds"] is False
    (tmp_path / "config.json").write_text(json.dumps({**config, "sinusoidal_pos_embds": True}))
    with pytest.raises(DataError, match=r"has sinusoidal_pos_embds true; zerotune's blocks have learned positions"):
        load_hf_encoder(tmp_path)


def test_distilbert_weights_do_not_fit_a_bert_config(tmp_path: Path) -> None:
    save_family(tmp_path, "distilbert")
    bert = TransformerBackbone(**backbone_options({"model_type": "bert", **TINY}))
    state = load_state_dict_file(tmp_path / "model.safetensors", trust=False)
    with pytest.raises(DataError, match="not in model: transformer.layer.0.attention.k_lin.bias"):
        from_hf(state, bert, "model.safetensors")


#: The real pre-trained encoder beside the project, where there is one (the suite never needs it).
MINILM = ROOT.parent / "shared" / "models" / "all-MiniLM-L6-v2"


@pytest.mark.skipif(not (MINILM / "model.safetensors").is_file(), reason="no ../shared/models/all-MiniLM-L6-v2")
def test_the_real_minilm_computes_what_transformers_computes() -> None:
    """all-MiniLM-L6-v2 (22.7M parameters) on four sentences of different lengths, padded by its own tokenizer."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(MINILM / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    sentences = [
        "A man is playing a guitar.",
        "The quick brown fox jumps over the lazy dog near the river bank.",
        "Hello!",
        "Transformers encode sentences into vectors; zerotune loads them.",
    ]
    encoded = tokenizer.encode_batch(sentences)
    ids, mask, types = (torch.tensor([getattr(e, k) for e in encoded]) for k in ("ids", "attention_mask", "type_ids"))
    reference = transformers.BertModel.from_pretrained(MINILM, add_pooling_layer=False).eval()
    ours = load_hf_encoder(MINILM).eval()
    with torch.no_grad():
        want = reference(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        got = ours(ids, attn_mask=mask.bool()[:, None, None, :], token_type_ids=types)  # (4, T, 384)
        n = int(mask[2].sum())
        alone = ours(ids[2:3, :n], token_type_ids=types[2:3, :n])
    real = mask.bool()
    assert got.shape == want.shape and int(real.sum()) > 40
    assert (got - want)[real].abs().max().item() < 1e-5
    assert (alone[0] - got[2, :n]).abs().max().item() < 1e-5
