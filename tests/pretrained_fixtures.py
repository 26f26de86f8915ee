"""A tiny pre-trained GPT shared by the fine-tuning tests: one launcher run on a small code corpus per session.

Test modules import the fixtures by name (``from pretrained_fixtures import code_corpus, tiny_gpt_ckpt``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fakedata import write_code_corpus

from experiments.launcher.launch import command_line

#: The tiny GPT's shape and data settings (for the Python API); fine-tuning runs must repeat the shape to load its
#: weights.
SHAPE: dict[str, Any] = {"model.n_layer": 2, "model.n_head": 2, "model.n_embd": 32}
TEXT: dict[str, Any] = {
    "data.bpe_vocab_size": 300,
    "data.block_size": 32,
    "data.batch_size": 4,
    "data.eval_batch_size": 8,
    "data.val_blocks": None,
    "data.val_fraction": 0.25,
    "data.test_fraction": 0.25,
}
#: No progress bar, text samples or dashboards.
QUIET_SETTINGS: dict[str, Any] = {"progress_bar.refresh_rate": 0, "samples.enabled": False, "dashboards.enabled": False}


def flags(settings: dict[str, Any]) -> list[str]:
    """``--key value`` arguments of ``settings``, for tests of the command line itself."""
    return command_line("", settings)[1:]


TINY_SHAPE, TINY_TEXT, QUIET = flags(SHAPE), flags(TEXT), flags(QUIET_SETTINGS)


@pytest.fixture(scope="session")
def code_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small Python files in ``pkg_0`` .. ``pkg_3`` and an ``email`` package (the held-out fine-tuning target)."""
    root = write_code_corpus(tmp_path_factory.mktemp("code"), n_files=12)
    email = root / "email"
    email.mkdir()
    for i, path in enumerate(sorted((root / "pkg_3").glob("*.py"))):
        text = path.read_text().replace("Counter", "Message").replace("walk", "parse")
        (email / f"message_{i}.py").write_text(text * 2)
    return root


@pytest.fixture(scope="session")
def tiny_gpt_ckpt(code_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``last.ckpt`` of a 2-layer, 32-wide GPT pre-trained for 6 steps on the corpus without ``email``."""
    from experiments.api import launch

    runs = tmp_path_factory.mktemp("pretrain") / "runs"
    settings = {
        "data.path": str(code_corpus),
        "data.exclude": ["email"],
        "data.cache_dir": str(runs.parent / "tokens"),
        "trainer.max_steps": 6,
        "trainer.val_check_interval": 3,
        "model.warmup_steps": 1,
        "onnx.enabled": False,
        **SHAPE,
        **TEXT,
        **QUIET_SETTINGS,
    }
    launch("stdlib_gpt", settings, runs_dir=runs)
    return runs / "stdlib_gpt" / "version_0" / "checkpoints" / "last.ckpt"


#: Words of each class of the small labelled text set.
TOPICS = {
    "files": "open read write close path folder exists remove rename",
    "network": "socket connect send recv host port listen accept bind",
    "numbers": "sum mean sqrt log exp floor ceil round modulo",
}


@pytest.fixture(scope="session")
def labelled_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``texts.csv``: 30 short texts per class of :data:`TOPICS` (``text`` and ``label`` columns)."""
    import csv
    import random

    rng = random.Random(0)
    path = tmp_path_factory.mktemp("labelled") / "texts.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for label, words in TOPICS.items():
            for _ in range(30):
                writer.writerow([" ".join(rng.choices(words.split(), k=rng.randint(4, 12))), label])
    return path
