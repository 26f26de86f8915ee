"""Where commands may write their outputs: never over an input, a checkpoint or a file a run folder owns."""

from __future__ import annotations

import fnmatch
import os
import zipfile
from collections.abc import Iterable
from pathlib import Path

# -- where a command may write its output ----------------------------------------------------------------------------
#: Files a run folder owns (what the launcher, the range test and the run's readers rely on), by name.
RUN_FILES = frozenset(
    {
        "config.yaml",
        "status.json",
        "hparams.yaml",
        "preprocessing.json",
        "tokenizer.json",
        "lr_find.json",
        "lr_find.png",
        "output.log",
        "study.json",
        "study.journal",
        "best.yaml",
        "summary.txt",
    }
)
#: Files a run or sweep folder owns, by pattern: TensorBoard event files, exported models, checkpoints, studies.
RUN_FILE_PATTERNS = ("events.out.tfevents.*", "*.onnx", "*.ckpt", "best-trial_*.yaml", "*.db", "*.sqlite*")
#: Suffixes of checkpoint files, refused as an output wherever they are.
CHECKPOINT_SUFFIXES = frozenset({".ckpt", ".pt", ".pth"})
#: Any one of these marks a folder as a run folder (or a sweep folder).
_RUN_MARKERS = ("status.json", "hparams.yaml", "study.json")


def is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` is a run (or sweep) folder: it has a ``status.json``, ``hparams.yaml``, ``study.json``,
    or a ``config.yaml`` beside a ``checkpoints`` folder."""
    if any((folder / marker).is_file() for marker in _RUN_MARKERS):
        return True
    return (folder / "config.yaml").is_file() and (folder / "checkpoints").is_dir()


def run_file_owner(path: Path) -> Path | None:
    """The run folder that owns ``path`` (one of :data:`RUN_FILES`, :data:`RUN_FILE_PATTERNS` or anything under its
    ``checkpoints/`` folder), else ``None``."""
    if path.parent.name == "checkpoints" and is_run_folder(path.parent.parent):
        return path.parent.parent
    owned = path.name in RUN_FILES or any(fnmatch.fnmatch(path.name, p) for p in RUN_FILE_PATTERNS)
    return path.parent if owned and is_run_folder(path.parent) else None


def _is_checkpoint(path: Path) -> bool:
    """A checkpoint by its suffix, or by its content: PyTorch's zip archive (``*/data.pkl``) or a bare pickle."""
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        return True
    if not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        if head == b"PK" and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return any(name.endswith("/data.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False
    # A pickle starts with PROTO (0x80) and a protocol number; torch.save's legacy format is one.
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file: the same resolved path (``./``, ``..``, symbolic links) or the same
    inode (hard links)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output_path(
    path: str | os.PathLike,
    option: str,
    *,
    inputs: Iterable[str | os.PathLike] = (),
    force: bool = False,
    example: str = "output.csv",
) -> Path:
    """Refuse an output path whose writing would lose something, before any work is done.

    Always refused, ``force`` or not: an input of the command, a checkpoint, a file a run folder owns (its
    ``config.yaml``, ``status.json``, checkpoints, ``model.onnx``, event files... see :func:`run_file_owner`), a
    folder, a path under a file, and a folder that cannot be written. An existing file is refused unless ``force``.
    Paths are compared resolved (``./``, ``..``, symbolic links) and by inode (hard links).

    Args:
        path: The output file.
        option: The command-line option that named it (``--output``), for messages.
        inputs: Files and folders the command reads.
        force: Replace an existing file that is none of the above.
        example: A file name to suggest when ``path`` is a folder.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        UsageError: the reason, and what to pass instead.
    """
    from experiments.rundir.console import UsageError

    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder: pass a file name, such as {path / example}")
    # The first ancestor that exists must be a folder we can write into (parents are created as needed).
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{option} {path}: {ancestor} is a file, not a folder; pass a path in a folder")
    for given in inputs:
        given = Path(given)
        if given.is_file() and path.exists() and _same_file(path, given):
            same = "" if path == given else f" ({given})"
            raise UsageError(
                f"{option} {path} is an input of this command{same}: writing it would destroy it (never done, even "
                "with --force); pass another file name"
            )
    for candidate in dict.fromkeys([path, path.resolve()]):
        owner = run_file_owner(candidate)
        if owner is not None:
            raise UsageError(
                f"{option} {path} is {candidate.relative_to(owner)} of the run folder {owner}, which the run "
                "needs: writing it would destroy it (never done, even with --force); pass another file name, such "
                f"as {owner / example}"
            )
        if _is_checkpoint(candidate):
            raise UsageError(
                f"{option} {path} is a checkpoint: writing it would destroy it (never done, even with --force); "
                "pass another file name"
            )
    if path.exists() and not force:
        raise UsageError(f"{option} {path} exists: pass --force to replace it, or another file name")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only_fs(ancestor) else "permission denied"
        raise UsageError(
            f"{option} {path}: cannot write in {ancestor} ({reason}); pass a path in a folder you can write"
        )
    return path


def _read_only_fs(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False
