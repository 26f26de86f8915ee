"""Pickles of data read without running code: a restricted unpickler that builds plain data and numpy arrays only.

Datasets published as pickles (CIFAR-10's batch files) are read through it, so a file planted in a data folder
cannot run code when it is opened.
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

from fileio.errors import DataError

#: The only globals a pickled numpy array names: the dtype, the array type and the function that rebuilds it
#: (``_reconstruct`` up to pickle protocol 4, ``_frombuffer`` for protocol 5), under numpy 1.x's module names (the
#: official CIFAR-10 files are Python 2 pickles of numpy 1.x arrays) and numpy 2.x's; and ``_codecs.encode``, which
#: Python 3 writes for ``bytes`` at protocols 0-2 (a pure conversion of a string to bytes).
ARRAY_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }
)


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only the globals in ``allowed`` and refuses every other one by name."""

    def __init__(self, file: Any, path: Path, allowed: frozenset[tuple[str, str]], fix: str) -> None:
        super().__init__(file, encoding="latin1")  # latin1: Python 2 pickles of numpy arrays hold raw bytes as str
        self.path, self.allowed, self.fix = path, allowed, fix

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.allowed:
            raise DataError(
                f"refusing to read {self.path}: its pickle calls {module}.{name}, which a data file never needs, and "
                f"unpickling it could run any code its author put in it. {self.fix}"
            )
        # numpy 2 moved numpy.core to numpy._core (numpy.core still imports, with a warning); try the current name.
        current = module.replace("numpy.core.", "numpy._core.")
        for candidate in dict.fromkeys((current, module)):
            try:
                return getattr(importlib.import_module(candidate), name)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(f"{module}.{name} is not in this numpy")


def restricted_unpickle(
    path: str | Path, allowed: frozenset[tuple[str, str]] = ARRAY_GLOBALS, fix: str = "Replace it with a good copy."
) -> Any:
    """The object pickled in ``path``, built from plain data (dicts, lists, tuples, str, bytes, numbers) and the
    globals in ``allowed`` only: numpy arrays by default. Nothing in the file can run code.

    Args:
        path: The pickle file.
        allowed: ``(module, name)`` of the globals the file may name.
        fix: What the user should do about a refused file (the last sentence of the error).

    Raises:
        DataError: the pickle names any other global (``os.system``, a class...); the message names the file.
        pickle.UnpicklingError, EOFError, ValueError...: a truncated or malformed file.
    """
    path = Path(path)
    with open(path, "rb") as f:
        return _RestrictedUnpickler(f, path, allowed, fix).load()
