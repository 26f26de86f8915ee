"""Console hygiene for the launcher: precise filters for known noise, and one-line errors for user mistakes."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator

#: Messages Lightning prints that advertise products or restate the obvious; matched by substring, one by one.
_NOISE_LOG_SUBSTRINGS = (
    "Tip:",  # advertising for litmodels / litlogger
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "LOCAL_RANK:",
    "`Trainer(limit_",  # "Trainer(limit_train_batches=1)` was configured so 1 batch..." restates the config
    "Running in `fast_dev_run` mode",
    "Seed set to",
    "to estimate number of stepping batches",
    "Restoring states from the checkpoint path",
    "Loaded model weights from the checkpoint",
)

#: Known-harmless warnings, each matched by a precise message regex; everything else is shown.
_NOISE_WARNINGS = (
    # Our in-memory loaders are plain iterables without workers by design.
    r".*does not have many workers which may be a bottleneck.*",
    # Lightning asks for a batch_size it cannot infer from custom iterables; we pass it explicitly where it matters.
    r".*Trying to infer the `batch_size` from an ambiguous collection.*",
    # Small datasets: fewer batches than the default logging interval is expected.
    r".*The number of training batches \(\d+\) is smaller than the logging interval.*",
    # The checkpoint folder of a fresh version folder exists because we allocate the folder atomically ourselves.
    r".*Checkpoint directory .* exists and is not empty.*",
    # Lightning 2.6 calls a torch.utils._pytree API that torch 2.14 deprecated; nothing for a user to do.
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
)


class UsageError(Exception):
    """A mistake the user can fix (bad name, bad config value, missing file): printed as one line, exit code 2."""


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(s in msg for s in _NOISE_LOG_SUBSTRINGS)


def quiet() -> None:
    """Install the filters above (idempotent)."""
    # jsonargparse's deprecation notices are about how Lightning calls it, nothing a user can act on.
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    for name in (
        "lightning.pytorch",
        "lightning.fabric",
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.seed",
        "lightning.pytorch.accelerators.cuda",
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    for pattern in _NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def error(message: str) -> None:
    """Print one error line to stderr."""
    print(f"error: {message}", file=sys.stderr)


@contextlib.contextmanager
def user_errors(config: bool = False) -> Iterator[None]:
    """Turn errors a user caused (bad config values, missing or malformed files) into :class:`UsageError`.

    Args:
        config: Also translate ``ValueError``/``TypeError``: right while classes are built from the config,
            whose ``__init__`` validation raises them; elsewhere they are bugs and keep their traceback.
    """
    from datamodules.errors import DataError

    try:
        yield
    except (DataError, FileNotFoundError, NotADirectoryError) as err:
        raise UsageError(str(err)) from None
    except (ValueError, TypeError) as err:
        if not config:
            raise
        # jsonargparse reports failures of a class's __init__ with the class path and the original message.
        raise UsageError(str(err).strip().splitlines()[-1] if str(err).strip() else repr(err)) from None
