"""Real-data benchmark: the hand-written loops train the recipe's network on zerotune's batches; the report runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from fakedata import write_jpeg_folder, write_mnist

from datamodules import ImageFolderDataModule, MNISTDataModule
from experiments.benchmarks import handloops
from experiments.benchmarks import real as bench_real
from experiments.launcher.recipes import CONFIG_DIR
from lightning_models.checkpoints import import_class


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("real")
    write_mnist(root, n_train=120, n_test=40)
    write_jpeg_folder(root / "cifar10-train", n_per_class=6)
    return root


def plans(data: Path) -> dict[str, dict]:
    return {
        "mnist": bench_real.make_plan("mnist", str(data), "cpu", 0),
        "folder": bench_real.make_plan("folder", str(data / "cifar10-train"), "cpu", 0),
    }


@pytest.mark.parametrize("kind", ["mnist", "folder"])
def test_hand_network_is_the_recipes_network_with_the_same_initial_weights(kind: str, data: Path) -> None:
    plan = plans(data)[kind]
    cfg = yaml.safe_load((CONFIG_DIR / f"{plan['experiment']}.yaml").read_text())
    torch.manual_seed(plan["seed_everything"])
    model = import_class(cfg["model"]["class_path"])(
        num_classes=plan["model"]["num_classes"], input_shape=plan["model"]["input_shape"], **cfg["model"]["init_args"]
    )
    net = handloops.build_network(plan)
    ours, theirs = model.state_dict(), net.state_dict()
    assert list(ours) == list(theirs)
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    x = torch.randn(3, *plan["model"]["input_shape"])
    model.eval(), net.eval()
    torch.testing.assert_close(net(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["mnist", "folder"])
def test_hand_batches_are_zerotunes_batches(kind: str, data: Path) -> None:
    """Same split, epoch order, augmentation and normalization as zerotune's BatchLoader, epoch after epoch."""
    plan = plans(data)[kind]
    args = yaml.safe_load((CONFIG_DIR / f"{plan['experiment']}.yaml").read_text())["data"]["init_args"]
    args["batch_size"] = plan["data"]["batch_size"] = 16
    if kind == "mnist":
        dm = MNISTDataModule(**{**args, "data_dir": str(data), "download": False})
    else:
        dm = ImageFolderDataModule(**{**args, "root": plan["data"]["path"]})
    plan["data"]["eval_batch_size"] = dm.eval_batch_size
    dm.setup("fit")
    train, val, test = handloops._memory_batches(plan, torch.device("cpu"))
    for epoch in (0, 1):
        loader = dm.train_dataloader()
        loader.epoch_fn = lambda epoch=epoch: epoch
        train.epoch = epoch
        ours, theirs = list(loader), list(train)
        assert len(ours) == len(theirs) == len(train) and len(ours) > 1
        for (x, y), (hx, hy) in zip(ours, theirs, strict=True):
            assert torch.equal(y, hy)
            torch.testing.assert_close(hx, x, rtol=0, atol=0)
    for mine, loader in ((val, dm.val_dataloader()), (test, dm.test_dataloader())):
        (x, y), (hx, hy) = next(iter(loader)), next(iter(mine))
        assert torch.equal(y, hy) and torch.equal(x, hx)
    if kind == "folder":  # the shifts and flips are really there
        x, _ = next(iter(train))
        assert not torch.equal(x, torch.addcmul(train.norm[1], train.x[: len(x)].float(), train.norm[0]))


def test_tutorial_loop_uses_the_same_split_per_sample(data: Path) -> None:
    plan = plans(data)["folder"]
    train, val, test = handloops._tutorial_batches(plan, torch.device("cpu"))
    assert len(train.loader.dataset) == 42 and len(val.loader.dataset) == 6 and len(test.loader.dataset) == 12
    x, y = next(iter(test))
    assert x.shape == (12, 3, 32, 32) and x.dtype == torch.float32
    dm = ImageFolderDataModule(root=plan["data"]["path"], image_size=32, val_fraction=0.1, test_fraction=0.2)
    dm.setup("fit")
    assert torch.equal(y, dm.splits["test"].y)


def run_real_mode(data: Path, out: Path, folder: bool, monkeypatch: pytest.MonkeyPatch) -> str:
    # Targets every loop reaches after its first epoch, so the whole mode runs in seconds.
    monkeypatch.setattr(bench_real, "TASKS", {"mnist": ("mnist_fast", 0.0), "folder": ("cifar10_fast", 0.0)})
    out.write_text("# Benchmark\n\nsynthetic tables\n")
    image_folder = str(data / "cifar10-train") if folder else None
    assert bench_real.run(str(data), image_folder, "cpu", 0, str(out), "test machine") == 0
    text = out.read_text()
    assert text.startswith("# Benchmark\n\nsynthetic tables\n") and bench_real.SECTION_START in text
    for loop in ("(a) tutorial loop", "(b) hand-written loop", "(c) zerotune"):
        assert text.count(f"| {loop} |") == (2 if folder else 1)
    rows = [line.split("|") for line in text.splitlines() if line.startswith("| (")]
    assert all(row[4].strip() == "1" and float(row[3]) > 0 for row in rows), rows  # reached after epoch 1
    return text


def test_real_data_mode_times_three_loops_and_keeps_the_page(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "benchmark.md"
    run_real_mode(data, out, folder=False, monkeypatch=monkeypatch)
    # A second run replaces the section; the synthetic benchmark keeps it when it rewrites the page.
    bench_real.write_section(out, ["## Real data", "again"])
    assert out.read_text().count(bench_real.SECTION_START) == 1 and "again" in out.read_text()
    kept = bench_real.keep_section(out, "# Benchmark\n\nnew synthetic tables\n")
    assert kept.startswith("# Benchmark\n\nnew synthetic tables\n") and "again" in kept


@pytest.mark.slow
def test_real_data_mode_with_an_image_folder(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = run_real_mode(data, tmp_path / "benchmark.md", folder=True, monkeypatch=monkeypatch)
    assert "| `setup()` s |" in text and "| command to first training step s |" in text


def test_plan_is_json_and_names_the_recipe(data: Path) -> None:
    plan = plans(data)["folder"]
    assert json.loads(json.dumps(plan)) == plan
    assert plan["precision"] == "bf16-mixed" and plan["model"]["class"] == "ResNet9"
    assert plan["data"]["crop_padding"] == 4 and plan["data"]["hflip"] and plan["target"] == 0.7
