"""Data no run can learn from is refused up front: one ``error:`` line naming the data, exit 2, no run folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_launcher
from fakedata import write_image_folder

from datamodules import InMemoryDataModule, Split
from fileio.errors import DataError


def test_image_folder_with_one_class_is_one_line_before_any_run_folder(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "pets", ["cat"], n_per_class=8, size=8)
    runs = tmp_path / "runs"
    cmd = [
        sys.executable, "-m", "experiments.run", "cifar10_resnet18",
        "--data", "datamodules.ImageFolderDataModule", "--data.root", str(root), "--data.image_size", "8",
        "--runs_dir", str(runs),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        f"error: image folder {root} has a single class folder 'cat': a classifier needs at least two classes, one "
        f"subfolder of images per class (e.g. {root}/cat and {root}/other)"
    )
    assert not runs.exists()


def test_digits_with_one_class_is_one_line(runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_launcher(["digits_mlp", "--runs_dir", str(runs_dir), "--data.classes", "[3]"], capsys)
    assert code == 2
    assert err.strip() == (
        "error: data.classes must name at least two digits (a classifier needs two classes), got [3]"
    )
    assert not any(runs_dir.iterdir())


def test_training_split_smaller_than_one_batch_with_drop_last(
    runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["digits_mlp", "--runs_dir", str(runs_dir), "--data.drop_last", "true", "--data.batch_size", "2000"]
    code, _, err = run_launcher(args, capsys)
    assert code == 2
    assert err.strip() == (
        "error: the training split of scikit-learn's digits has 1258 samples, fewer than one batch (data.batch_size "
        "2000) with data.drop_last true, so no training step would run; lower data.batch_size or set data.drop_last "
        "false"
    )
    assert not any(runs_dir.iterdir())


def test_drop_last_drops_the_short_batch_only_in_training(runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from datamodules import DigitsDataModule

    dm = DigitsDataModule(batch_size=100, drop_last=True)
    dm.setup()
    train = list(dm.train_dataloader())
    assert len(train) == 12 and all(len(y) == 100 for _, y in train)  # 1258 samples: the last 58 are dropped
    assert sum(len(y) for _, y in dm.val_dataloader()) == len(dm.splits["val"])


class Toy(InMemoryDataModule):
    """Three splits given by hand."""

    num_classes = 2
    input_shape = (1,)
    class_names = ["no", "yes"]

    def __init__(self, sizes: dict[str, int], labels: list[int] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.sizes, self.labels = sizes, labels

    def load_splits(self) -> dict[str, Split]:
        def split(n: int, labels: list[int] | None = None) -> Split:
            y = torch.tensor(labels) if labels is not None else torch.arange(n) % 2
            return Split(torch.zeros(n, 1), y)

        return {name: split(n, self.labels if name == "train" else None) for name, n in self.sizes.items()}


@pytest.mark.parametrize(
    ("sizes", "labels", "message"),
    [
        ({"train": 4, "val": 0, "test": 2}, None, "the validation split of Toy is empty after the split fractions"),
        ({"train": 4, "val": 2, "test": 0}, None, "the test split of Toy is empty after the split fractions"),
        (
            {"train": 3, "val": 2, "test": 2},
            [1, 1, 1],
            "the training split of Toy holds a single class ('yes', 3 samples): a classifier needs examples of at "
            "least two classes",
        ),
    ],
    ids=["empty val", "empty test", "one class in training"],
)
def test_split_checks_name_the_split_and_the_data(
    sizes: dict[str, int], labels: list[int] | None, message: str
) -> None:
    with pytest.raises(DataError, match=None) as err:
        Toy(sizes, labels).setup()
    assert str(err.value).startswith(message)
