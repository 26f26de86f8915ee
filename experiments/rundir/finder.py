"""Finding things in run folders: the newest run of an experiment, a run's checkpoint and its tokenizer file.

A run folder is ``RUNS_DIR/NAME/version_N`` (or a folder named with ``--version``) inside its experiment folder
``RUNS_DIR/NAME``; it keeps its checkpoints in ``checkpoints/``. Every command that takes a run folder finds these
here. The functions answer ``None`` when there is nothing to find: what that means is the caller's to say.

Importing this module imports only the standard library (``python -m experiments.runs`` answers without PyTorch);
comparing the scores of several best checkpoints reads them with PyTorch.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

from experiments.rundir.status import recorded_best_checkpoint

#: The folder name of a run the launcher numbers: ``version_N``.
VERSION_PREFIX = "version_"
#: A run's checkpoint folder.
CHECKPOINT_DIR = "checkpoints"
#: The checkpoint a run keeps current at every save point (what ``--resume`` continues from).
LAST_CHECKPOINT = "last.ckpt"
#: Where a run folder may keep its tokenizer (text runs; checkpoints carry their own copy too).
TOKENIZER_FILE = "tokenizer.json"

#: Which checkpoint of a run: its best one, or its last one.
Which = Literal["best", "last"]


# -- runs --------------------------------------------------------------------------------------------------------------
def version_number(folder: str | os.PathLike) -> int | None:
    """``N`` for a folder named ``version_N``, else ``None``."""
    number = Path(folder).name.removeprefix(VERSION_PREFIX)
    return int(number) if Path(folder).name.startswith(VERSION_PREFIX) and number.isdigit() else None


def versions(experiment: str | os.PathLike) -> list[Path]:
    """The ``version_N`` run folders of an experiment folder, oldest (lowest ``N``) first."""
    experiment = Path(experiment)
    found = [p for p in experiment.glob(f"{VERSION_PREFIX}*") if version_number(p) is not None and p.is_dir()]
    return sorted(found, key=lambda p: version_number(p) or 0)


def next_version(experiment: str | os.PathLike) -> int:
    """One past the highest ``N`` of the experiment folder's ``version_N`` folders (0 for none)."""
    return max((version_number(p) or 0 for p in versions(experiment)), default=-1) + 1


def newest_run(experiment: str | os.PathLike, has: Callable[[Path], bool] | None = None) -> Path | None:
    """The newest ``version_N`` of an experiment folder (for which ``has`` holds, when given), or ``None``."""
    for run in reversed(versions(experiment)):
        if has is None or has(run):
            return run
    return None


def find_run(path: str | os.PathLike, has: Callable[[Path], bool]) -> Path | None:
    """The run folder ``path`` names, as commands that take a run read it: a run's ``checkpoints`` folder means its
    run, ``path`` itself when ``has`` holds for it, else (an experiment folder) its newest run for which ``has``
    holds; ``None`` when there is none.

    Args:
        path: A run folder, its ``checkpoints`` folder or an experiment folder.
        has: Whether a folder holds what the caller needs (a checkpoint, an ONNX file).
    """
    path = Path(path)
    if path.name == CHECKPOINT_DIR and has(path.parent):
        return path.parent
    if has(path):
        return path
    return newest_run(path, has)


def run_of_checkpoint(checkpoint: str | os.PathLike) -> Path:
    """The run folder a checkpoint belongs to: ``RUN`` for ``RUN/checkpoints/FILE.ckpt``, else the folder it lies
    in."""
    folder = Path(checkpoint).parent
    return folder.parent if folder.name == CHECKPOINT_DIR else folder


# -- checkpoints -------------------------------------------------------------------------------------------------------
def run_checkpoint(run: str | os.PathLike, which: Which = "best") -> Path | None:
    """A run's checkpoint, ``None`` when it saved none.

    ``last``: ``checkpoints/last.ckpt``. ``best``: the one ``status.json`` records (see
    :func:`~experiments.rundir.status.recorded_best_checkpoint`), else the best of ``checkpoints/best*.ckpt`` by
    the score each was saved with (:func:`best_scored`), else ``checkpoints/last.ckpt``, else the last ``*.ckpt``
    by name in the folder itself (checkpoints put in a plain folder).
    """
    run = Path(run)
    folder = run / CHECKPOINT_DIR
    last = folder / LAST_CHECKPOINT
    if which == "last":
        return last if last.is_file() else None
    recorded = recorded_best_checkpoint(run)
    if recorded is not None:
        return recorded
    best = [p for p in folder.glob("best*.ckpt") if p.is_file()] if folder.is_dir() else []
    if best:
        return best_scored(best)
    if last.is_file():
        return last
    loose = sorted((p for p in run.glob("*.ckpt") if p.is_file()), key=_natural)
    return loose[-1] if loose else None


def best_scored(checkpoints: list[Path]) -> Path:
    """The checkpoint with the best monitored score, as each file's own ``ModelCheckpoint`` state records it (the
    metric and its mode, ``min`` or ``max``, are in the callback's state key); a tie, or files that record no
    score, go to the last by name (``best-epoch007`` after ``best-epoch003``). Never by modification time: a copied
    or touched file says nothing about its score.

    One file is returned without reading it; several are read (weights-only) to compare their scores.
    """
    ordered = sorted(checkpoints, key=_natural)
    if len(ordered) == 1:
        return ordered[0]
    scored = [(path, _own_score(path)) for path in ordered]
    known = [(path, score) for path, score in scored if score is not None]
    modes = {mode for _, (_, mode) in known}
    if not known or len(modes) != 1:
        return ordered[-1]
    sign = 1.0 if modes == {"max"} else -1.0
    # max() keeps the first of equals: reversed, so a tie goes to the last by name.
    return max(reversed(known), key=lambda item: sign * item[1][0])[0]


def _own_score(checkpoint: Path) -> tuple[float, str] | None:
    """``(score, mode)`` the checkpoint was saved with by its ``ModelCheckpoint``, ``None`` when it records none
    (an unreadable file, no callback state, a NaN score)."""
    # Imported here: PyTorch comes with it, and listing runs must not wait for it.
    from fileio.checkpoints import load_checkpoint
    from fileio.errors import DataError

    try:
        saved = load_checkpoint(checkpoint, trust=False)
    except DataError:
        return None
    callbacks = saved.get("callbacks") if isinstance(saved, Mapping) else None
    for key, state in (callbacks if isinstance(callbacks, Mapping) else {}).items():
        mode = re.search(r"'mode': '(min|max)'", str(key))
        if not (str(key).startswith("ModelCheckpoint") and mode and isinstance(state, Mapping)):
            continue
        # Its own entry in the top-k table, else the score it was saved at (set just before the save).
        top_k = state.get("best_k_models")
        scores = {Path(str(p)).name: v for p, v in top_k.items()} if isinstance(top_k, Mapping) else {}
        score = scores.get(checkpoint.name, state.get("current_score"))
        try:
            value = float(score)
        except (TypeError, ValueError, RuntimeError):
            continue
        if not math.isnan(value):
            return value, mode.group(1)
    return None


def _natural(path: Path) -> tuple[object, ...]:
    """Sort key that orders the numbers in a name by value (``best-step999`` before ``best-step1000``)."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name))


# -- tokenizers --------------------------------------------------------------------------------------------------------
def run_tokenizer(run: str | os.PathLike) -> Path | None:
    """The run folder's ``tokenizer.json``, if it holds that file (its checkpoints carry their own copy first)."""
    path = Path(run) / TOKENIZER_FILE
    return path if path.is_file() else None
