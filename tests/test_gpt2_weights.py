"""Hugging Face GPT-2 weights from a file: key mapping and Conv1D transposes, checked against GPT-2's own forward pass
on files the tests write with GPT-2's key names (random values), both file formats, the full 124M shapes, and the
clear error for weights of another shape."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import run_launcher
from fakedata import write_code_corpus
from pretrained_fixtures import flags
from safetensors.torch import save_file
from torch.nn import functional as F

from experiments.api import launch
from fileio.errors import DataError
from lightning_models import GPT, SequenceClassifier
from lightning_models.finetune import load_pretrained
from lightning_models.hf_gpt2 import from_hf, is_hf_gpt2, to_hf

SMALL = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 24, "vocab_size": 61}


def hf_gpt2_state(n_layer: int, n_head: int, n_embd: int, block_size: int, vocab_size: int, device="cpu") -> dict:
    """A ``GPT2Model`` state dict: GPT-2's key names, shapes and buffers, random values (``Conv1D``: ``(in, out)``)."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        if device == "meta":
            return torch.empty(*shape, device="meta")
        return torch.randn(*shape, generator=g) * 0.1

    c = n_embd
    state = {"wte.weight": rand(vocab_size, c), "wpe.weight": rand(block_size, c)}
    for i in range(n_layer):
        p = f"h.{i}."
        state.update({
            p + "ln_1.weight": 1 + rand(c), p + "ln_1.bias": rand(c),
            p + "attn.bias": torch.ones(1, 1, block_size, block_size, device=device).tril(),
            p + "attn.masked_bias": torch.tensor(-1e4, device=device),
            p + "attn.c_attn.weight": rand(c, 3 * c), p + "attn.c_attn.bias": rand(3 * c),
            p + "attn.c_proj.weight": rand(c, c), p + "attn.c_proj.bias": rand(c),
            p + "ln_2.weight": 1 + rand(c), p + "ln_2.bias": rand(c),
            p + "mlp.c_fc.weight": rand(c, 4 * c), p + "mlp.c_fc.bias": rand(4 * c),
            p + "mlp.c_proj.weight": rand(4 * c, c), p + "mlp.c_proj.bias": rand(c),
        })  # fmt: skip
    state.update({"ln_f.weight": 1 + rand(c), "ln_f.bias": rand(c)})
    return state


def hf_forward(state: dict, idx: torch.Tensor, n_head: int) -> torch.Tensor:
    """GPT-2's forward pass written from its own layout (``x @ W + b`` for ``Conv1D``), logits tied to ``wte``."""
    B, T = idx.shape
    C = state["wte.weight"].shape[1]
    x = state["wte.weight"][idx] + state["wpe.weight"][:T]
    n_layer = len({k.split(".")[1] for k in state if k.startswith("h.")})
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for i in range(n_layer):
        p = f"h.{i}."
        h = F.layer_norm(x, (C,), state[p + "ln_1.weight"], state[p + "ln_1.bias"], 1e-5)
        q, k, v = (h @ state[p + "attn.c_attn.weight"] + state[p + "attn.c_attn.bias"]).split(C, dim=2)
        q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1) / math.sqrt(C // n_head)).masked_fill(~causal, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + y @ state[p + "attn.c_proj.weight"] + state[p + "attn.c_proj.bias"]
        h = F.layer_norm(x, (C,), state[p + "ln_2.weight"], state[p + "ln_2.bias"], 1e-5)
        h = F.gelu(h @ state[p + "mlp.c_fc.weight"] + state[p + "mlp.c_fc.bias"], approximate="tanh")
        x = x + h @ state[p + "mlp.c_proj.weight"] + state[p + "mlp.c_proj.bias"]
    x = F.layer_norm(x, (C,), state["ln_f.weight"], state["ln_f.bias"], 1e-5)
    return x @ state["wte.weight"].T


@pytest.mark.parametrize("fmt", ["model.safetensors", "pytorch_model.bin"])
def test_gpt2_file_loads_and_computes_what_gpt2_computes(fmt: str, tmp_path: Path) -> None:
    state = hf_gpt2_state(**SMALL)
    path = tmp_path / fmt
    if fmt.endswith(".safetensors"):
        save_file(state, str(path))  # GPT2Model's keys, as the Hugging Face hub's model.safetensors
    else:  # GPT2LMHeadModel's keys, as older pytorch_model.bin files: under transformer., plus lm_head
        torch.save({**{f"transformer.{k}": v for k, v in state.items()}, "lm_head.weight": state["wte.weight"]}, path)
    model = GPT(**SMALL).eval()
    report = load_pretrained(model, path)
    assert not report.missing and not report.mismatched and not report.unused, str(report)
    assert report.loaded and len(report.loaded) == report.total
    idx = torch.randint(0, SMALL["vocab_size"], (3, SMALL["block_size"]))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf_forward(state, idx, SMALL["n_head"]), rtol=1e-4, atol=1e-4)
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied after loading


def test_key_mapping_round_trips() -> None:
    state = hf_gpt2_state(**SMALL)
    model = GPT(**SMALL)
    ours = from_hf(state, model.transformer, "transformer.", "file")
    assert set(ours) == {f"transformer.{k}" for k in model.transformer.state_dict()}
    back = to_hf(ours)
    assert set(back) == {k for k in state if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    for key, value in back.items():
        assert torch.equal(value, state[key]), key
    # zerotune -> Hugging Face -> zerotune is the identity too (transposed twice).
    mine = {k: v for k, v in GPT(**SMALL).state_dict().items() if k.startswith("transformer.")}
    again = from_hf(to_hf(mine), model.transformer, "transformer.", "file")
    assert all(torch.equal(again[k], v) for k, v in mine.items())
    assert is_hf_gpt2(back) and not is_hf_gpt2(mine)


def test_gpt2_124m_shapes_map_onto_the_124m_preset() -> None:
    """GPT-2 124M's full key set and shapes (on the meta device: nothing allocated) fit the GPT-2 124M model."""
    config = {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, "vocab_size": 50257}
    state = hf_gpt2_state(**config, device="meta")
    assert len(state) == 2 + 12 * 14 + 2  # the 124M checkpoint's 172 GPT2Model entries, buffers included
    with torch.device("meta"):
        model = GPT(**config)
    mapped = from_hf(state, model.transformer, "transformer.", "gpt2/model.safetensors")
    own = model.state_dict()
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {
        k: tuple(v.shape) for k, v in own.items() if k.startswith("transformer.")
    }
    assert mapped["transformer.h.0.attn.qkv.weight"].shape == (2304, 768)  # Conv1D (768, 2304), transposed


def test_gpt2_file_into_a_classifier_with_lora_and_a_shorter_context(tmp_path: Path) -> None:
    save_file(hf_gpt2_state(**SMALL), str(tmp_path / "model.safetensors"))
    args = {**SMALL, "block_size": 16, "num_classes": 3}
    model = SequenceClassifier(**args, finetune="lora", lora_targets=["attn.qkv"])
    report = load_pretrained(model, tmp_path / "model.safetensors", renames=model.pretrained_key_map)
    assert model.backbone.wpe.weight.shape[0] == 16  # GPT-2's 24 positions cropped to the 16 the model reads
    assert not report.mismatched and not report.unused
    assert {k.rsplit(".", 1)[0] for k in report.missing} == {"head"} | {
        f"backbone.h.{i}.attn.qkv" for i in range(2)
    }  # the fresh head and the adapters


def test_a_gpt2_file_of_another_shape_fails_with_the_mismatch_message(tmp_path: Path) -> None:
    save_file(hf_gpt2_state(**{**SMALL, "n_embd": 64}), str(tmp_path / "model.safetensors"))
    with pytest.raises(DataError) as err:
        load_pretrained(GPT(**SMALL), tmp_path / "model.safetensors")
    message = str(err.value)
    assert "does not fit TransformerBackbone" in message and "model.safetensors" in message
    assert "shape mismatch: " in message and "h.0.attn.qkv.weight file [192, 64] vs model [96, 32]" in message


@pytest.mark.parametrize("n_layer", [2, 3], ids=["fits", "another shape"])
def test_launcher_fine_tunes_from_a_gpt2_file_or_refuses_it_in_one_line(
    n_layer: int, tmp_path: Path, capsys: pytest.CaptureFixture[str], runs_dir: Path
) -> None:
    """A file that fits trains (from Python); one of another shape is refused on the command line in one line."""
    corpus = write_code_corpus(tmp_path / "corpus")
    weights = tmp_path / "model.safetensors"
    save_file(hf_gpt2_state(**{**SMALL, "n_layer": n_layer, "vocab_size": 256}), str(weights))
    settings = {
        "data.path": str(corpus),
        "data.tokenizer": "byte",
        "data.block_size": 24,
        "data.cache_dir": str(tmp_path / "tok"),
        "model.n_layer": 2,
        "model.n_head": 2,
        "model.n_embd": 32,
        "model.bias": True,
        "trainer.max_steps": 2,
        "trainer.val_check_interval": 2,
        "model.pretrained": str(weights),
        "onnx.enabled": False,
        "samples.enabled": False,
        "progress_bar.refresh_rate": 0,
    }
    if n_layer == 2:
        pretrained = launch("stdlib_gpt", settings, runs_dir=runs_dir).report.pretrained
        assert pretrained is not None and pretrained.path == str(weights)
        # Every tensor, the tied output layer included.
        assert len(pretrained.loaded) == pretrained.total == 29, pretrained
        return
    code, _, err = run_launcher(["stdlib_gpt", "--runs_dir", str(runs_dir), *flags(settings)], capsys)
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "not in model: h.2." in lines[0] and "Traceback" not in err, err[-2000:]


def test_damaged_safetensors_file_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file(hf_gpt2_state(**SMALL), str(path))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="not a complete safetensors file"):
        load_pretrained(GPT(**SMALL), path)
