"""Tiny datasets written in exactly the on-disk formats torchvision reads, so the real readers run in tests.

Every image carries a class-dependent bright blob (position per class, colour per class for RGB) over faint noise,
so a small model learns the classes within a few epochs. All functions are deterministic given ``seed``.
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def blob_images(labels: np.ndarray, size: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    """``(N, size, size, channels)`` uint8 images: a Gaussian blob at a class-dependent spot on a ring, plus noise.

    For RGB images the blob colour depends on the class too.
    """
    n = len(labels)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = 2 * math.pi * labels / 10.0
    radius = size * 0.28
    cy = size / 2 + radius * np.sin(angle) + rng.uniform(-1, 1, n)
    cx = size / 2 + radius * np.cos(angle) + rng.uniform(-1, 1, n)
    sigma = size / 9
    blob = np.exp(-((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2) / (2 * sigma**2))  # (N, S, S)
    if channels == 1:
        colour = np.ones((n, 1), dtype=np.float32)
    else:
        hue = labels[:, None] / 10.0 + np.array([0.0, 1 / 3, 2 / 3])
        colour = 0.55 + 0.45 * np.cos(2 * math.pi * hue)  # (N, 3), distinct per class
    img = 230 * blob[..., None] * colour[:, None, None, :] + rng.uniform(0, 25, (n, size, size, channels))
    return np.clip(img, 0, 255).astype(np.uint8)


def _labels(n: int, rng: np.random.Generator) -> np.ndarray:
    """Balanced labels 0-9 in random order."""
    return rng.permutation(np.arange(n) % 10)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX format (big-endian header: magic ``0x08`` type and rank, then the dims)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_mnist(root: str | Path, n_train: int = 200, n_test: int = 50, fashion: bool = False, seed: int = 0) -> Path:
    """Write MNIST (or Fashion-MNIST) IDX files under ``root/MNIST/raw`` (``root/FashionMNIST/raw``).

    torchvision reads the uncompressed files (it gunzips the downloaded ``.gz`` archives), so that is what is
    written: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte``.

    Returns:
        The ``raw`` folder.
    """
    rng = np.random.default_rng(seed)
    raw = Path(root) / ("FashionMNIST" if fashion else "MNIST") / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for train, n in ((True, n_train), (False, n_test)):
        labels = _labels(n, rng)
        images = blob_images(labels, 28, 1, rng)[..., 0]  # (N, 28, 28)
        image_file, label_file = MNIST_FILES[train]
        write_idx(raw / image_file, images)
        write_idx(raw / label_file, labels.astype(np.uint8))
    return raw


def _write_pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_cifar10(root: str | Path, n_per_batch: int = 40, n_test: int | None = None, seed: int = 0) -> Path:
    """Write CIFAR-10's python pickles under ``root/cifar-10-batches-py``.

    Five training batches of ``n_per_batch`` images, a ``test_batch`` of ``n_test`` (default ``n_per_batch``) and
    ``batches.meta``, each a dict as in the official archive: ``data`` ``(N, 3072)`` uint8 rows in CHW order and
    ``labels`` a list of ints.

    Returns:
        The ``cifar-10-batches-py`` folder.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" and n_test is not None else n_per_batch
        labels = _labels(n, rng)
        images = blob_images(labels, 32, 3, rng)  # (N, 32, 32, 3)
        data = images.transpose(0, 3, 1, 2).reshape(n, 3072)
        batch = {
            "batch_label": name,
            "labels": labels.tolist(),
            "data": data,
            "filenames": [f"{name}_{i:05d}.png" for i in range(n)],
        }
        _write_pickle(folder / name, batch)
    _write_pickle(folder / "batches.meta", {"num_cases_per_batch": n_per_batch, "label_names": CIFAR10_CLASSES})
    return folder


def write_image_folder(
    root: str | Path, classes: list[str], n_per_class: int = 6, size: int | tuple[int, int] = 24, seed: int = 0
) -> Path:
    """Write ``root/CLASS/img_XXX.png`` RGB images (``size`` pixels, or ``(width, height)``), one folder per class.

    Returns:
        ``root``.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = (size, size) if isinstance(size, int) else size
    root = Path(root)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        labels = np.full(n_per_class, k % 10)
        images = blob_images(labels, max(width, height), 3, rng)[:, :height, :width]
        for i, img in enumerate(images):
            Image.fromarray(np.ascontiguousarray(img)).save(root / name / f"img_{i:03d}.png")
    return root


def titanic_rows(n: int = 400, seed: int = 0) -> list[dict[str, str]]:
    """Rows in the layout of the public Titanic table: text categories, numbers, gaps, an identifier column.

    ``survived`` depends on ``sex``, ``pclass`` and ``age`` (a model can learn it); ``age`` has ~20% gaps,
    ``embarked`` a few, ``deck`` mostly; ``name`` is distinct per row. Cells are strings as a CSV file holds them
    (empty for a gap).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        sex = "female" if rng.random() < 0.36 else "male"
        pclass = int(rng.choice([1, 2, 3], p=[0.24, 0.21, 0.55]))
        age = float(np.clip(rng.normal(30, 14), 0.5, 80))
        score = 2.2 * (sex == "female") - 0.9 * (pclass - 2) - 0.02 * (age - 30) - 0.6 + rng.normal(0, 0.6)
        fare = round(float(rng.lognormal(4.0 - 0.6 * pclass, 0.5)), 2)
        rows.append(
            {
                "survived": str(int(score > 0)),
                "pclass": str(pclass),
                "name": f"Passenger {i}, Mr. {chr(65 + i % 26)}{i}",
                "sex": sex,
                "age": "" if rng.random() < 0.2 else f"{age:.1f}",
                "sibsp": str(int(rng.poisson(0.5))),
                "fare": str(fare),
                "embarked": "" if rng.random() < 0.01 else str(rng.choice(["S", "C", "Q"], p=[0.72, 0.19, 0.09])),
                "deck": str(rng.choice(list("ABCDEFG"))) if rng.random() < 0.25 else "",
                "alone": str(rng.random() < 0.6),
            }
        )
    return rows


def write_titanic(path: str | Path, n: int = 400, seed: int = 0, rows: list[dict[str, str]] | None = None) -> Path:
    """Write :func:`titanic_rows` (or the given rows) as a CSV file with a header row."""
    import csv

    rows = rows if rows is not None else titanic_rows(n, seed)
    path = Path(path)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


SHAKESPEARE = """First Citizen:
Before we proceed any further, hear me speak.

All:
Speak, speak.

First Citizen:
You are all resolved rather to die than to famish?

All:
Resolved. resolved.

ROMEO:
But, soft! what light through yonder window breaks?
It is the east, and Juliet is the sun.

"""


def write_tinyshakespeare(root: str | Path, repeats: int = 30) -> Path:
    """Write ``root/tinyshakespeare/input.txt`` as the Tiny Shakespeare download leaves it: plain UTF-8 text of
    speaker lines and verse (here a few of its lines, repeated).

    Returns:
        The file.
    """
    path = Path(root) / "tinyshakespeare" / "input.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SHAKESPEARE * repeats, encoding="utf-8")
    return path


CODE = '''import os


def walk(root: str) -> list[str]:
    """Every file under root."""
    found = []
    for folder, _, names in os.walk(root):
        found += [os.path.join(folder, n) for n in names]
    return found


class Counter:
    def __init__(self) -> None:
        self.count = 0

    def add(self, n: int = 1) -> int:
        self.count += n
        return self.count
'''


def write_code_corpus(root: str | Path, n_files: int = 12, repeats: int = 3) -> Path:
    """A folder of small Python files (``pkg_K/mod_K.py`` and ``top_0.py``), variants of :data:`CODE`, as a text
    corpus on disk.

    Returns:
        ``root``.
    """
    root = Path(root)
    for i in range(n_files):
        folder = root / f"pkg_{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        body = (CODE.replace("walk", f"walk_{i}").replace("Counter", f"Counter{i}") + "\n") * repeats
        (folder / f"mod_{i}.py").write_text(f"# module {i}\n" + body)
    (root / "top_0.py").write_text(CODE * repeats)
    return root


def write_jpeg_folder(
    root: str | Path, classes: list[str] | None = None, n_per_class: int = 6, size: int = 32, seed: int = 0
) -> Path:
    """Write ``root/CLASS/NNNN.jpg`` RGB JPEGs, the layout of the CIFAR-10 JPEG folders (``cat/0000.jpg``...).

    Returns:
        ``root``.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(root)
    for k, name in enumerate(classes or CIFAR10_CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(blob_images(np.full(n_per_class, k % 10), size, 3, rng)):
            Image.fromarray(img).save(root / name / f"{i:04d}.jpg", quality=90)
    return root


#: Words of the fake sentiment data and the tiny WordPiece vocabulary (the special tokens first, as BERT's).
POSITIVE = ("good", "great", "fun", "moving", "brilliant", "funny", "warm")
NEGATIVE = ("bad", "dull", "boring", "awful", "flat", "tedious", "cold")
FILLER = ("the", "a", "film", "movie", "plot", "is", "was", "and", "very", "it", "story", "cast", ".", ",", "!")
WORDPIECE = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER, "##s", "##ly", "##ing")


def sentiment_rows(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """``n`` short phrases of filler words with one sentiment word each, labelled 1 (positive) or 0."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = list(rng.choice(FILLER, size=int(rng.integers(1, 9))))
        words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(POSITIVE if label else NEGATIVE)))
        rows.append((" ".join(words), label))
    return rows


def write_sst2(root: str | Path, n_train: int = 80, n_dev: int = 24, seed: int = 0) -> Path:
    """Write ``root/sst2`` as GLUE distributes SST-2: ``train.tsv`` and ``dev.tsv`` (``sentence<TAB>label`` with a
    header) and an unlabelled ``test.tsv`` (``index<TAB>sentence``).

    Returns:
        The folder.
    """
    folder = Path(root) / "sst2"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n, offset in (("train", n_train, 0), ("dev", n_dev, 1)):
        lines = [f"{s} \t{y}" for s, y in sentiment_rows(n, seed + offset)]
        (folder / f"{name}.tsv").write_text("sentence\tlabel\n" + "\n".join(lines) + "\n", encoding="utf-8")
    test = [f"{i}\t{s}" for i, (s, _) in enumerate(sentiment_rows(10, seed + 2))]
    (folder / "test.tsv").write_text("index\tsentence\n" + "\n".join(test) + "\n", encoding="utf-8")
    return folder


def write_wordpiece_tokenizer(folder: str | Path) -> Path:
    """Write a lower-casing WordPiece ``tokenizer.json`` of :data:`WORDPIECE` with BERT's ``[CLS] ... [SEP]``
    template, and the ``special_tokens_map.json`` and ``tokenizer_config.json`` a Hugging Face model folder has.

    Returns:
        The folder.
    """
    from tokenizers.implementations import BertWordPieceTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = BertWordPieceTokenizer({w: i for i, w in enumerate(WORDPIECE)}, lowercase=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    roles = {f"{r}_token": f"[{r.upper()}]" for r in ("cls", "sep", "pad", "mask", "unk")}
    (folder / "special_tokens_map.json").write_text(json.dumps(roles))
    settings = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 64, **roles}
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    return folder
