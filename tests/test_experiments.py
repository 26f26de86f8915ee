"""Every named experiment config runs through the real launcher on tiny data, in-process.

Configs are discovered with a glob (``_*.yaml`` are shared defaults, not experiments), so a new config is covered
the moment it is added. Datasets that are read from ``data_dir`` get small fake files in the real on-disk formats;
image-folder experiments get a folder of fake JPEGs laid out like the CIFAR-10 JPEG folder.
"""

from __future__ import annotations

import importlib
import inspect
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from fakedata import write_cifar10, write_jpeg_folder, write_mnist, write_sst2, write_tinyshakespeare

from experiments.api import launch
from experiments.launcher.recipes import CONFIG_DIR

CONFIGS = sorted(p for p in CONFIG_DIR.glob("*.yaml") if not p.name.startswith("_"))

#: Keep every run to a couple of small batches; ONNX export and dashboards have tests of their own.
FAST: dict[str, Any] = {
    "trainer.max_epochs": 1,
    "trainer.limit_train_batches": 2,
    "trainer.limit_val_batches": 1,
    "trainer.limit_test_batches": 1,
    "trainer.num_sanity_val_steps": 0,
    # Validate after the second step: at the end of the 2-batch epoch, and in step-based (language model) configs.
    "trainer.val_check_interval": 2,
    "data.batch_size": 4,
    "data.eval_batch_size": 8,
    "onnx.enabled": False,
    "dashboards.enabled": False,
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder with fake MNIST, Fashion-MNIST, CIFAR-10 and Tiny Shakespeare files for every config that reads
    ``data_dir``."""
    root = tmp_path_factory.mktemp("data")
    write_mnist(root, n_train=60, n_test=20)
    write_mnist(root, n_train=60, n_test=20, fashion=True)
    write_cifar10(root, n_per_batch=12, n_test=20)
    write_tinyshakespeare(root)
    write_sst2(root)
    write_jpeg_folder(root / "cifar10-train", n_per_class=4)
    return root


def datamodule_class(config: Path) -> type:
    """The datamodule class a config names under ``data.class_path``."""
    class_path = yaml.safe_load(config.read_text())["data"]["class_path"]
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def takes(cls: type, arg: str) -> bool:
    """Whether the class (or a base whose ``__init__`` it forwards to) accepts the argument ``arg``."""
    return any(arg in inspect.signature(c.__init__).parameters for c in cls.__mro__ if "__init__" in vars(c))


def test_configs_are_discovered() -> None:
    names = {p.stem for p in CONFIGS}
    assert {"mnist_mlp", "mnist_cnn", "mnist_cnn_classic", "cifar10_lenet", "cifar10_resnet18"} <= names
    assert {"mnist_fast", "cifar10_fast", "cifar10_lenet_folder", "cifar10_resnet18_folder"} <= names
    assert {"tabular_regression", "binary_mlp", "digits_backprop"} <= names
    for path in CONFIGS:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# ") and len(first) > 10, f"{path.name}: first line must be a '# description'"


@pytest.mark.parametrize("config", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_experiment_runs_on_tiny_data(config: Path, data_dir: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    settings = dict(FAST)
    if takes(datamodule_class(config), "text_column"):  # text classification: SST-2 in GLUE's layout
        settings.update({"data.data_dir": str(data_dir / "sst2"), "data.text_column": "sentence"})
    elif takes(datamodule_class(config), "data_dir"):
        settings.update({"data.data_dir": str(data_dir), "data.download": False})
    if takes(datamodule_class(config), "verify_md5"):
        settings["data.verify_md5"] = False  # the fake CIFAR-10 files are not the official archive's
    if takes(datamodule_class(config), "root"):
        settings["data.root"] = str(data_dir / "cifar10-train")
    result = launch(config.stem, settings, runs_dir=runs)

    run = runs / config.stem / "version_0"
    assert result.run_dir == run and (run / "config.yaml").is_file()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["class_path"] == yaml.safe_load(config.read_text())["model"]["class_path"]
    ckpts = {p.name for p in (run / "checkpoints").iterdir()}
    assert "last.ckpt" in ckpts
    assert any(name.startswith("best-") for name in ckpts), ckpts
    assert result.best_checkpoint is not None and result.best_checkpoint.name in ckpts

    # The best checkpoint was tested: finite test metrics, the loss among them.
    metrics = result.test_metrics
    assert "test/loss" in metrics and len(metrics) >= 2, metrics
    assert all(math.isfinite(v) for v in metrics.values()), metrics
