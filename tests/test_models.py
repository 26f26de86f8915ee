"""The classic-experiment models: hand-derived gradients, shapes, ResNet-18 freezing and weights, checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torchvision
from torch.utils.data import DataLoader, TensorDataset

from experiments.api import launch
from lightning_models import (
    MNISTCNN,
    BinaryMLP,
    HandBackpropMLP,
    LeNet,
    LinearRegression,
    MLPClassifier,
    ResNet18Classifier,
    SmallCNN,
)

# tiny_trainer fits without validation on purpose (limit_val_batches=0); Lightning still says so once per fit.
pytestmark = pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")


def tiny_trainer(**kwargs: Any) -> L.Trainer:
    """A CPU trainer without logger, checkpoints, progress bar or validation."""
    options: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    options.update(kwargs)
    return L.Trainer(**options)


def loader(shape: tuple[int, ...], targets: torch.Tensor, batch_size: int = 4) -> DataLoader:
    x = torch.randn(len(targets), *shape, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x, targets), batch_size=batch_size)


# -- hand-derived backpropagation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_hand_gradients_equal_autograd(label_smoothing: float) -> None:
    torch.manual_seed(0)
    model = HandBackpropMLP(
        input_shape=(1, 8, 8), num_classes=10, hidden=[32, 16], label_smoothing=label_smoothing
    ).double()
    names = {name for name, _ in model.named_parameters()}
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        n = 5 + 7 * seed  # batch sizes 5, 12, 19, 26
        x = torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64)
        y = torch.randint(0, 10, (n,), generator=g)
        loss, grads = model.hand_gradients(x, y)
        assert set(grads) == names
        model.zero_grad()
        auto_loss = model.compute_loss(model(x), y)
        auto_loss.backward()
        assert abs(loss.item() - auto_loss.item()) < 1e-12
        for name, p in model.named_parameters():
            assert grads[name].shape == p.shape
            assert (grads[name] - p.grad).abs().max().item() < 1e-6, name
            assert p.grad.abs().max() > 0  # a vacuous comparison of zeros would prove nothing


@pytest.mark.parametrize("nesterov", [False, True])
def test_hand_sgd_update_matches_torch_sgd(nesterov: bool) -> None:
    torch.manual_seed(1)
    model = HandBackpropMLP(input_shape=(6,), num_classes=3, hidden=[8]).double()
    reference = HandBackpropMLP(input_shape=(6,), num_classes=3, hidden=[8]).double()
    reference.load_state_dict(model.state_dict())
    settings = dict(lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=0.01)
    holder = torch.optim.SGD(model.parameters(), **settings)
    torch_sgd = torch.optim.SGD(reference.parameters(), **settings)
    for step in range(3):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(10, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (10,), generator=g)
        model.sgd_update(model.hand_gradients(x, y)[1], holder)
        torch_sgd.zero_grad()
        reference.compute_loss(reference(x), y).backward()
        torch_sgd.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert (p - q).abs().max().item() < 1e-12, name


def test_hand_backprop_rejects_other_optimizers() -> None:
    with pytest.raises(ValueError, match="only the sgd update"):
        HandBackpropMLP(optimizer="adam")


def test_digits_backprop_learns_digits(tmp_path: Path) -> None:
    """The experiment's own recipe, shortened to 10 epochs, through the launcher: no autograd in training."""
    settings = {"trainer.max_epochs": 10, "onnx.enabled": False, "dashboards.enabled": False}
    result = launch("digits_backprop", settings, runs_dir=tmp_path)
    assert result.report.epochs == 10 and result.test_metrics["test/acc"] >= 0.95, result.test_metrics
    ckpt = torch.load(tmp_path / "digits_backprop/version_0/checkpoints/last.ckpt", weights_only=False)
    # Steps are counted (one per batch) and momentum buffers live in the optimizer state, so runs resume exactly.
    assert ckpt["global_step"] > 0
    assert all("momentum_buffer" in s for s in ckpt["optimizer_states"][0]["state"].values())


# -- shapes ----------------------------------------------------------------------------------------------------------
def test_mnist_cnn_shapes_and_the_classic_fc1() -> None:
    x = torch.randn(3, 1, 28, 28)
    assert MNISTCNN(input_shape=(1, 28, 28))(x).shape == (3, 10)
    classic = MNISTCNN(input_shape=(1, 28, 28), channels=[32, 32], hidden=[128])
    # The printed recipe's fc1 (32 * 7 * 7 -> 128) is exactly what two same-padded conv-pool stages feed.
    assert classic.head[0].in_features == 32 * 7 * 7 and classic.head[0].out_features == 128
    assert classic(x).shape == (3, 10)
    tuned = MNISTCNN(input_shape=(1, 28, 28), batch_norm=True, dropout=0.3)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in tuned.modules())
    assert tuned(x).shape == (3, 10)
    with pytest.raises(ValueError, match="too small"):
        MNISTCNN(input_shape=(1, 8, 8), channels=[8, 8, 8, 8], padding=0)


def test_lenet_shapes() -> None:
    model = LeNet(input_shape=(3, 32, 32))
    assert model.head[0].in_features == 16 * 5 * 5
    assert [m.out_features for m in model.head if isinstance(m, torch.nn.Linear)] == [120, 84, 10]
    assert model(torch.randn(4, 3, 32, 32)).shape == (4, 10)
    assert LeNet(input_shape=(1, 28, 28))(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_tabular_models_shapes() -> None:
    assert LinearRegression(input_shape=(10,), num_classes=1)(torch.randn(5, 10)).shape == (5, 1)
    binary = BinaryMLP(input_shape=(30,), num_classes=2, hidden=16)
    assert binary(torch.randn(5, 30)).shape == (5, 1)
    proba = binary.predict_proba(torch.randn(5, 30))
    assert proba.shape == (5,) and ((proba > 0) & (proba < 1)).all()
    with pytest.raises(ValueError, match="binary classifier"):
        BinaryMLP(input_shape=(30,), num_classes=3)


# -- ResNet-18 -------------------------------------------------------------------------------------------------------
def test_resnet18_stem_head_and_frozen_backbone() -> None:
    torch.manual_seed(0)
    model = ResNet18Classifier(input_shape=(3, 16, 16), num_classes=10, freeze_backbone=True, lr=0.1)
    assert model.backbone.conv1.kernel_size == (3, 3) and model.backbone.conv1.stride == (1, 1)
    assert isinstance(model.backbone.maxpool, torch.nn.Identity)
    assert model.head.in_features == 512 and model.head.out_features == 10
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    tiny_trainer(max_steps=2).fit(model, loader((3, 16, 16), torch.arange(8) % 10))
    # Parameters and BatchNorm running statistics (and counters) of the backbone: bit for bit unchanged.
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, backbone_before[key]), key
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert not torch.equal(model.head.weight, head_before["weight"])
    model.train()
    assert model.head.training and not any(m.training for m in model.backbone.modules())
    imagenet_stem = ResNet18Classifier(input_shape=(3, 32, 32), cifar_stem=False)
    assert imagenet_stem.backbone.conv1.kernel_size == (7, 7)
    assert imagenet_stem(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("cifar_stem", [False, True])
def test_resnet18_loads_torchvision_weights_with_another_head(
    cifar_stem: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    source = torchvision.models.resnet18(weights=None, num_classes=5)
    path = tmp_path / "resnet18_5class.pt"
    torch.save(source.state_dict(), path)
    model = ResNet18Classifier(input_shape=(3, 16, 16), num_classes=10, cifar_stem=cifar_stem, pretrained=str(path))
    fresh_head = model.head.weight.detach().clone()
    tiny_trainer().validate(model, loader((3, 16, 16), torch.arange(4) % 10), verbose=False)
    report = model.pretrained_report
    expected_skips = {"head.weight", "head.bias"} | ({"backbone.conv1.weight"} if cifar_stem else set())
    assert {name for name, _, _ in report.mismatched} == expected_skips
    assert len(report.loaded) == len(model.state_dict()) - len(expected_skips)
    assert not report.missing and not report.unused
    printed = capsys.readouterr().out
    assert "skipped head.weight: shape [5, 512] in file, [10, 512] in model" in printed
    # The body carries the file's tensors; the head keeps its fresh 10-class initialization.
    for key, value in source.state_dict().items():
        if key.startswith("fc.") or (cifar_stem and key == "conv1.weight"):
            continue
        assert torch.equal(model.state_dict()[f"backbone.{key}"], value), key
    assert torch.equal(model.head.weight, fresh_head)


# -- checkpoints -----------------------------------------------------------------------------------------------------
CLASSIFIER_TARGETS = torch.arange(8) % 10
MODELS = {
    "mlp": (MLPClassifier, dict(hidden=[16]), (1, 8, 8), CLASSIFIER_TARGETS),
    "small_cnn": (SmallCNN, dict(channels=[8]), (1, 8, 8), CLASSIFIER_TARGETS),
    "mnist_cnn": (MNISTCNN, dict(channels=[4, 8], batch_norm=True, dropout=0.2), (1, 28, 28), CLASSIFIER_TARGETS),
    "lenet": (LeNet, {}, (3, 32, 32), CLASSIFIER_TARGETS),
    "resnet18": (ResNet18Classifier, dict(freeze_backbone=True), (3, 16, 16), CLASSIFIER_TARGETS),
    "linear": (LinearRegression, dict(num_classes=1), (5,), torch.linspace(-1, 1, 8)),
    "binary_mlp": (BinaryMLP, dict(num_classes=2, hidden=8), (6,), torch.arange(8) % 2),
    "hand_backprop": (HandBackpropMLP, dict(hidden=[16], lr=0.1), (1, 8, 8), CLASSIFIER_TARGETS),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_model_round_trips_through_checkpoint(name: str, tmp_path: Path) -> None:
    cls, kwargs, shape, targets = MODELS[name]
    torch.manual_seed(0)
    model = cls(input_shape=shape, **kwargs)
    assert tuple(model.example_input_array.shape[1:]) == shape
    trainer = tiny_trainer(max_steps=1)
    trainer.fit(model, loader(shape, targets))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = cls.load_from_checkpoint(path)
    for key, value in kwargs.items():
        assert loaded.hparams[key] == value
    x = torch.randn(3, *shape)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
