"""Pre-trained weights (key matching, report, once-only loading), freeze schedule, discriminative learning rates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torchvision
from conftest import run_launcher

from datamodules import DigitsDataModule
from experiments.api import launch, resume
from lightning_models import ResNet18Classifier, SmallCNN
from lightning_models.finetune import FreezeSchedule, load_pretrained, match_keys

QUIET = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
}
FAST: dict[str, Any] = {"onnx.enabled": False, "dashboards.enabled": False, "progress_bar.refresh_rate": 0}


def small_cnn(num_classes: int = 5, **kwargs) -> SmallCNN:
    return SmallCNN(num_classes=num_classes, input_shape=(1, 8, 8), channels=[8, 16], **kwargs)


def test_match_keys_rule() -> None:
    target = ["backbone.conv1.weight", "backbone.layer1.0.conv1.weight", "backbone.bn1.weight", "head.weight"]
    # torchvision names: unique dotted suffix with the fewest added parts; fc. renamed to head. by the model's map.
    mapping, unused = match_keys(
        ["conv1.weight", "layer1.0.conv1.weight", "bn1.weight", "fc.weight", "avgpool.x"], target, {"fc.": "head."}
    )
    assert mapping == {
        "backbone.conv1.weight": "conv1.weight",
        "backbone.layer1.0.conv1.weight": "layer1.0.conv1.weight",
        "backbone.bn1.weight": "bn1.weight",
        "head.weight": "fc.weight",
    }
    assert unused == ["avgpool.x"]
    # A prefix every file key shares (DDP's module.) is stripped; the model's own prefixes are kept.
    mapping, unused = match_keys(["module.backbone.conv1.weight", "module.head.weight"], target)
    assert mapping == {"backbone.conv1.weight": "module.backbone.conv1.weight", "head.weight": "module.head.weight"}
    assert match_keys(["backbone.conv1.weight", "backbone.bn1.weight"], target)[0]["backbone.bn1.weight"]
    # Two equally close candidates: never guessed.
    assert match_keys(["conv.w", "x.y"], ["a.conv.w", "b.conv.w"]) == ({}, ["conv.w", "x.y"])


def test_report_skips_new_head_and_loads_the_rest(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = small_cnn(num_classes=5)
    path = tmp_path / "five.pt"
    torch.save(source.state_dict(), path)
    target = small_cnn(num_classes=10)
    fresh_head = target.head[1].weight.detach().clone()
    report = load_pretrained(target, path)
    assert [(n, list(a), list(b)) for n, a, b in report.mismatched] == [
        ("head.1.weight", [5, 16], [10, 16]),
        ("head.1.bias", [5], [10]),
    ]
    assert len(report.loaded) == report.total - 2 and not report.missing and not report.unused
    assert torch.equal(target.backbone[0].weight, source.backbone[0].weight)
    assert torch.equal(target.backbone[1].running_var, source.backbone[1].running_var)
    assert torch.equal(target.head[1].weight, fresh_head)  # a 10-class head keeps its fresh initialization
    text = str(report)
    assert f"loaded {report.total - 2}/{report.total} tensors" in text
    assert "skipped head.1.weight: shape [5, 16] in file, [10, 16] in model (re-initialized)" in text
    # pretrained_skip re-initializes a head whose shape matches (new classes, same count).
    same = small_cnn(num_classes=5)
    report = load_pretrained(same, path, skip=["head."])
    assert report.excluded == ["head.1.weight", "head.1.bias"] and not torch.equal(
        same.head[1].weight, source.head[1].weight
    )


def test_projector_head_is_dropped_when_fine_tuning(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = small_cnn(head_hidden=32)
    assert [type(m).__name__ for m in source.head] == ["Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]
    assert source(torch.randn(3, 1, 8, 8)).shape == (3, 5)
    path = tmp_path / "projector.pt"
    torch.save(source.state_dict(), path)
    target = small_cnn()  # linear head
    report = load_pretrained(target, path, skip=["head."])
    backbone = [k for k in target.state_dict() if k.startswith("backbone.")]
    assert report.loaded == backbone and report.excluded == ["head.1.weight", "head.1.bias"]
    assert report.unused and all(k.startswith("head.") for k in report.unused)
    assert torch.equal(target.backbone[3].weight, source.backbone[3].weight)
    with pytest.raises(ValueError, match="model.head_hidden must be >= 0"):
        small_cnn(head_hidden=-1)


def test_torchvision_resnet18_state_dict_maps_into_backbone_and_head(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None, num_classes=10)
    path = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    model = ResNet18Classifier(num_classes=10, input_shape=(3, 32, 32), cifar_stem=False)
    report = load_pretrained(model, path, renames={"fc.": "head."})
    assert len(report.loaded) == report.total == len(tv.state_dict())
    assert torch.equal(model.backbone.conv1.weight, tv.conv1.weight)
    assert torch.equal(model.backbone.layer4[1].bn2.running_mean, tv.layer4[1].bn2.running_mean)
    assert torch.equal(model.head.weight, tv.fc.weight)


def test_launcher_loads_pretrained_once_and_reports(
    tmp_path: Path, runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    path = tmp_path / "ten.pt"
    torch.save(SmallCNN(num_classes=10, input_shape=(1, 8, 8)).state_dict(), path)
    settings = {"data.classes": [5, 6, 7], **FAST}
    result = launch(
        "digits_cnn",
        {**settings, "model.pretrained": str(path), "trainer.max_epochs": 1, "trainer.limit_train_batches": 2},
        runs_dir=runs_dir,
    )
    out = capsys.readouterr().out
    assert out.count("pretrained: loaded 24/26 tensors") == 1  # loaded once, saying so once
    assert "skipped head.1.weight: shape [10, 64] in file, [3, 64] in model (re-initialized)" in out
    loaded = result.report.pretrained
    assert loaded is not None and loaded.path == str(path) and (len(loaded.loaded), loaded.total) == (24, 26)
    assert [(n, list(a), list(b)) for n, a, b in loaded.mismatched] == [
        ("head.1.weight", [10, 64], [3, 64]),
        ("head.1.bias", [10], [3]),
    ]
    # Resuming restores the checkpoint, never the pre-trained file (which may be gone by then).
    path.unlink()
    run = runs_dir / "digits_cnn" / "version_0"
    assert result.run_dir == run
    resumed = resume(run, {"trainer.max_epochs": 2, **FAST})
    assert resumed.report.epochs == 2 and resumed.report.pretrained is None
    assert "pretrained:" not in capsys.readouterr().out
    # Nor does a model made by load_from_checkpoint when it is trained further.
    model = SmallCNN.load_from_checkpoint(run / "checkpoints" / "last.ckpt")
    assert model.hparams.pretrained == str(path)
    dm = DigitsDataModule(classes=[5, 6, 7])
    L.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, **QUIET).fit(model, datamodule=dm)


def test_missing_pretrained_file_is_a_usage_error(runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_launcher(
        ["digits_cnn", "--runs_dir", str(runs_dir), "--model.pretrained", "nope.pt", "--trainer.fast_dev_run", "true"],
        capsys,
    )
    assert code == 2
    assert "error: model.pretrained: no such file 'nope.pt'" in err and "Traceback" not in err


class Snapshots(L.Callback):
    """Copies of the backbone's and head's parameters and BN statistics at the end of every training epoch."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, torch.Tensor]] = []
        self.bn_training: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.bn_training.append(pl_module.backbone[1].training)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epochs.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


def test_freeze_schedule_and_backbone_learning_rate() -> None:
    L.seed_everything(0)
    model = small_cnn(optimizer="adamw", lr=0.01, weight_decay=0.01, backbone_lr_factor=0.1)
    snaps = Snapshots()
    trainer = L.Trainer(
        max_epochs=3,
        limit_train_batches=2,
        limit_val_batches=1,
        callbacks=[FreezeSchedule(unfreeze_at_epoch=2), snaps],
        **QUIET,
    )
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainer.fit(model, datamodule=DigitsDataModule(classes=[0, 1, 2, 3, 4], batch_size=32))
    groups = {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups}
    assert groups == pytest.approx({"backbone": 0.001, "head": 0.01})
    body = [k for k in start if k.startswith("backbone.")]
    assert any("running_mean" in k for k in body) and any(k.endswith(".weight") for k in body)
    # Frozen for epochs 0 and 1: weights and BatchNorm statistics exactly as loaded (BN ran in eval mode).
    for epoch in (0, 1):
        assert all(torch.equal(snaps.epochs[epoch][k], start[k]) for k in body), epoch
        assert not torch.equal(snaps.epochs[epoch]["head.1.weight"], start["head.1.weight"])
    assert snaps.bn_training == [False] * 4 + [True] * 2
    # Unfrozen in epoch 2: the backbone trains (and keeps training in later runs of the same model).
    changed = [k for k in body if k.endswith("weight") and not torch.equal(snaps.epochs[2][k], start[k])]
    assert len(changed) == len([k for k in body if k.endswith("weight")])
    assert all(p.requires_grad for p in model.parameters())


def test_freeze_schedule_needs_a_backbone() -> None:
    from lightning_models import MLPClassifier

    trainer = L.Trainer(max_epochs=1, callbacks=[FreezeSchedule(unfreeze_at_epoch=1)], **QUIET)
    with pytest.raises(ValueError, match="MLPClassifier has no 'backbone' module"):
        trainer.fit(MLPClassifier(num_classes=5, input_shape=(1, 8, 8)), datamodule=DigitsDataModule())


def test_transfer_demo_runs_three_launcher_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from experiments.transfer import main

    assert main(["--k", "5", "--seeds", "3", "--runs_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    table = out[out.index("transfer digits 0-4 -> 5-9 with 5 labelled images per class") :]
    row = next(line.split() for line in table.splitlines() if line.startswith("   3"))
    pretrain, probe_pretrained, probe_random, tuned, scratch, gain = (float(v) for v in row[1:7])
    assert pretrain > 0.95 and tuned > 0.8 and scratch > 0.5 and gain == pytest.approx(tuned - scratch, abs=1e-3)
    assert 0.5 < probe_pretrained <= 1 and 0.5 < probe_random <= 1  # five classes: chance is 0.2
    # Each run went through the launcher: its own folder and saved config; the fine-tuned one names its start.
    runs = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.glob("*/version_*"))
    assert runs == ["digits_pretrain/version_0", "digits_transfer/version_0", "digits_transfer/version_1"]
    tuned_cfg = (tmp_path / "digits_transfer/version_0/config.yaml").read_text()
    assert f"pretrained: {tmp_path}/digits_pretrain/version_0/checkpoints/last.ckpt" in tuned_cfg
    assert "train_per_class: 5" in tuned_cfg
