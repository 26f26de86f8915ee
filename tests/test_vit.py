"""The Vision Transformer: attention maps that are the blocks' own attention, a run with every default on (attention
figure, dashboards, ONNX), the image-folder command of the CIFAR-10 JPEG recipe, and a clear patch-size error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_launcher
from fakedata import write_image_folder
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from experiments.api import launch
from experiments.callbacks.attention_maps import attention_figure, attention_rollout
from experiments.launcher.recipes import CONFIG_DIR
from lightning_models import ViT


def tiny_vit(**kwargs) -> ViT:
    torch.manual_seed(0)
    args = {"input_shape": (3, 16, 16), "num_classes": 4, "patch_size": 4, "n_layer": 2, "n_head": 2, "n_embd": 32}
    return ViT(**{**args, **kwargs}).eval()


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_attention_maps_are_what_the_blocks_attend_with(pooling: str) -> None:
    model = tiny_vit(pooling=pooling)
    x = torch.randn(3, 3, 16, 16)
    maps = model.attention_maps(x)
    tokens = 16 + (pooling == "cls")
    assert maps.shape == (2, 3, 2, tokens, tokens)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 3, 2, tokens))
    # Re-running the first block's attention with these weights gives exactly its output.
    block = model.backbone.h[0]
    with torch.no_grad():
        t = model.backbone.patch_embed(x).flatten(2).transpose(1, 2)
        if pooling == "cls":
            t = torch.cat([model.backbone.cls_token.expand(3, -1, -1), t], dim=1)
        h = block.ln_1(t + model.backbone.pos_embed)
        v = block.attn.qkv(h).split(32, dim=2)[2].view(3, tokens, 2, 16).transpose(1, 2)
        y = block.attn.proj((maps[0] @ v).transpose(1, 2).reshape(3, tokens, 32))
        torch.testing.assert_close(y, block.attn(h), rtol=1e-5, atol=1e-5)
    rollout = attention_rollout(maps[:, 0])
    torch.testing.assert_close(rollout.sum(-1), torch.ones(tokens))
    image = attention_figure(x[0], maps[:, 0], model.backbone.grid, model.backbone.prefix)
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype.name == "uint8"


def test_vit_run_logs_attention_maps_dashboards_and_exports_onnx(runs_dir: Path) -> None:
    settings = {
        "trainer.max_epochs": 2,
        "trainer.limit_train_batches": 3,
        "trainer.limit_val_batches": 1,
        "trainer.limit_test_batches": 1,
        "attention.every_n_epochs": 1,
        "progress_bar.refresh_rate": 0,
    }
    report = launch("digits_vit", settings, runs_dir=runs_dir).report
    run = runs_dir / "digits_vit" / "version_0"
    assert report.run_dir == run
    acc = EventAccumulator(str(run), size_guidance={"images": 0})
    acc.Reload()
    assert {"val/attention", "val/confusion_matrix"} <= set(acc.Tags()["images"])
    assert [e.step for e in acc.Images("val/attention")] == [3, 6]
    assert acc.Images("val/attention")[-1].width > 3 * acc.Images("val/attention")[-1].height  # image, rollout, heads
    assert report.onnx is not None and report.onnx.ok and report.onnx.path == run / "model.onnx", report.onnx
    assert report.parameters is not None and report.parameters.endswith(" trainable (100%), finetune full")


def test_vit_on_an_image_folder_with_the_cifar10_recipe(tmp_path: Path, runs_dir: Path) -> None:
    """The run the CIFAR-10 JPEG figure is measured with: cifar10_vit with the image-folder datamodule."""
    root = write_image_folder(tmp_path / "images", ["cat", "dog", "ship"], n_per_class=10, size=32)
    settings = {
        "data": "datamodules.ImageFolderDataModule",
        "data.root": str(root),
        "data.image_size": 32,
        "data.val_fraction": 0.2,
        "data.test_fraction": 0.2,
        "data.batch_size": 8,
        "model.n_layer": 1,
        "trainer.max_epochs": 1,
        "trainer.limit_train_batches": 2,
        "onnx.enabled": False,
        "progress_bar.refresh_rate": 0,
    }
    result = launch("cifar10_vit", settings, runs_dir=runs_dir)
    assert type(result.datamodule).__name__ == "ImageFolderDataModule"
    assert 0.0 <= result.test_metrics["test/acc"] <= 1.0, result.test_metrics


def test_patch_size_that_does_not_divide_the_image_is_one_error_line(
    runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_launcher(["digits_vit", "--runs_dir", str(runs_dir), "--model.patch_size", "3"], capsys)
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "patch_size 3 must divide the 8x8 images" in lines[0] and "2, 4, 8" in lines[0], err


PRESETS = [("vit_tiny", 5_362_762), ("vit_mini", 1_205_898), ("vit_micro", 208_074)]


@pytest.mark.parametrize(("preset", "params"), PRESETS)
def test_vit_presets_are_timm_shaped_overlays(preset: str, params: int) -> None:
    """Each preset overlays the CIFAR-10 experiment: its width, depth and heads, the experiment's patches and data."""
    config = yaml.safe_load((CONFIG_DIR / "cifar10_vit.yaml").read_text())["model"]["init_args"]
    overlay = yaml.safe_load((CONFIG_DIR / "presets" / f"{preset}.yaml").read_text())
    assert set(overlay) == {"model"} and set(overlay["model"]["init_args"]) == {"n_layer", "n_head", "n_embd"}
    model = ViT(input_shape=(3, 32, 32), num_classes=10, **{**config, **overlay["model"]["init_args"]})
    assert sum(p.numel() for p in model.parameters()) == params
    if preset == "vit_tiny":
        assert (len(model.backbone.h), model.backbone.h[0].attn.n_head, model.head.in_features) == (12, 3, 192)
