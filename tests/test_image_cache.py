"""Image folders decoded by a thread pool and cached outside the folder: same pixels, invalidation, damage."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from fakedata import write_image_folder, write_jpeg_folder
from PIL import Image

from datamodules import ImageFolderDataModule
from datamodules.image_cache import cache_file, decode_files, list_images
from fileio.errors import DataError


@pytest.fixture
def jpegs(tmp_path: Path) -> Path:
    return write_jpeg_folder(tmp_path / "cifar", ["cat", "dog", "ship"], n_per_class=10)


def folder_module(root: Path, cache_dir: Path, **kwargs) -> ImageFolderDataModule:
    args = {"image_size": 32, "val_fraction": 0.2, "test_fraction": 0.2, "cache_dir": str(cache_dir), "batch_size": 4}
    dm = ImageFolderDataModule(root=str(root), **{**args, **kwargs})
    dm.setup("fit")
    return dm


def pil_pixels(path: Path, size: int) -> torch.Tensor:
    """What the per-sample pipeline decodes: PIL, RGB, resized by torchvision's Resize on the PIL image."""
    from torchvision import transforms as T

    with Image.open(path) as img:
        img = T.Resize((size, size))(img.convert("RGB"))
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def all_images(dm: ImageFolderDataModule) -> dict[str, torch.Tensor]:
    return {name: split.x for name, split in dm.splits.items()}


def test_pool_decodes_the_pixels_pil_decodes_at_any_size_and_format(tmp_path: Path) -> None:
    jpg = write_jpeg_folder(tmp_path / "jpg", ["a", "b"], n_per_class=5, size=40)
    png = write_image_folder(tmp_path / "png", ["a"], n_per_class=4, size=(30, 20))
    Image.open(next((jpg / "a").iterdir())).convert("L").save(jpg / "a" / "gray.jpg")  # grayscale JPEG
    files = [f.path for folder in (jpg / "a", jpg / "b", png / "a") for f in list_images(folder)]
    assert len(files) == 5 + 1 + 5 + 4 and all(isinstance(f, str) for f in files)
    for size in (40, 24):
        pooled = decode_files(files, size, threads=2)
        single = decode_files(files, size, threads=1)
        assert pooled.errors == {} and torch.equal(pooled.images, single.images)
        assert pooled.images.shape == (len(files), 3, size, size) and pooled.images.dtype == torch.uint8
        for row, path in enumerate(files):
            assert torch.equal(pooled.images[row], pil_pixels(Path(path), size)), path


def test_second_run_reads_the_cache_outside_the_folder(jpegs: Path, tmp_path: Path) -> None:
    before = sorted(p.relative_to(jpegs) for p in jpegs.rglob("*"))
    first = folder_module(jpegs, tmp_path / "cache")
    assert first.cache_hits == {str(jpegs): False}
    assert sorted(p.relative_to(jpegs) for p in jpegs.rglob("*")) == before  # nothing written into the folder
    cached = cache_file(tmp_path / "cache", jpegs, 32)
    assert cached.is_file() and cached.stat().st_size > 30 * 3 * 32 * 32
    second = folder_module(jpegs, tmp_path / "cache")
    assert second.cache_hits == {str(jpegs): True}
    for name, x in all_images(first).items():
        assert torch.equal(x, second.splits[name].x) and torch.equal(first.splits[name].y, second.splits[name].y)
    assert sum(len(s) for s in second.splits.values()) == 30
    # Another split of the same folder reuses the same cache entry; another image size has its own.
    resplit = folder_module(jpegs, tmp_path / "cache", seed=3)
    assert resplit.cache_hits == {str(jpegs): True}
    small = folder_module(jpegs, tmp_path / "cache", image_size=16)
    assert small.cache_hits == {str(jpegs): False} and small.splits["train"].x.shape[-1] == 16
    off = folder_module(jpegs, tmp_path / "nocache", cache=False)
    assert not (tmp_path / "nocache").exists() and torch.equal(off.splits["test"].x, first.splits["test"].x)


def test_changed_added_and_corrupt_files_are_never_served_from_the_cache(jpegs: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = folder_module(jpegs, cache, val_fraction=0.1, test_fraction=0.1)
    # A file replaced by another image of the same size (bytes and mtime change): its new pixels are served.
    target = jpegs / "dog" / "0004.jpg"
    new_pixels = np.full((32, 32, 3), 200, dtype=np.uint8)
    Image.fromarray(new_pixels).save(target, quality=95)
    changed = folder_module(jpegs, cache, val_fraction=0.1, test_fraction=0.1)
    assert changed.cache_hits == {str(jpegs): False}
    every = torch.cat([s.x for s in changed.splits.values()])
    assert bool((every.float().mean(dim=(1, 2, 3)) - 200).abs().lt(3).any())
    before = torch.cat([s.x for s in first.splits.values()])
    assert not bool((before.float().mean(dim=(1, 2, 3)) - 200).abs().lt(3).any())
    # A file truncated in place (an interrupted copy): decoded again, reported and skipped.
    bad = jpegs / "cat" / "0002.jpg"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match=f"skipping unreadable image {bad}"):
        corrupt = folder_module(jpegs, cache, val_fraction=0.1, test_fraction=0.1)
    assert corrupt.cache_hits == {str(jpegs): False}
    assert sum(len(s) for s in corrupt.splits.values()) == 29
    # The cached entry remembers the bad file: a cache hit warns about it again, and strict mode refuses it.
    with pytest.warns(UserWarning, match=f"skipping unreadable image {bad}"):
        again = folder_module(jpegs, cache, val_fraction=0.1, test_fraction=0.1)
    assert again.cache_hits == {str(jpegs): True}
    with pytest.raises(DataError, match=f"cannot decode image {bad}.*delete or replace the file"):
        folder_module(jpegs, cache, val_fraction=0.1, test_fraction=0.1, skip_bad_images=False)
    # A file added: decoded again, one more image.
    Image.fromarray(new_pixels).save(jpegs / "ship" / "0100.jpg")
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        added = folder_module(jpegs, cache, val_fraction=0.1, test_fraction=0.1)
    assert added.cache_hits == {str(jpegs): False} and sum(len(s) for s in added.splits.values()) == 30


def test_same_size_and_time_rewrite_is_caught_by_its_stamp(jpegs: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    folder_module(jpegs, cache)
    # An edit that keeps the size but not the modification time (every editor and copy tool moves it).
    target = jpegs / "ship" / "0001.jpg"
    st = target.stat()
    data = bytearray(target.read_bytes())
    data[-3] ^= 0xFF
    target.write_bytes(bytes(data))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert folder_module(jpegs, cache).cache_hits == {str(jpegs): False}


def test_damaged_cache_file_is_rebuilt(jpegs: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = folder_module(jpegs, cache)
    path = cache_file(cache, jpegs, 32)
    raw = bytearray(path.read_bytes())
    # Flip bytes in the middle of the pixel payload: the file still loads, its checksum does not match.
    middle = len(raw) // 2
    raw[middle : middle + 64] = bytes(b ^ 0x5A for b in raw[middle : middle + 64])
    path.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="is damaged"):
        rebuilt = folder_module(jpegs, cache)
    assert rebuilt.cache_hits == {str(jpegs): False}
    assert torch.equal(rebuilt.splits["train"].x, first.splits["train"].x)
    path.write_bytes(b"not a cache file")
    with pytest.warns(UserWarning, match="is damaged"):
        folder_module(jpegs, cache)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rewritten: the next run is a clean hit
        assert folder_module(jpegs, cache).cache_hits == {str(jpegs): True}


def test_cache_inside_the_image_folder_is_refused(jpegs: Path) -> None:
    with pytest.raises(DataError, match=r"data.cache_dir .* lies inside the image folder"):
        folder_module(jpegs, jpegs / "cat" / ".cache")


def test_padded_crop_augmentation_of_image_folders(jpegs: Path, tmp_path: Path) -> None:
    for in_memory in (True, False):
        dm = folder_module(
            jpegs, tmp_path / "cache", crop_padding=4, hflip=True, in_memory=in_memory, num_workers=0, batch_size=18
        )
        x, _ = next(iter(dm.train_dataloader()))
        assert x.shape == (18, 3, 32, 32)
        black = torch.tensor([(0 - m) / s for m, s in zip(dm.mean, dm.std, strict=True)]).view(1, 3, 1, 1)
        # Shifted by up to 4 px: some sample shows the black padding along an edge.
        edges = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=-1)
        assert bool((edges - black.view(1, 3, 1)).abs().lt(1e-4).all(dim=1).any())
        assert any("RandomCrop" in type(t).__name__ for t in dm.sample_transform(train=True).transforms)


def test_cache_mistakes_through_the_launcher_are_one_line(jpegs: Path, tmp_path: Path, capsys) -> None:
    from conftest import run_launcher

    base = [
        "cifar10_fast",
        "--data.root",
        str(jpegs),
        "--runs_dir",
        str(tmp_path / "runs"),
        "--trainer.max_epochs",
        "1",
    ]
    code, _, err = run_launcher([*base, "--data.cache_dir", str(jpegs / "cache")], capsys)
    assert code == 2 and err.strip().count("\n") == 0
    assert err.startswith(f"error: data.cache_dir {jpegs / 'cache'} lies inside the image folder {jpegs}")
    code, _, err = run_launcher([*base, "--data.decode_threads", "0"], capsys)
    assert code == 2 and "data.decode_threads must be >= 1" in err and err.strip().count("\n") == 0
