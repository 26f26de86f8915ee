"""Data files that are not what they claim: CIFAR-10 batch files that would run code or are not the official ones.

The CIFAR-10 files are unpickled by a restricted unpickler that builds numpy arrays and plain data only, and are
checked against the md5 torchvision lists for the official archive (``data.verify_md5``, on by default). The fake
files of tests/fakedata.py are not the official ones, so other tests turn the md5 check off.
"""

from __future__ import annotations

import os
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torchvision
from conftest import run_launcher
from fakedata import write_cifar10

from datamodules import CIFAR10DataModule, vision
from fileio.errors import DataError
from fileio.pickles import restricted_unpickle


class Payload:
    """Pickles to a call of ``os.system``: unpickling it runs the shell command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fake CIFAR-10 files (40 images per training batch, 30 test), written once."""
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root, n_per_batch=40, n_test=30)
    return root


def copy_of(cifar: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(cifar, root)
    return root


def plant(root: Path, marker: Path, name: str = "data_batch_1") -> Path:
    """Replace a batch file by a pickle whose loading runs ``touch MARKER`` (inside a dict, as a batch's 'data')."""
    path = root / "cifar-10-batches-py" / name
    with open(path, "wb") as f:
        pickle.dump({"data": Payload(f"touch {marker}"), "labels": [0]}, f)
    return path


def setup_cifar(root: Path, **kwargs) -> CIFAR10DataModule:
    dm = CIFAR10DataModule(data_dir=str(root), download=False, num_workers=0, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("verify_md5", [True, False], ids=["md5 check on", "md5 check off"])
def test_a_planted_cifar_pickle_never_runs_and_is_one_error(verify_md5: bool, cifar: Path, tmp_path: Path) -> None:
    root = copy_of(cifar, tmp_path)
    marker = tmp_path / "MARKER"
    path = plant(root, marker)
    with pytest.raises(DataError) as err:
        setup_cifar(root, verify_md5=verify_md5)
    msg = str(err.value)
    assert not marker.exists()
    assert "\n" not in msg and msg.startswith((f"refusing to read {path}:", f"{path} does not match"))
    if verify_md5:  # the md5 check comes first: the file is never unpickled
        assert "does not match the official CIFAR-10 archive" in msg and "Delete it" in msg
    else:  # the unpickler refuses the call by name
        assert msg == (
            f"refusing to read {path}: its pickle calls {os.system.__module__}.system, which a data file never "
            "needs, and unpickling it could run any code its author put in it. Delete it and rerun with "
            "data.download true to fetch it again."
        )


@pytest.mark.parametrize("verify_md5", [None, "false"], ids=["default", "md5 check off"])
def test_a_planted_cifar_pickle_through_the_launcher_is_one_line(
    verify_md5: str | None, cifar: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = copy_of(cifar, tmp_path)
    marker = tmp_path / "MARKER"
    path = plant(root, marker)
    runs = tmp_path / "runs"
    args = ["cifar10_lenet", "--data.data_dir", str(root), "--data.download", "false", "--runs_dir", str(runs)]
    args += ["--trainer.max_epochs", "1", "--onnx.enabled", "false", "--dashboards.enabled", "false"]
    if verify_md5:
        args += ["--data.verify_md5", verify_md5]
    code, out, err = run_launcher(args, capsys)
    assert not marker.exists()
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    first = f"error: {path} does not match the official" if verify_md5 is None else f"error: refusing to read {path}:"
    assert len(lines) == 1 and lines[0].startswith(first), err
    assert "Traceback" not in err and "epoch 0" not in out


def test_the_default_refuses_files_whose_md5_does_not_match(
    cifar: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = copy_of(cifar, tmp_path)
    folder = root / "cifar-10-batches-py"
    with pytest.raises(DataError) as err:
        setup_cifar(root)  # the fake files are not the official archive's
    want = dict(torchvision.datasets.CIFAR10.train_list)["data_batch_1"]
    assert str(err.value).startswith(f"{folder / 'data_batch_1'} does not match the official CIFAR-10 archive (md5 ")
    assert f"expected {want})" in str(err.value) and "data.verify_md5 false" in str(err.value)

    # Files whose md5 is the listed one are read, and each is hashed once per process.
    md5 = {p.name: vision.calculate_md5(p) for p in folder.iterdir()}
    listed = type(
        "CIFAR10",
        (torchvision.datasets.CIFAR10,),
        {
            "train_list": [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)],
            "test_list": [["test_batch", md5["test_batch"]]],
            "meta": {**torchvision.datasets.CIFAR10.meta, "md5": md5["batches.meta"]},
        },
    )
    monkeypatch.setattr(CIFAR10DataModule, "dataset_cls", listed)
    real_md5 = vision.calculate_md5
    hashed: list[str] = []
    monkeypatch.setattr(vision, "calculate_md5", lambda p: hashed.append(Path(p).name) or md5[Path(p).name])
    assert len(setup_cifar(root).splits["test"]) == 30
    assert sorted(hashed) == sorted(md5) and len(setup_cifar(root).splits["train"]) > 0
    assert sorted(hashed) == sorted(md5)  # the second setup hashed nothing
    # A byte changed in place (same size) is caught.
    damaged = folder / "data_batch_4"
    data = bytearray(damaged.read_bytes())
    data[-100] ^= 0xFF
    damaged.write_bytes(bytes(data))
    monkeypatch.setattr(vision, "calculate_md5", real_md5)
    with pytest.raises(DataError, match=f"^{damaged} does not match the official CIFAR-10 archive"):
        setup_cifar(root)


def _py2_str(data: bytes) -> bytes:
    """A Python 2 ``str`` in a protocol-2 pickle: SHORT_BINSTRING, or BINSTRING when longer than 255 bytes."""
    return b"U" + bytes([len(data)]) + data if len(data) < 256 else b"T" + struct.pack("<i", len(data)) + data


def py2_batch_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """``{"data": data, "labels": labels}`` as Python 2's cPickle writes a numpy 1.x uint8 array (protocol 2), the
    layout of the official CIFAR-10 files: numpy.core's names, the raw bytes as a Python 2 ``str``."""
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + _py2_str(b"b") + b"\x87R"
        b"(K\x01" + b"J" + struct.pack("<i", data.shape[0]) + b"J" + struct.pack("<i", data.shape[1]) + b"\x86"
        b"cnumpy\ndtype\n" + _py2_str(b"u1") + b"K\x00K\x01\x87R"
        b"(K\x03" + _py2_str(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        b"\x89" + _py2_str(np.ascontiguousarray(data).tobytes()) + b"tb"
    )
    items = b"".join(b"K" + bytes([label]) for label in labels)
    return b"\x80\x02}(" + _py2_str(b"data") + array + _py2_str(b"labels") + b"](" + items + b"eu."


def test_the_official_files_layout_and_every_pickle_protocol_load(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 256, (4, 3072), dtype=np.uint8)
    py2 = tmp_path / "data_batch_py2"
    py2.write_bytes(py2_batch_pickle(data, [1, 2, 3, 9]))
    entry = restricted_unpickle(py2)
    assert np.array_equal(entry["data"], data) and entry["data"].dtype == np.uint8 and entry["labels"] == [1, 2, 3, 9]
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):  # Python 3 and numpy 2: _reconstruct, or _frombuffer (5)
        path = tmp_path / f"batch_{protocol}"
        path.write_bytes(pickle.dumps({"data": data, "batch_label": b"x", "labels": [1]}, protocol=protocol))
        assert np.array_equal(restricted_unpickle(path)["data"], data)


@pytest.mark.parametrize(
    ("obj", "name"),
    [
        ({"data": [Payload("true")]}, f"{os.system.__module__}.system"),
        ({"data": np.array([Payload("true")], dtype=object)}, f"{os.system.__module__}.system"),
        ({"data": eval}, "builtins.eval"),
        ({"data": Path("x")}, f"{type(Path()).__module__}.{type(Path()).__name__}"),
    ],
    ids=["call in a list", "call in an object array", "a builtin", "a class"],
)
def test_the_restricted_unpickler_refuses_every_other_global(obj, name: str, tmp_path: Path) -> None:
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps(obj))
    with pytest.raises(DataError, match=f"^refusing to read {path}: its pickle calls {name}, "):
        restricted_unpickle(path)
