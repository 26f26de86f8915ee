"""Decode a folder of images once, on every core, and cache the decoded ``uint8`` tensor outside the folder.

Decoding 50,000 small JPEGs one by one through PIL and torchvision's ``Resize`` takes most of a minute's setup on
two cores. Here a thread pool reads the files and decodes them in batches: JPEGs with libjpeg-turbo through
``torchvision.io.decode_jpeg`` (the same library PIL uses, so the pixels are identical; it releases the GIL, so the
threads run on separate cores), other formats, and any JPEG it rejects, through PIL. Images of another size are
resized with PIL exactly as the per-sample pipeline resizes them.

The result is saved under the cache folder (``$ZEROTUNE_CACHE_DIR``, else ``$XDG_CACHE_HOME/zerotune``, else
``~/.cache/zerotune``), never inside the image folder, keyed on the folder's file list and every file's size and
modification time: adding, removing, replacing or editing a file changes the key and the folder is decoded again.
A checksum of the cached pixels guards against a damaged cache file, which is then rebuilt.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image
from torch import Tensor
from torchvision import transforms as T
from torchvision.datasets.folder import IMG_EXTENSIONS

try:
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:  # a torchvision without its image decoders: every file goes through PIL
    decode_jpeg = None

#: Bumped whenever the decoded pixels or the file layout change, so older cache files are never served.
CACHE_VERSION = 1
#: Files decoded per task of the pool: large enough to amortize the batch decode call, small enough to balance.
CHUNK = 256
JPEG_MAGIC = b"\xff\xd8\xff"
# torchvision 0.29 marks its image decoders deprecated in favour of TorchCodec; the pinned release has them, and
# they are the libjpeg-turbo PIL uses (same pixels), callable from threads without the GIL.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")
#: What PIL raises on unreadable, truncated or corrupt image files.
BAD_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


class FileStamp(NamedTuple):
    """An image file and what says whether it changed: its size and modification time."""

    path: str
    size: int
    mtime_ns: int


@dataclass
class DecodedFolder:
    """Every listed file of a folder decoded to ``images[i]``, ``(N, 3, S, S)`` uint8.

    Attributes:
        images: One row per file, in the order given; rows of unreadable files are zero.
        errors: Row -> why that file could not be decoded.
        cache_hit: Whether the images came from the cache.
    """

    images: Tensor
    errors: dict[int, str] = field(default_factory=dict)
    cache_hit: bool = False


def default_cache_dir() -> Path:
    """``$ZEROTUNE_CACHE_DIR``, else ``$XDG_CACHE_HOME/zerotune``, else ``~/.cache/zerotune``."""
    if os.environ.get("ZEROTUNE_CACHE_DIR"):
        return Path(os.environ["ZEROTUNE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "zerotune"


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def list_images(folder: str | Path) -> list[FileStamp]:
    """The image files directly in ``folder`` (by extension, hidden files excepted), sorted by name, with their
    sizes and modification times; empty when the folder does not exist."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    files = []
    for entry in sorted(entries, key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.name.lower().endswith(IMG_EXTENSIONS) or not entry.is_file():
            continue
        st = entry.stat()
        files.append(FileStamp(os.path.join(folder, entry.name), st.st_size, st.st_mtime_ns))
    return files


# -- decoding ----------------------------------------------------------------------------------------------------------
def _resized(img: Image.Image, size: int) -> Tensor:
    """PIL image -> ``(3, size, size)`` uint8, resized as the per-sample pipeline's ``T.Resize((size, size))``."""
    if img.size != (size, size):
        img = T.Resize((size, size))(img)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def _decode_pil(data: bytes, size: int) -> Tensor:
    with Image.open(io.BytesIO(data)) as img:
        return _resized(img.convert("RGB"), size)


def _place(images: Tensor, row: int, img: Tensor, size: int) -> None:
    """Write one decoded ``(3, H, W)`` image into ``images[row]``, resizing it through PIL when needed."""
    if img.shape[1:] != (size, size):
        img = _resized(Image.fromarray(img.permute(1, 2, 0).numpy()), size)
    images[row] = img


def _decode_chunk(paths: Sequence[str | Path], rows: range, images: Tensor, errors: dict[int, str]) -> None:
    """Decode ``paths[rows]`` into ``images[rows]``; failures go to ``errors``."""
    size = images.shape[-1]
    jpeg_rows: list[int] = []
    jpeg_data: list[bytes] = []
    for row in rows:
        try:
            with open(paths[row], "rb") as f:
                data = f.read()
        except OSError as err:
            errors[row] = err.strerror or str(err)
            continue
        if decode_jpeg is not None and data.startswith(JPEG_MAGIC):
            jpeg_rows.append(row)
            jpeg_data.append(data)
            continue
        try:
            images[row] = _decode_pil(data, size)
        except BAD_IMAGE_ERRORS as err:
            errors[row] = str(err) or type(err).__name__
    if not jpeg_data:
        return
    buffers = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in jpeg_data]
    try:
        decoded: list[Tensor | None] = list(decode_jpeg(buffers, mode=ImageReadMode.RGB))
    except RuntimeError:
        # One bad file fails the whole batch call: decode one by one to find it.
        decoded = []
        for buf in buffers:
            try:
                decoded.append(decode_jpeg(buf, mode=ImageReadMode.RGB))
            except RuntimeError:
                decoded.append(None)
    for row, img, data in zip(jpeg_rows, decoded, jpeg_data, strict=True):
        try:
            # PIL has the last word on what libjpeg-turbo rejects (and gives the error message a user knows).
            _place(images, row, img, size) if img is not None else _place(images, row, _decode_pil(data, size), size)
        except BAD_IMAGE_ERRORS as err:
            errors[row] = str(err) or type(err).__name__


def decode_files(paths: Sequence[str | Path], size: int, threads: int | None = None) -> DecodedFolder:
    """Decode and resize ``paths`` into one ``(N, 3, size, size)`` uint8 tensor with a pool of ``threads``.

    Args:
        paths: Image files, any format PIL reads.
        size: Side of the square output images.
        threads: Decoding threads; ``None`` uses every available core.
    """
    images = torch.zeros(len(paths), 3, size, size, dtype=torch.uint8)
    errors: dict[int, str] = {}
    chunks = [range(i, min(i + CHUNK, len(paths))) for i in range(0, len(paths), CHUNK)]
    threads = max(1, min(threads or available_cores(), len(chunks)))
    if threads == 1:
        for rows in chunks:
            _decode_chunk(paths, rows, images, errors)
    else:
        with ThreadPoolExecutor(threads, thread_name_prefix="zerotune-decode") as pool:
            list(pool.map(lambda rows: _decode_chunk(paths, rows, images, errors), chunks))
    return DecodedFolder(images, dict(sorted(errors.items())))


# -- cache -------------------------------------------------------------------------------------------------------------
def folder_key(folder: Path, files: Sequence[FileStamp], size: int) -> str:
    """Digest of what the decoded tensor depends on: the file list, each file's size and modification time, the
    output size and the decoders' versions."""
    h = hashlib.sha256(f"v{CACHE_VERSION} {size} {torchvision.__version__} {PIL.__version__}\n".encode())
    skip = len(str(folder).rstrip(os.sep)) + 1
    h.update("".join(f"{f.path[skip:]}\0{f.size}\0{f.mtime_ns}\n" for f in files).encode())
    return h.hexdigest()


def _pixels_digest(images: Tensor) -> int:
    """CRC-32 of the pixels: catches a cache file damaged on disk."""
    return zlib.crc32(memoryview(images.numpy()).cast("B"))


def cache_file(cache_dir: Path, folder: Path, size: int) -> Path:
    """The cache file of ``folder`` at ``size``: one per folder and size, overwritten when the folder changes."""
    folder = folder.resolve()
    tag = hashlib.sha1(f"{folder}\0{size}".encode()).hexdigest()[:16]
    return cache_dir / "image_folder" / f"{folder.name or 'root'}-{size}px-{tag}.pt"


def _load(path: Path, key: str) -> DecodedFolder | None:
    """The cached folder if ``path`` holds one for ``key`` with intact pixels; ``None`` otherwise."""
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        if entry.get("key") != key:
            return None  # the folder changed since: decode again (and overwrite)
        images = entry["images"]
        if _pixels_digest(images) != entry["digest"]:
            raise ValueError("checksum mismatch")
        rows, msgs = entry["error_rows"].tolist(), entry["error_msgs"]
        errors = {int(row): str(msg) for row, msg in zip(rows, msgs, strict=True)}
    except Exception as err:  # any damage to the file: rebuild it
        warnings.warn(f"image cache {path} is damaged ({err}); decoding the folder again", stacklevel=3)
        return None
    return DecodedFolder(images, errors, cache_hit=True)


def _save(path: Path, key: str, decoded: DecodedFolder) -> None:
    """Write the cache file atomically (temporary file, then rename); a failure only costs the cache."""
    entry = {
        "version": CACHE_VERSION,
        "key": key,
        "images": decoded.images,
        "digest": _pixels_digest(decoded.images),
        "error_rows": torch.tensor(list(decoded.errors), dtype=torch.long),
        "error_msgs": list(decoded.errors.values()),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            torch.save(entry, tmp)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    except OSError as err:
        warnings.warn(f"could not write the image cache {path} ({err}); the next run decodes again", stacklevel=3)


def load_folder(
    folder: str | Path,
    files: Sequence[FileStamp],
    size: int,
    cache_dir: str | Path | None = None,
    cache: bool = True,
    threads: int | None = None,
) -> DecodedFolder:
    """``files`` (under ``folder``) decoded at ``size``: from the cache when the folder is unchanged.

    Args:
        folder: The image folder the files belong to (names the cache entry).
        files: Its image files as :func:`list_images` stamps them, in the order the rows should have.
        size: Side of the square output images.
        cache_dir: Cache folder; ``None`` for :func:`default_cache_dir`.
        cache: Read and write the cache; ``False`` always decodes.
        threads: Decoding threads; ``None`` uses every available core.
    """
    folder = Path(folder)
    paths = [f.path for f in files]
    if not cache:
        return decode_files(paths, size, threads)
    path = cache_file(Path(cache_dir) if cache_dir else default_cache_dir(), folder, size)
    key = folder_key(folder, files, size)
    decoded = _load(path, key)
    if decoded is None:
        decoded = decode_files(paths, size, threads)
        _save(path, key, decoded)
    return decoded
