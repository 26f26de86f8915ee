"""Fine-tuning methods of the Transformer models: LoRA trains only adapters and the head, merges into weights that
compute the same (in PyTorch and in ONNX), saves adapters-only checkpoints that load and resume; partial fine-tuning
leaves the frozen layers bit-identical under FreezeSchedule and backbone_lr_factor; clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_launcher
from pretrained_fixtures import QUIET_SETTINGS, SHAPE, TEXT

from experiments import merge_lora
from experiments.api import launch, resume
from fileio.checkpoints import load_checkpoint
from fileio.errors import DataError
from lightning_models import GPT, LoRALinear, SequenceClassifier
from lightning_models.checkpoints import model_from_checkpoint
from lightning_models.export import export_onnx, onnx_parity
from lightning_models.finetune import load_pretrained

SMALL = {"vocab_size": 50, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32}


def train_steps(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 5) -> None:
    """A few optimizer steps with the model's own optimizer (its parameter groups, weight decay included)."""
    model.train()
    opt = model.build_optimizer()
    for _ in range(steps):
        loss = model.compute_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_lora_trains_only_adapters_and_head_and_merges_exactly() -> None:
    torch.manual_seed(0)
    model = SequenceClassifier(**SMALL, num_classes=3, finetune="lora", lora_targets=["attn.qkv", "mlp"],
                               weight_decay=0.1, optimizer="adamw", lr=0.01)  # fmt: skip
    wrapped = sorted(n for n, m in model.named_modules() if isinstance(m, LoRALinear))
    assert wrapped == [f"backbone.h.{i}.{s}" for i in range(2) for s in ("attn.qkv", "mlp.fc", "mlp.proj")]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if ".lora_" in n or n.startswith("head.")}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randint(0, 50, (8, 16)), torch.randint(0, 3, (8,))
    train_steps(model, x, y)
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert changed == {k for k in after if ".lora_" in k or k.startswith("head.")}
    # r=8, alpha=16: the update is 2 * B @ A, and B left zero would mean the adapters did nothing.
    assert all(after[k].abs().sum() > 0 for k in after if k.endswith("lora_B"))

    model.eval()
    merged = model.export_module()
    assert merged is not model and not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert not any(".lora_" in k for k in merged.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(merged(x), model(x), rtol=1e-5, atol=1e-5)
    assert any(isinstance(m, LoRALinear) for m in model.modules())  # the model itself keeps its adapters


def test_merged_lora_onnx_equals_the_unmerged_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = GPT(**SMALL, finetune="lora", lora_targets=["attn.qkv", "attn.proj", "mlp"]).eval()
    for m in model.modules():
        if isinstance(m, LoRALinear):
            torch.nn.init.normal_(m.lora_B, std=0.05)  # as after training: a real update
    x = torch.randint(0, 50, (3, 16))
    export_onnx(model.export_module(), x[:2], tmp_path / "merged.onnx")
    diffs = onnx_parity(tmp_path / "merged.onnx", model, x, [1, 3])
    assert max(diffs.values()) < 1e-4, diffs


def test_partial_fine_tuning_leaves_frozen_layers_bit_identical() -> None:
    torch.manual_seed(0)
    model = GPT(**SMALL, finetune="partial", freeze_blocks=1, weight_decay=0.1, lr=0.01)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randint(0, 50, (4, 16))
    train_steps(model, x, torch.roll(x, -1, dims=1))
    after = model.state_dict()
    frozen = ("transformer.wte.", "transformer.wpe.", "lm_head.", "transformer.h.0.")
    for key in after:
        assert torch.equal(before[key], after[key]) == key.startswith(frozen), key
    assert "embeddings and 1 block(s) frozen" in model.parameter_summary()


def test_method_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="applies to model.finetune partial only"):
        GPT(**SMALL, freeze_blocks=1)
    with pytest.raises(ValueError, match="the model has 2 blocks"):
        GPT(**SMALL, finetune="partial", freeze_blocks=3)
    with pytest.raises(ValueError, match=r"\['attn\.q'\] match no linear layer.*attn\.qkv"):
        GPT(**SMALL, finetune="lora", lora_targets=["attn.q"])


def test_partial_works_with_freeze_schedule_and_backbone_lr_factor(
    tiny_gpt_ckpt: Path, labelled_csv: Path, runs_dir: Path
) -> None:
    """Embeddings and block 0 stay as pre-trained for good; block 1 joins after the head-only epoch, at a tenth of
    the head's learning rate."""
    settings = {
        "data.path": str(labelled_csv),
        "data.block_size": 32,
        "data.tokenizer_path": str(tiny_gpt_ckpt),
        "model.pretrained": str(tiny_gpt_ckpt),
        "model.finetune": "partial",
        "model.freeze_blocks": 1,
        "freeze.unfreeze_at_epoch": 1,
        "model.backbone_lr_factor": 0.1,
        "trainer.max_epochs": 2,
        "data.batch_size": 16,
        "onnx.enabled": False,
        **SHAPE,
        **QUIET_SETTINGS,
    }
    report = launch("stdlib_classifier", settings, runs_dir=runs_dir).report
    assert report.parameters is not None and " trainable (" in report.parameters
    assert report.parameters.endswith("finetune partial (embeddings and 1 block(s) frozen)"), report.parameters
    pre = load_checkpoint(tiny_gpt_ckpt)["state_dict"]
    ckpt = load_checkpoint(report.run_dir / "checkpoints/last.ckpt")
    state = ckpt["state_dict"]
    for key, value in state.items():
        if key.startswith(("backbone.wte.", "backbone.wpe.", "backbone.h.0.")):
            assert torch.equal(value, pre[key.replace("backbone.", "transformer.", 1)]), key
    assert not torch.equal(state["backbone.h.1.attn.qkv.weight"], pre["transformer.h.1.attn.qkv.weight"])
    groups = {g["name"]: g["lr"] for g in ckpt["optimizer_states"][0]["param_groups"]}
    assert groups["backbone"] == pytest.approx(0.1 * groups["head"])


def test_lora_adapters_only_checkpoints_load_resume_and_export(
    tiny_gpt_ckpt: Path, code_corpus: Path, tmp_path: Path, runs_dir: Path
) -> None:
    base = tmp_path / "base.ckpt"
    shutil.copy(tiny_gpt_ckpt, base)
    settings = {
        "data.path": str(code_corpus),
        "data.cache_dir": str(tmp_path / "tokens"),
        "data.tokenizer_path": str(base),
        "model.pretrained": str(base),
        "model.finetune": "lora",
        "model.lora_targets": ["attn.qkv", "mlp"],
        "trainer.max_steps": 4,
        "trainer.val_check_interval": 2,
        **SHAPE,
        **TEXT,
        **QUIET_SETTINGS,
    }
    report = launch("email_gpt_finetune", settings, runs_dir=runs_dir).report
    assert report.parameters is not None and report.parameters.endswith("finetune lora (r 8, alpha 16, attn.qkv, mlp)")
    assert report.onnx is not None and report.onnx.ok and report.onnx.source.endswith(", adapters merged"), report.onnx
    run = runs_dir / "email_gpt_finetune/version_0"
    assert report.run_dir == run
    ckpt = load_checkpoint(run / "checkpoints/last.ckpt")
    assert ckpt["lora"] == {"adapters_only": True, "base": str(base)}
    assert ckpt["state_dict"] and all(".lora_" in k for k in ckpt["state_dict"])
    assert ckpt["tokenizer"]  # the tokenizer travels as with every language model

    model, _ = model_from_checkpoint(run / "checkpoints/last.ckpt")
    pre = load_checkpoint(base)["state_dict"]
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in ckpt["state_dict"].items())
    assert all(torch.equal(own[k], pre[k]) for k in pre if k in own)  # the frozen base, exactly as pre-trained

    # Merged into plain weights: a model without adapters computes what the adapted one does.
    assert merge_lora.main([str(run), "--out", str(tmp_path / "merged.safetensors")]) == 0
    plain = GPT(**{k: v for k, v in model.hparams.items() if k in ("vocab_size", "block_size", "n_layer", "n_head",
                                                                   "n_embd", "bias")}).eval()  # fmt: skip
    report = load_pretrained(plain, tmp_path / "merged.safetensors")
    assert len(report.loaded) == report.total and not any(isinstance(m, LoRALinear) for m in plain.modules())
    best, _ = model_from_checkpoint(next((run / "checkpoints").glob("best-*.ckpt")))
    x = torch.randint(0, 256, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(plain(x), best(x), rtol=1e-5, atol=1e-5)

    assert resume(run, {"trainer.max_steps": 6}).run_dir == run
    assert load_checkpoint(run / "checkpoints/last.ckpt")["global_step"] == 6

    base.unlink()
    with pytest.raises(DataError, match="holds LoRA adapters only; their base weights file .* is gone"):
        model_from_checkpoint(run / "checkpoints/last.ckpt")


def test_unknown_lora_target_is_one_error_line(
    code_corpus: Path, runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_launcher(
        ["email_gpt_finetune", "--runs_dir", str(runs_dir), "--data.path", str(code_corpus), "--model.finetune",
         "lora", "--model.lora_targets", "[attn.q]"],
        capsys,
    )  # fmt: skip
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "attn.qkv" in lines[0], err
