"""The GPT model: causal masking, GPT-2's layout and initialization, the key/value cache, sampling, overfitting a
tiny text, activation checkpointing, optimizer groups, the learning-rate schedule and ONNX export."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from experiments.launcher.recipes import CONFIG_DIR
from lightning_models import GPT
from lightning_models.export import export_onnx, onnx_parity
from lightning_models.gpt import sample_next
from lightning_models.schedules import warmup_cosine
from lightning_models.transformer import Attention, TransformerBackbone


def tiny_gpt(**kwargs) -> GPT:
    torch.manual_seed(0)
    args = {"vocab_size": 40, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32}
    return GPT(**{**args, **kwargs}).eval()


def test_a_position_never_sees_later_tokens() -> None:
    model = tiny_gpt()
    x = torch.randint(0, 40, (3, 16))
    changed = x.clone()
    changed[:, 9:] = (changed[:, 9:] + 1) % 40
    with torch.no_grad():
        a, b = model(x), model(changed)
    torch.testing.assert_close(a[:, :9], b[:, :9], rtol=0, atol=0)
    assert (a[:, 9:] - b[:, 9:]).abs().amax() > 1e-3  # later positions do see the change


def test_encoder_attention_sees_the_whole_sequence() -> None:
    torch.manual_seed(0)
    attn = Attention(16, 2, causal=False).eval()
    x = torch.randn(2, 6, 16)
    changed = x.clone()
    changed[:, -1] += 1.0
    with torch.no_grad():
        assert (attn(x)[:, 0] - attn(changed)[:, 0]).abs().amax() > 1e-4  # position 0 sees the last one


def test_gpt2_layout_weight_tying_and_initialization() -> None:
    model = tiny_gpt(n_layer=4, n_embd=64, vocab_size=50)
    assert model.lm_head.weight is model.transformer.wte.weight
    keys = set(model.state_dict())
    for key in ["transformer.wte.weight", "transformer.wpe.weight", "transformer.h.3.ln_1.weight",
                "transformer.h.0.attn.qkv.weight", "transformer.h.0.attn.proj.weight", "transformer.h.0.mlp.fc.weight",
                "transformer.h.0.mlp.proj.weight", "transformer.ln_f.weight", "lm_head.weight"]:  # fmt: skip
        assert key in keys, key
    # Residual projections start smaller by 1/sqrt(2 * n_layer); LayerNorms at identity, biases at zero.
    proj = torch.cat([b.attn.proj.weight.flatten() for b in model.transformer.h])
    qkv = torch.cat([b.attn.qkv.weight.flatten() for b in model.transformer.h])
    assert proj.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.05)
    assert qkv.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.equal(model.transformer.h[0].ln_1.weight, torch.ones(64))
    assert torch.count_nonzero(model.transformer.h[0].attn.qkv.bias) == 0


def test_gpt2_124m_preset_has_gpt2s_parameter_count() -> None:
    init = yaml.safe_load((CONFIG_DIR / "presets" / "gpt2_124m.yaml").read_text())["model"]["init_args"]
    with torch.device("meta"):
        model = GPT(vocab_size=50257, block_size=1024, **{k: init[k] for k in ("n_layer", "n_head", "n_embd", "bias")})
    # GPT-2 small: 124,439,808 parameters (the tied output layer counted once); 85M of them outside the embeddings.
    assert model.num_params(non_embedding=False) == 124_439_808
    assert model.flops_per_token() == 6 * model.num_params() + 12 * 12 * 12 * 64 * 1024


def test_hyperparameters_rebuild_the_model() -> None:
    model = tiny_gpt(dropout=0.1)
    # vocab_size and block_size are the task base's num_classes and input_shape: saved once, under their own names.
    assert "num_classes" not in model.hparams and "input_shape" not in model.hparams
    again = GPT(**model.hparams)
    assert again.num_params() == model.num_params() and again.hparams == model.hparams


def test_n_embd_must_divide_into_heads() -> None:
    with pytest.raises(ValueError, match=r"model.n_embd \(100\) must be divisible by model.n_head \(3\)"):
        GPT(vocab_size=10, block_size=8, n_layer=1, n_head=3, n_embd=100)


def test_cached_logits_equal_full_forward() -> None:
    model = tiny_gpt()
    x = torch.randint(0, 40, (2, 12))
    backbone: TransformerBackbone = model.transformer
    caches = backbone.make_caches(2, x.device, torch.float32)
    with torch.no_grad():
        full = model(x)
        first = model.lm_head(backbone(x[:, :5], caches=caches))  # prefill 5 positions
        rest = [model.lm_head(backbone(x[:, i : i + 1], caches=caches)) for i in range(5, 12)]
    incremental = torch.cat([first, *rest], dim=1)
    torch.testing.assert_close(incremental, full, rtol=1e-5, atol=1e-5)
    assert caches[0].length == 12


@pytest.mark.parametrize(
    "sampling",
    [{"temperature": 0.0}, {"temperature": 1.0, "top_k": 5}, {"temperature": 0.8, "top_p": 0.9}],
    ids=["greedy", "top_k", "top_p"],
)
def test_generation_with_and_without_cache_gives_identical_tokens(sampling: dict) -> None:
    model = tiny_gpt()
    prompt = torch.randint(0, 40, (2, 5))
    # 30 new tokens with a 16-token context: the window slides past block_size, where the cache steps aside.
    outputs = []
    for use_cache in (True, False):
        gen = torch.Generator().manual_seed(1)
        outputs.append(model.generate(prompt, 30, use_cache=use_cache, generator=gen, **sampling))
    assert outputs[0].shape == (2, 35)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
    assert torch.equal(outputs[0][:, :5], prompt)


def test_generation_rejects_bad_prompts_and_settings() -> None:
    model = tiny_gpt()
    with pytest.raises(ValueError, match="17 tokens long, more than the model's block_size of 16"):
        model.generate(torch.zeros(1, 17, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="prompt is empty"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), 1)
    for bad, match in [({"temperature": -1}, "temperature"), ({"top_k": 0}, "top_k"), ({"top_p": 1.5}, "top_p")]:
        with pytest.raises(ValueError, match=match):
            model.generate(torch.zeros(1, 2, dtype=torch.long), 1, **bad)


def test_top_k_and_top_p_keep_only_the_likely_tokens() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    gen = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, top_k=2, generator=gen).unique().tolist()) == {0, 1}
    # The smallest set reaching 0.7: tokens 0 and 1 (0.5 + 0.3); token 2 is needed only above 0.8.
    assert set(sample_next(logits, top_p=0.7, generator=gen).unique().tolist()) == {0, 1}
    assert set(sample_next(logits, top_p=0.85, generator=gen).unique().tolist()) == {0, 1, 2}
    assert set(sample_next(logits, top_p=0.01, generator=gen).unique().tolist()) == {0}
    assert set(sample_next(logits, temperature=0).view(-1).tolist()) == {0}
    counts = torch.bincount(sample_next(logits, generator=gen).view(-1), minlength=4) / 2000
    torch.testing.assert_close(counts, torch.tensor([0.5, 0.3, 0.15, 0.05]), rtol=0, atol=0.04)


def test_overfits_a_tiny_text_and_recites_it() -> None:
    text = "to be or not to be, that is the question. "
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text * 4])
    model = tiny_gpt(vocab_size=len(chars), block_size=32, lr=1e-2, weight_decay=0.0).train()
    opt = model.build_optimizer()
    windows = ids[torch.arange(len(ids) - 33)[:, None] + torch.arange(33)]
    for _ in range(100):
        loss = model.compute_loss(model(windows[:, :-1]), windows[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    # The first characters of a window are ambiguous ("t" starts "to", "that", "the"); with context it is memorized.
    with torch.no_grad():
        logits = model.eval()(windows[:, :-1])
    late = nn.functional.cross_entropy(logits[:, 12:].reshape(-1, len(chars)), windows[:, 13:].reshape(-1))
    assert late.item() < 0.01
    out = model.generate(ids[None, :12], len(text), temperature=0.0)
    assert "".join(chars[i] for i in out[0].tolist()) == (text * 2)[: 12 + len(text)]


def test_activation_checkpointing_gives_the_same_gradients() -> None:
    x = torch.randint(0, 40, (2, 16))
    grads = []
    for checkpointing in (False, True):
        model = tiny_gpt(activation_checkpointing=checkpointing, dropout=0.0).train()
        model.compute_loss(model(x[:, :-1]), x[:, 1:]).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, msg=name)


def test_weight_decay_on_matrices_only_and_fused_adamw() -> None:
    model = tiny_gpt(weight_decay=0.1)
    opt = model.build_optimizer()
    groups = {g["name"]: g for g in opt.param_groups}
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for p in groups["decay"]["params"]}
    rest = {names[id(p)] for p in groups["no_decay"]["params"]}
    assert groups["decay"]["weight_decay"] == 0.1 and groups["no_decay"]["weight_decay"] == 0.0
    linear_weights = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)} - {"lm_head.weight"}
    assert decay == linear_weights
    assert "transformer.wte.weight" in rest and "transformer.wpe.weight" in rest  # embeddings, the tied head too
    assert all(n.endswith("bias") or ".ln_" in n or "wte" in n or "wpe" in n for n in rest)
    assert len(decay) + len(rest) == len(list(model.parameters()))
    assert opt.defaults["fused"] is True  # the CPU has a fused AdamW kernel
    assert tuple(opt.defaults["betas"]) == (0.9, 0.95)


def test_warmup_cosine_schedule_by_steps() -> None:
    factor = warmup_cosine(warmup=10, decay_steps=110, min_ratio=0.1)
    assert factor(0) == pytest.approx(1 / 11) and factor(9) == pytest.approx(10 / 11)
    assert factor(10) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.55)  # halfway down the cosine, between 1 and 0.1
    assert factor(110) == pytest.approx(0.1) and factor(500) == pytest.approx(0.1)


def test_exports_to_onnx_with_dynamic_batch_and_sequence(tmp_path: Path) -> None:
    model = tiny_gpt()
    path = tmp_path / "gpt.onnx"
    x = torch.randint(0, 40, (4, 16))
    export_onnx(model, x[:2], path)
    import onnx

    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "sequence"]
    assert max(onnx_parity(path, model, x, [1, 3, 4]).values()) < 1e-4
    assert max(onnx_parity(path, model, x[:, :5], [2]).values()) < 1e-4  # a shorter sequence
