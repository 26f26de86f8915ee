"""Shared fixtures: every test that runs the launcher writes into its own temporary runs folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Tests run the launcher in-process and in subprocesses; both must import the project from this checkout.
sys.path.insert(0, str(ROOT))
# The suite's tensors are tiny: one intra-op thread per process avoids thread-pool contention between the test
# process and the launchers and DDP workers it starts (inherited through the environment), which otherwise makes
# small ops many times slower on two cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Session fixtures of the fine-tuning tests: a tiny pre-trained GPT, its corpus and a labelled text set.
from pretrained_fixtures import code_corpus, labelled_csv, tiny_gpt_ckpt  # noqa: E402, F401


@pytest.fixture(autouse=True, scope="session")
def _image_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Decoded image folders are cached in a temporary folder, never in the user's ``~/.cache``."""
    os.environ["ZEROTUNE_CACHE_DIR"] = str(tmp_path_factory.mktemp("image-cache"))


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    """A fresh runs root for one test."""
    path = tmp_path / "runs"
    path.mkdir()
    return path


def run_launcher(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``python -m experiments.run ARGS`` in-process; returns (exit code, stdout, stderr)."""
    from experiments.run import main

    try:
        code = main(args)
    except SystemExit as exc:  # jsonargparse exits on parse errors
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


TINY = [
    "--trainer.max_epochs",
    "2",
    "--trainer.limit_train_batches",
    "3",
    "--trainer.limit_val_batches",
    "2",
    "--trainer.limit_test_batches",
    "2",
]
#: :data:`TINY` as typed settings, for the Python API.
TINY_SETTINGS = {
    "trainer.max_epochs": 2,
    "trainer.limit_train_batches": 3,
    "trainer.limit_val_batches": 2,
    "trainer.limit_test_batches": 2,
}
