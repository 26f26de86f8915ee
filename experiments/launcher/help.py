"""``python -m experiments.run --help``: the common options at once, then every option.

The full list comes from the launcher's parser, which needs PyTorch and Lightning imported (seconds). It is kept in
a cache file keyed on everything it is made from (the arguments, the installed versions, the project's sources and
configs), so only the first ``--help`` after a change pays for the import.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

SUMMARY = """\
usage: python -m experiments.run [NAME] [--key value ...]

Train the experiment NAME (experiments/configs/NAME.yaml; default digits_cnn), test its best checkpoint, export it to
ONNX and print where everything went. Every option can also be set in a YAML file.

Common options:
  NAME                        a named experiment (--list shows each with what it trains)
  --list                      list the named experiments and exit
  --config FILE               run a YAML of your own (class paths and settings) instead of a named experiment
  --print_config              print the fully resolved config and exit without training
  --trainer.max_epochs N      epochs to train (also --trainer.max_steps N)
  --trainer.accelerator A     cpu, gpu or auto; --trainer.devices N and --trainer.strategy ddp for several
  --trainer.precision P       32-true, bf16-mixed or 16-mixed
  --model.lr LR               any __init__ argument of the model: --model.KEY VALUE (likewise --data.KEY VALUE)
  --model CLASS               another model class (likewise --data CLASS); --model.help CLASS lists its arguments
  --runs_dir DIR              root of all runs (default runs); each run goes to DIR/NAME/version_N
  --name NAME                 run name: one folder name under --runs_dir (default: the experiment's name)
  --resume RUN_DIR            continue an interrupted run in its own folder (--force if its status says running)
  --ckpt_path last|FILE       start a new run from a checkpoint's full training state
  --onnx.enabled false        skip the ONNX export (likewise --dashboards.enabled false for the figures)
  --trust_checkpoint true     allow checkpoint files that need code to load (only files you trust)

Every option follows (trainer, model, data and callback settings).
"""


def print_help(argv: list[str], build: Callable[[list[str]], str]) -> None:
    """Print :data:`SUMMARY` at once, then the full option list (cached; ``build(argv)`` makes it on a miss)."""
    print(SUMMARY, flush=True)
    path = _cache_dir() / f"help-{_fingerprint(argv)}.txt"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        text = build(argv)
        with contextlib.suppress(OSError):
            from fileio.atomic import atomic_write_text

            atomic_write_text(path, text)
    print(text, end="")


def capture_help(run: Callable[[list[str]], object], argv: list[str]) -> str:
    """What ``run(argv)`` prints for ``--help`` before the parser exits."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        run(argv)
    return out.getvalue()


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "zerotune"


def _fingerprint(argv: list[str]) -> str:
    """A hash of what the full help is made from: the arguments, the interpreter and the installed versions of the
    libraries whose options it lists, and the size and modification time of every source file and config."""
    digest = hashlib.sha1()
    digest.update("\0".join([sys.executable, *argv]).encode("utf-8", "surrogateescape"))
    for dist in ("lightning", "jsonargparse", "torch", "torchvision", "zerotune"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            digest.update(f"{dist}={metadata.version(dist)}".encode())
    root = Path(__file__).resolve().parents[2]
    for package in ("fileio", "datamodules", "lightning_models", "experiments"):
        for path in sorted((root / package).rglob("*")):
            if path.suffix in (".py", ".yaml"):
                stat = path.stat()
                digest.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]
