"""The fast recipes' pieces: ResNet-9 with flip TTA, channels-last weights, bf16-mixed runs, and the GPU path."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from conftest import run_launcher
from fakedata import write_jpeg_folder, write_mnist

from experiments.launcher.launch import command_line
from lightning_models import MNISTCNN, ResNet9
from lightning_models.export import export_onnx, onnx_parity


def test_resnet9_shapes_width_and_checks() -> None:
    torch.manual_seed(0)
    full = ResNet9(num_classes=10, input_shape=(3, 32, 32))
    assert sum(p.numel() for p in full.parameters()) == 6_573_120  # the speed runs' ResNet-9 (6.57 M)
    half = ResNet9(num_classes=10, input_shape=(3, 32, 32), widths=[32, 64, 128, 256])
    assert sum(p.numel() for p in half.parameters()) == 1_646_112
    assert half(torch.randn(4, 3, 32, 32)).shape == (4, 10)
    assert ResNet9(num_classes=3, input_shape=(1, 8, 8), widths=[4, 4, 4, 4])(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    with pytest.raises(ValueError, match="model.widths needs 4"):
        ResNet9(widths=[8, 8, 8])
    with pytest.raises(ValueError, match="at least 8x8"):
        ResNet9(input_shape=(3, 4, 4))


def test_flip_tta_averages_the_mirror_image_in_eval_only(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ResNet9(num_classes=5, input_shape=(3, 16, 16), widths=[8, 8, 16, 16], tta_flip=True)
    x = torch.randn(6, 3, 16, 16)
    model.train()
    torch.testing.assert_close(model(x), model.logits(x))
    model.eval()
    with torch.no_grad():
        expected = 0.5 * (model.logits(x) + model.logits(x.flip(-1)))
        torch.testing.assert_close(model(x), expected)
        assert not torch.allclose(model(x), model.logits(x))
        # Mirror images get the same prediction: TTA makes the model flip-invariant.
        torch.testing.assert_close(model(x.flip(-1)), model(x))
    path = tmp_path / "tta.onnx"
    export_onnx(model, x[:2], path)
    assert max(onnx_parity(path, model, x, [1, 6]).values()) <= 1e-4


def test_channels_last_weights_same_outputs_and_checkpoints(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MNISTCNN(num_classes=10, input_shape=(1, 28, 28), channels=[4, 8], batch_norm=True, channels_last=True)
    reference = MNISTCNN(num_classes=10, input_shape=(1, 28, 28), channels=[4, 8], batch_norm=True)
    reference.load_state_dict(model.state_dict())
    x = torch.randn(16, 1, 28, 28)
    y = torch.randint(0, 10, (16,))
    trainer = L.Trainer(
        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    model.eval(), reference.eval()
    trainer.validate(model, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8))
    conv = model.backbone[0][4]  # (8, 4, 5, 5): with one input channel both layouts would coincide
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-5)
    path = tmp_path / "cl.ckpt"
    trainer.save_checkpoint(path)
    loaded = MNISTCNN.load_from_checkpoint(path).eval()
    assert loaded.hparams.channels_last is True
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fast")
    write_mnist(root, n_train=200, n_test=40)
    write_jpeg_folder(root / "cifar10-train", n_per_class=12)
    return root


def fast_settings(name: str, data: Path, accelerator: str) -> dict[str, Any]:
    settings = {"trainer.accelerator": accelerator, "trainer.max_epochs": 1, "data.batch_size": 16}
    settings |= {"onnx.enabled": False, "dashboards.enabled": False}
    if name == "mnist_fast":
        return settings | {"data.data_dir": str(data), "data.download": False}
    return settings | {"data.root": str(data / "cifar10-train")}


@pytest.mark.parametrize("name", ["mnist_fast", "cifar10_fast"])
def test_fast_recipes_train_in_bf16_with_channels_last_weights(
    name: str, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from experiments.api import launch

    args = [*command_line(name, fast_settings(name, data, "cpu")), "--runs_dir", str(tmp_path)]
    code, out, err = run_launcher(args, capsys)
    assert code == 0, err[-2000:]
    assert "test/acc=" in out
    assert re.search(r"^fit +\d+\.\d s, 1 epoch$", out, re.M), out  # the summary says how long training took
    result = launch(name, fast_settings(name, data, "cpu"), runs_dir=tmp_path / "again")
    assert result.report.epochs == 1 and result.report.fit_seconds > 0 and "test/acc" in result.test_metrics
    assert result.model.trainer.precision == "bf16-mixed"
    conv = next(m for m in result.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


class DataOnDevice(L.Callback):
    """Records where the training split and each batch live (the datamodule drops its device copy at teardown)."""

    seen: list[tuple[str, str]] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, idx: int) -> None:
        split = trainer.datamodule._device_splits["train"].x
        DataOnDevice.seen.append((split.device.type, batch[0].device.type))


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["mnist_fast", "cifar10_fast"])
def test_fast_recipes_run_unchanged_on_a_gpu_with_the_data_on_it(name: str, data: Path, tmp_path: Path) -> None:
    from experiments.api import launch

    DataOnDevice.seen.clear()
    result = launch(name, fast_settings(name, data, "gpu"), runs_dir=tmp_path, callbacks=[DataOnDevice()])
    assert 0 <= result.test_metrics["test/acc"] <= 1
    assert DataOnDevice.seen and set(DataOnDevice.seen) == {("cuda", "cuda")}
