"""Datamodules: torchvision datasets from fake files, both pipelines, DDP shards, data errors, image folders.

Tables have their own file, tests/test_tabular.py.
"""

from __future__ import annotations

import pickle
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from conftest import TINY_SETTINGS
from fakedata import MNIST_FILES, write_cifar10, write_image_folder, write_mnist

from datamodules import (
    BatchLoader,
    CIFAR10DataModule,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
    Split,
)
from datamodules.image_folder import random_resized_crop_flip
from experiments.api import launch
from fileio.errors import DataError

VISION = {
    "mnist": (MNISTDataModule, (1, 28, 28), (0.1307,), (0.3081,)),
    "fashion": (FashionMNISTDataModule, (1, 28, 28), (0.2860,), (0.3530,)),
    "cifar": (CIFAR10DataModule, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_mnist(root, n_train=200, n_test=50)
    write_mnist(root, n_train=200, n_test=50, fashion=True, seed=1)
    write_cifar10(root, n_per_batch=40, n_test=30)
    return root


def make(name: str, root: Path, **kwargs) -> MNISTDataModule | CIFAR10DataModule:
    cls = VISION[name][0]
    kwargs.setdefault("num_workers", 0)
    if cls is CIFAR10DataModule:
        kwargs.setdefault("verify_md5", False)  # fake files: not the official archive's (tests/test_data_faults.py)
    dm = cls(data_dir=str(root), download=False, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def batches(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*list(loader), strict=True)
    return torch.cat(xs), torch.cat(ys)


# -- torchvision image datasets --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(VISION))
def test_vision_reads_fake_files_with_dataset_normalization(name: str, data_dir: Path) -> None:
    cls, shape, mean, std = VISION[name]
    dm = make(name, data_dir)
    assert dm.num_classes == 10 and dm.input_shape == shape and len(dm.class_names) == 10
    assert (dm.mean, dm.std) == (mean, std)
    n_train = 200
    assert {k: len(v) for k, v in dm.splits.items()} == {
        "train": n_train - 20,
        "val": 20,
        "test": 50 if shape[0] == 1 else 30,
    }
    for split in dm.splits.values():
        assert split.x.dtype == torch.uint8 and split.x.shape[1:] == shape
        assert split.y.dtype == torch.int64 and split.y.min() >= 0 and split.y.max() <= 9
    x, y = batches(dm.val_dataloader())
    assert x.dtype == torch.float32 and x.shape == (20, *shape) and torch.equal(y, dm.splits["val"].y)
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    torch.testing.assert_close(x, (dm.splits["val"].x.float() / 255 - m) / s)
    # Configurable statistics, e.g. the (0.5, 0.5) of the LeNet recipe; the data's own statistics standardize it.
    raw = dm.splits["train"].x.float() / 255
    own = make(name, data_dir, mean=raw.mean((0, 2, 3)).tolist(), std=raw.std((0, 2, 3)).tolist(), augment=False)
    tx, _ = batches(own.train_dataloader())
    assert abs(tx.mean()) < 1e-3 and abs(tx.std() - 1) < 1e-2


def test_cifar_pixels_and_class_names_come_from_the_pickles(data_dir: Path) -> None:
    dm = make("cifar", data_dir)
    with open(data_dir / "cifar-10-batches-py" / "test_batch", "rb") as f:
        batch = pickle.load(f)
    assert torch.equal(dm.splits["test"].x[3], torch.from_numpy(batch["data"][3].reshape(3, 32, 32)))
    assert dm.splits["test"].y.tolist() == batch["labels"]
    assert dm.class_names[:2] == ["airplane", "automobile"]
    assert dm.augment and dm.crop_padding == 4 and dm.hflip  # CIFAR's standard augmentation is on by default


def test_mnist_test_split_is_the_official_one_and_images_match_the_idx_file(data_dir: Path) -> None:
    dm = make("mnist", data_dir)
    raw = (data_dir / "MNIST" / "raw" / MNIST_FILES[False][0]).read_bytes()
    first = torch.frombuffer(bytearray(raw[16 : 16 + 784]), dtype=torch.uint8).view(1, 28, 28)
    assert torch.equal(dm.splits["test"].x[0], first)
    assert not dm.augment and not dm.hflip  # no augmentation by default for digits
    with pytest.raises(ValueError, match="hflip"):
        MNISTDataModule(data_dir=str(data_dir), hflip=True)
    assert FashionMNISTDataModule(data_dir=str(data_dir), hflip=True).hflip  # a mirrored shoe is still a shoe


def test_val_split_is_deterministic_disjoint_and_from_the_training_set(data_dir: Path) -> None:
    a, b, c = make("mnist", data_dir, seed=3), make("mnist", data_dir, seed=3), make("mnist", data_dir, seed=4)
    train, val = a.train_val_indices(200)
    assert torch.equal(val, b.train_val_indices(200)[1]) and not torch.equal(val, c.train_val_indices(200)[1])
    assert len(set(train.tolist()) & set(val.tolist())) == 0 and len(train) + len(val) == 200
    assert torch.equal(a.splits["val"].x, b.splits["val"].x)
    counted = make("mnist", data_dir, val_size=50)
    assert len(counted.splits["val"]) == 50 and len(counted.splits["train"]) == 150
    with pytest.raises(DataError, match="val_size"):
        make("mnist", data_dir, val_size=200)


@pytest.mark.parametrize("name", ["mnist", "cifar"])
def test_memory_and_torchvision_pipelines_give_the_same_samples(name: str, data_dir: Path) -> None:
    mem = make(name, data_dir, augment=False, batch_size=32)
    tv = make(name, data_dir, augment=False, batch_size=32, pipeline="torchvision")
    assert tv.per_sample and isinstance(tv.val_dataloader(), torch.utils.data.DataLoader)
    for split in ("val", "test"):  # same samples, same order, same normalization
        (mx, my), (tx, ty) = (
            batches(getattr(mem, f"{split}_dataloader")()),
            batches(getattr(tv, f"{split}_dataloader")()),
        )
        assert torch.equal(my, ty)
        torch.testing.assert_close(mx, tx, atol=1e-5, rtol=0)
    # One training epoch covers the same set of samples (in a different shuffled order).
    (mx, my), (tx, ty) = batches(mem.train_dataloader()), batches(tv.train_dataloader())
    w = torch.randn(mx[0].numel())
    key_m, key_t = (mx.flatten(1) @ w + 1000 * my).sort().values, (tx.flatten(1) @ w + 1000 * ty).sort().values
    torch.testing.assert_close(key_m, key_t, atol=1e-3, rtol=0)


@pytest.mark.parametrize("pipeline", ["memory", "torchvision"])
def test_cifar_augmentation_shapes_and_value_range(pipeline: str, data_dir: Path) -> None:
    dm = make("cifar", data_dir, pipeline=pipeline, batch_size=64)
    plain = make("cifar", data_dir, augment=False, batch_size=64)
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.float32
    m, s = torch.tensor(dm.mean).view(1, 3, 1, 1), torch.tensor(dm.std).view(1, 3, 1, 1)
    lo, hi = (0 - m) / s, (1 - m) / s
    assert bool(((x >= lo - 1e-5) & (x <= hi + 1e-5)).all())
    # Zero padding shows up as pixels at the normalized value of black in some crops.
    assert bool((x - lo).abs().lt(1e-5).all(dim=1).any())
    if pipeline == "memory":  # augmentation is reproducible per seed and epoch, and actually changes the batch
        again, _ = next(iter(make("cifar", data_dir, batch_size=64).train_dataloader()))
        ref, _ = next(iter(plain.train_dataloader()))
        assert torch.equal(x, again) and not torch.equal(x, ref)


def test_fake_mnist_is_learnable(data_dir: Path) -> None:
    torch.manual_seed(0)
    dm = make("mnist", data_dir, batch_size=32)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(8):
        for x, y in dm.train_dataloader():
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    x, y = batches(dm.val_dataloader())
    assert (model(x).argmax(1) == y).float().mean() > 0.9


# -- DDP shards ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [40, 43])
def test_batch_loader_ddp_shards_are_disjoint_and_complete(n: int) -> None:
    split = Split(torch.arange(n).view(n, 1), torch.arange(n))
    world = 4
    shards = [BatchLoader(split, 5, shuffle=True, seed=7, rank=r, world_size=world).indices(2) for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # equal counts keep collectives in step
    seen = torch.cat(shards).tolist()
    assert set(seen) == set(range(n))
    if n % world == 0:
        assert len(seen) == n  # disjoint: no sample on two ranks
    assert not torch.equal(shards[0], BatchLoader(split, 5, shuffle=True, seed=7, world_size=world).indices(3))


def test_datamodule_loaders_shard_by_trainer_rank(data_dir: Path) -> None:
    dm = make("mnist", data_dir, batch_size=16)
    seen = []
    for rank in range(3):
        dm.trainer = SimpleNamespace(
            global_rank=rank, world_size=3, current_epoch=1, strategy=SimpleNamespace(root_device=torch.device("cpu"))
        )
        seen.append(torch.cat([y for _, y in dm.train_dataloader()]))
        dm.trainer = None
    assert sum(len(s) for s in seen) == len(dm.splits["train"])  # 180 samples, 60 per rank
    assert torch.equal(torch.cat(seen).sort().values, dm.splits["train"].y.sort().values)


# -- missing and corrupt files ---------------------------------------------------------------------------------------
MISSING = {
    "mnist": ("MNIST/raw", "train-images-idx3-ubyte", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
    "fashion": ("FashionMNIST/raw", "t10k-labels-idx1-ubyte", "http://fashion-mnist.s3-website.eu-central-1"),
    "cifar": ("cifar-10-batches-py", "data_batch_5", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
}


@pytest.mark.parametrize("download", [False, True])
@pytest.mark.parametrize("name", list(MISSING))
def test_missing_files_offline_give_one_message_with_folder_files_and_url(
    name: str, download: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    folder, file, url = MISSING[name]
    dm = VISION[name][0](data_dir=str(tmp_path), download=download)
    with pytest.raises(DataError) as err:
        dm.prepare_data()
        dm.setup("fit")
    msg = str(err.value)
    assert str(tmp_path / folder) in msg and file in msg and url in msg and "\n" not in msg
    assert ("download failed" in msg and "name resolution" in msg) if download else "data.download is false" in msg


def test_present_files_never_touch_the_network(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("network touched")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    for cls, *_ in VISION.values():
        fake = {"verify_md5": False} if cls is CIFAR10DataModule else {}
        dm = cls(data_dir=str(data_dir), download=True, num_workers=0, **fake)
        dm.prepare_data()
        dm.setup("fit")
        assert len(dm.splits["test"]) > 0


def _copy(src: Path, dst: Path) -> Path:
    for path in src.rglob("*"):
        if path.is_file():
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    return dst


@pytest.mark.parametrize(
    ("name", "file", "damage"),
    [
        ("mnist", "MNIST/raw/train-images-idx3-ubyte", lambda b: b[: len(b) // 2]),
        ("mnist", "MNIST/raw/train-labels-idx1-ubyte", lambda b: b[:-7]),
        ("fashion", "FashionMNIST/raw/t10k-images-idx3-ubyte", lambda b: b"\x12\x34" + b[2:]),
        ("mnist", "MNIST/raw/t10k-labels-idx1-ubyte", lambda b: b[:6]),
        ("cifar", "cifar-10-batches-py/data_batch_3", lambda b: b[: len(b) // 3]),
        ("cifar", "cifar-10-batches-py/test_batch", lambda b: b"not a pickle at all" * 10),
        ("cifar", "cifar-10-batches-py/batches.meta", lambda b: b[:10]),
    ],
)
def test_corrupt_files_raise_data_error_naming_the_file(
    name: str, file: str, damage, data_dir: Path, tmp_path: Path
) -> None:
    root = _copy(data_dir, tmp_path / "copy")
    path = root / file
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match="truncated or corrupt") as err:
        make(name, root)
    assert str(path) in str(err.value) and "Delete it" in str(err.value)


# -- image folders ---------------------------------------------------------------------------------------------------
@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    root = write_image_folder(tmp_path / "imgs", ["cat", "dog", "fox"], n_per_class=8, size=(30, 20))
    (root / "dog" / "img_003.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # corrupt
    (root / "notes.txt").write_text("not a class folder")
    return root


def test_image_folder_memory_and_per_sample_paths_agree_and_skip_bad_images(image_root: Path) -> None:
    bad = image_root / "dog" / "img_003.png"
    kwargs = {"root": str(image_root), "image_size": 16, "augment": False, "num_workers": 0, "batch_size": 4}
    mem = ImageFolderDataModule(**kwargs)
    assert mem.num_classes == 3 and mem.input_shape == (3, 16, 16) and mem.class_names == ["cat", "dog", "fox"]
    with pytest.warns(UserWarning, match=str(bad)):
        mem.setup("fit")
    assert not mem.per_sample and mem.splits["train"].x.dtype == torch.uint8
    assert sum(len(s) for s in mem.splits.values()) == 23  # 24 files, one unreadable
    per = ImageFolderDataModule(**kwargs, in_memory=None, max_memory_mb=0.001)
    with pytest.warns(UserWarning, match=str(bad)):
        per.setup("fit")
    assert per.per_sample
    for split in ("val", "test"):
        (mx, my), (px, py) = (
            batches(getattr(mem, f"{split}_dataloader")()),
            batches(getattr(per, f"{split}_dataloader")()),
        )
        assert torch.equal(my, py) and mx.shape[1:] == (3, 16, 16)
        torch.testing.assert_close(mx, px, atol=1e-5, rtol=0)
    strict = ImageFolderDataModule(**kwargs, skip_bad_images=False)
    with pytest.raises(DataError, match=str(bad)):
        strict.setup("fit")


def test_image_folder_augmentation_and_separate_val_dir(image_root: Path, tmp_path: Path) -> None:
    val_dir = write_image_folder(tmp_path / "val", ["cat", "fox"], n_per_class=2, size=20, seed=5)
    for in_memory in (True, False):
        dm = ImageFolderDataModule(
            root=str(image_root), val_dir=str(val_dir), image_size=16, in_memory=in_memory, num_workers=0, batch_size=6
        )
        with pytest.warns(UserWarning):
            dm.setup("fit")
        x, y = next(iter(dm.train_dataloader()))
        assert x.shape == (6, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
        vx, vy = batches(dm.val_dataloader())
        assert sorted(vy.tolist()) == [0, 0, 2, 2]
        m, s = torch.tensor(dm.mean).view(1, 3, 1, 1), torch.tensor(dm.std).view(1, 3, 1, 1)
        assert bool(((x >= (0 - m) / s - 1e-4) & (x <= (1 - m) / s + 1e-4)).all())
    imgs = torch.rand(5, 3, 12, 12)
    out = random_resized_crop_flip(imgs, (0.3, 0.6), True, torch.Generator().manual_seed(0))
    assert out.shape == imgs.shape and out.min() >= 0 and out.max() <= 1 and not torch.allclose(out, imgs)
    again = random_resized_crop_flip(imgs, (0.3, 0.6), True, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # reproducible from the generator
    flat = torch.full((2, 3, 12, 12), 0.25)  # crops of a uniform image stay uniform (no padding leaks in)
    torch.testing.assert_close(random_resized_crop_flip(flat, (0.1, 1.0), True), flat)


def test_image_folder_missing_or_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="image folder not found"):
        _ = ImageFolderDataModule(root=str(tmp_path / "nope")).num_classes
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    with pytest.raises(DataError, match="no class folders"):
        _ = ImageFolderDataModule(root=str(tmp_path / "flat")).num_classes
    (tmp_path / "flat" / "empty").mkdir()
    with pytest.raises(DataError, match="has a single class folder 'empty'"):
        _ = ImageFolderDataModule(root=str(tmp_path / "flat")).num_classes
    write_image_folder(tmp_path / "flat", ["full"], n_per_class=2, size=8)
    with pytest.raises(DataError, match="empty has no images"):
        ImageFolderDataModule(root=str(tmp_path / "flat")).setup("fit")


def test_random_affine_moves_content_fills_with_black_and_is_reproducible() -> None:
    from datamodules.augment import random_affine

    x = torch.zeros(4, 1, 9, 9)
    x[:, :, 4, 4] = 1.0  # one bright pixel at the centre of a black image
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(random_affine(x, 0, 0, 0, gen=gen), x)  # all ranges 0: the identity
    # A sub-pixel shift spreads the bright pixel over its neighbours (bilinear) but keeps its total brightness.
    shifted = random_affine(x, 0, 0, 1.0, gen=torch.Generator().manual_seed(1))
    assert not torch.equal(shifted, x)
    torch.testing.assert_close(shifted.sum(dim=(1, 2, 3)), torch.ones(4))
    moved = random_affine(x, 30, 0.2, 1.0, fill=-0.5, gen=torch.Generator().manual_seed(2))
    again = random_affine(x, 30, 0.2, 1.0, fill=-0.5, gen=torch.Generator().manual_seed(2))
    assert torch.equal(moved, again) and not torch.equal(moved, x)
    # Rotation about the centre keeps the centre pixel bright; corners come from outside the image: the fill.
    rotated = random_affine(x, 45, 0, 0, fill=-0.5, gen=torch.Generator().manual_seed(3))
    assert torch.allclose(rotated[:, 0, 4, 4], torch.ones(4), atol=1e-5)
    corners = rotated[:, 0, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert bool(corners.lt(0).any())  # some corner of some sample was uncovered and took the fill value
    assert float(rotated.min()) >= -0.5 - 1e-6


@pytest.mark.parametrize("pipeline", ["memory", "torchvision"])
def test_rotation_scale_translate_augment_training_batches_only(pipeline: str, data_dir: Path) -> None:
    kwargs = dict(pipeline=pipeline, batch_size=32, augment=True, crop_padding=0, rotation=20, scale=0.1, translate=2)
    dm = make("mnist", data_dir, **kwargs)
    plain = make("mnist", data_dir, pipeline=pipeline, batch_size=32, augment=False)
    x, y = next(iter(dm.train_dataloader()))
    ref, ref_y = next(iter(plain.train_dataloader()))
    black = (0 - dm.mean[0]) / dm.std[0]
    assert x.shape == ref.shape and x.dtype == torch.float32
    assert float(x.min()) >= black - 1e-4 and float(x.max()) <= (1 - dm.mean[0]) / dm.std[0] + 1e-4
    if pipeline == "memory":  # same order, different pixels; ink is roughly preserved
        assert torch.equal(y, ref_y) and not torch.allclose(x, ref)
        ink, ref_ink = (x - black).sum(dim=(1, 2, 3)), (ref - black).sum(dim=(1, 2, 3))
        assert float(((ink - ref_ink) / ref_ink).abs().median()) < 0.25
    else:
        assert any("RandomAffine" in type(t).__name__ for t in dm.sample_transform(train=True).transforms)
    vx, _ = batches(dm.val_dataloader())
    pvx, _ = batches(plain.val_dataloader())
    assert torch.equal(vx, pvx)  # evaluation batches are never augmented


def test_augmentation_ranges_are_checked() -> None:
    from datamodules import DigitsDataModule

    for bad in ({"rotation": -1}, {"scale": 1.0}, {"translate": -0.5}):
        with pytest.raises(ValueError, match="data.rotation and data.translate must be >= 0"):
            DigitsDataModule(augment=True, **bad)


class ValBatchSizes(L.Callback):
    """Records the size of every validation batch, and whether it came in the sanity check."""

    def __init__(self) -> None:
        self.seen: list[tuple[bool, int]] = []

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.seen.append((trainer.sanity_checking, len(batch[0])))


@pytest.mark.parametrize("sanity_batch_size", [8, None])
def test_sanity_check_batches_are_cut_and_validation_batches_are_whole(sanity_batch_size: int | None) -> None:
    from datamodules import DigitsDataModule
    from lightning_models import MLPClassifier

    dm = DigitsDataModule(batch_size=32, eval_batch_size=100, sanity_batch_size=sanity_batch_size)
    dm.setup()
    model = MLPClassifier(num_classes=dm.num_classes, input_shape=dm.input_shape, hidden=[16])
    sizes = ValBatchSizes()
    trainer = L.Trainer(
        max_epochs=1, num_sanity_val_steps=2, callbacks=[sizes], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    sanity = [n for checking, n in sizes.seen if checking]
    validation = [n for checking, n in sizes.seen if not checking]
    assert sanity == ([8, 8] if sanity_batch_size else [100, 100])
    assert validation[0] == 100 and sum(validation) == len(dm.splits["val"])
    assert trainer.callback_metrics["val/acc"] > 0  # the sanity batches were not counted twice or left behind


def test_launcher_default_sanity_check_is_one_cut_batch(runs_dir: Path) -> None:
    sizes = ValBatchSizes()
    launch("digits_mlp", TINY_SETTINGS, runs_dir=runs_dir, callbacks=[sizes])
    seen = sizes.seen
    assert [n for checking, n in seen if checking] == [8]  # _defaults.yaml: one batch, of data.sanity_batch_size
    assert all(n > 8 for checking, n in seen if not checking)  # validation itself sees whole batches


def test_sanity_batch_size_is_checked() -> None:
    from datamodules import DigitsDataModule

    with pytest.raises(ValueError, match="data.sanity_batch_size must be >= 1 or null"):
        DigitsDataModule(sanity_batch_size=0)


def test_package_imports_its_modules_on_first_use() -> None:
    import subprocess
    import sys

    code = (
        "import sys, datamodules; assert 'pandas' not in sys.modules, 'pandas at import';"
        "datamodules.MNISTDataModule; assert 'pandas' not in sys.modules, 'pandas for images';"
        "from datamodules import CSVDataModule; assert 'pandas' in sys.modules;"
        "assert 'CSVDataModule' in dir(datamodules) and sorted(datamodules.__all__) == datamodules.__all__;"
        "\ntry:\n    datamodules.NoSuchModule\nexcept AttributeError as e:\n    print(e)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "has no attribute 'NoSuchModule'" in out
