"""Console hygiene for the launcher: precise filters for known noise, and one-line errors for user mistakes."""

from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

from fileio.errors import DataError

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
    "Detected KeyboardInterrupt",  # the launcher says what was interrupted and how to resume
    "Received SIGTERM",
    "SLURM auto-requeueing enabled",  # zerotune's fault guard obeys the requeue signal and says so when it comes
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
    # `--ckpt_path` starts a new version folder by design; the summary names the checkpoint it started from.
    r".*The dirpath has changed from .* won't be reloaded\. Only `best_model_path` will be reloaded.*",
)


#: Exit code of a mistake the user can fix (a name, a setting, a file): one ``error:`` line, no traceback.
USAGE_ERROR = 2


class UsageError(Exception):
    """A mistake the user can fix (bad name, bad config value, missing file): printed as one line, exit code 2."""


#: Exceptions that are the user's mistake (in settings, data or files) rather than a bug: one line, exit code 2.
USER_ERRORS = (UsageError, DataError, FileNotFoundError, NotADirectoryError)


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
        "lightning.pytorch.trainer.connectors.signal_connector",
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    for pattern in _NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def error(message: str) -> None:
    """Print one error line to stderr."""
    end_progress_line()
    print(f"error: {message}", file=sys.stderr)


#: Whether a progress bar on the terminal may have left its line unfinished (set by the progress bar callback).
_progress_line_open = False


def progress_line_open(is_open: bool) -> None:
    """Record whether a terminal progress bar is being drawn, so that a message can start on a fresh line."""
    global _progress_line_open
    _progress_line_open = is_open


def end_progress_line() -> None:
    """End a progress bar's unfinished line on the terminal, so the next message starts on a line of its own."""
    global _progress_line_open
    if _progress_line_open:
        sys.stdout.write("\n")
        sys.stdout.flush()
        _progress_line_open = False


@contextlib.contextmanager
def user_errors(config: bool = False) -> Iterator[None]:
    """Turn errors a user caused (bad config values, missing or malformed files) into :class:`UsageError`.

    Args:
        config: Also translate ``ValueError``/``TypeError``/``MisconfigurationException``: right while classes are
            built from the config, whose ``__init__`` validation raises them; elsewhere they are bugs and keep their
            traceback.
    """
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        yield
    except (DataError, FileNotFoundError, NotADirectoryError) as err:
        raise UsageError(str(err)) from None
    except (ValueError, TypeError, MisconfigurationException) as err:
        if not config:
            raise
        # jsonargparse wraps a failing __init__ check in a report of the union types it tried; keep the check's text.
        raise UsageError(explain_config_error(str(err)) if str(err).strip() else repr(err)) from None


# -- configuration errors --------------------------------------------------------------------------------------------
#: Lines of jsonargparse's nested error reports that restate the type machinery rather than the mistake.
_CONFIG_NOISE = re.compile(
    r"^(- )?(Does not validate against any of the Union subtypes|Subtypes:|Errors:|Given value type:|Given value:"
    r"|Expected a <class 'NoneType'>|Expected a path but .* either not accessible or invalid|Parser key \")"
)
#: Where a bare class name given for a config group is looked up for a "did you mean" suggestion.
_CLASS_PACKAGES = {"model": "lightning_models", "data": "datamodules"}


def explain_config_error(message: str, options: Iterable[str] = (), config_files: Iterable[str] = ()) -> str:
    """Condense a jsonargparse error report (often a dozen nested lines) into one line naming the setting.

    Args:
        message: The parser's error message.
        options: Every ``--key`` the parser accepts, for "did you mean" suggestions on unknown keys.
        config_files: The config files given, named when one of them is not valid YAML.
    """
    text = message.strip()
    if m := re.match(r"unrecognized arguments: (--?[^\s=]+)", text):
        return _unknown_key(m.group(1), options)
    if m := re.match(r"Group '([\w.]+)' does not accept option '(\w+)'", text):
        return _unknown_key(f"--{m.group(1)}.{m.group(2)}", options)
    if m := re.match(r"Option '(\w+)' is not accepted", text):
        return _unknown_key(f"--{m.group(1)}", options)
    if m := re.match(r"the following arguments are required: (.+)", text):
        return f"no {m.group(1)} set: give --{m.group(1)} CLASS or a '{m.group(1)}: class_path:' entry in the config"
    if text.startswith("Problems parsing config"):
        where = re.findall(r"line (\d+), column (\d+)", text)
        at = f", line {where[-1][0]} column {where[-1][1]}" if where else ""
        what = [ln.strip() for ln in text.removeprefix("Problems parsing config:").splitlines() if ln.strip()]
        what = [ln for ln in what if not ln.startswith("in ")]
        files = ", ".join(config_files) or "the config file"
        return f"{files} is not valid YAML{at}: {'; '.join(what)}"
    if m := re.match(r'Parser key "config": File does not exist: (.+)', text):
        return f"config file not found: {m.group(1)}; pass a YAML file that exists, or an experiment name (--list)"
    keys = re.findall(r'Parser key "([^"]+)"', text)
    key = "--" + ".".join(keys) if keys else ""
    class_path = re.search(r"Problem with given class_path '([^']+)'", text)
    if (m := re.search(r"Option '(\w+)' is not accepted", text)) and class_path:
        return _unknown_key(f"{key}.{m.group(1)}", [f"{key}.{a}" for a in _init_args(class_path.group(1))])
    if m := re.search(r"Expected a typing\.Literal\[(.*?)\]\. Got value: (.*)", text):
        choices = [c.strip().strip("'\"") for c in m.group(1).split(",")]
        return _bad_choice(key, m.group(2).strip(), choices)
    if m := re.search(r"Expected a <class '(\w+)'>\. Got value: (.*)", text):
        return f"{key} expects {_article(m.group(1))}, got '{m.group(2).strip()}'"
    if m := re.search(r"(No module named|has no attribute) '([\w.]+)'", text):
        target = class_path.group(1) if class_path else m.group(2)
        return f"{key}: cannot import '{target}' ({m.group(1)} '{m.group(2)}'){_did_you_mean_class(keys, target)}"
    if m := re.search(r"Expected a dot import path string: (\S+)", text):
        return f"{key}: '{m.group(1)}' is not a class path{_did_you_mean_class(keys, m.group(1))}"
    expected = re.findall(r"- Expected a (?:<class '(\w+)'>|typing\.Literal\[(.*?)\])$", text, flags=re.M)
    types = [t for t, _ in expected if t and t != "NoneType"]
    choices = [c.strip().strip("'\"") for _, lit in expected if lit for c in lit.split(",")]
    if (types or choices) and (value := re.search(r"^\s*Given value: (.*)$", text, flags=re.M)):
        kinds = [_article(t) for t in types] + ([f"one of {', '.join(dict.fromkeys(choices))}"] if choices else [])
        nullable = " (or null)" if "<class 'NoneType'>" in text else ""
        return f"{key} expects {' or '.join(kinds)}{nullable}, got '{value.group(1).strip()}'"
    # Anything else (an __init__ check, a missing file): the most specific line jsonargparse reported.
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    useful = [ln.removeprefix("- ") for ln in lines if not _CONFIG_NOISE.match(ln)]
    detail = useful[-1] if useful else lines[-1] if lines else text
    if m := re.match(r'Parser key "[^"]+": (.+)', lines[0] if lines else ""):
        detail = m.group(1)
    return f"{key}: {detail}" if key and not detail.startswith(key.lstrip("-")) else detail


def parser_options(parser: Any) -> list[str]:
    """Every ``--key`` option string an argparse/jsonargparse parser accepts."""
    return [s for action in parser._actions for s in action.option_strings if s.startswith("--")]


def _unknown_key(key: str, options: Iterable[str]) -> str:
    options = [o for o in options if not o.endswith((".help", "--help", "--print_config"))]
    group, _, leaf = key.rpartition(".")
    # Compare within the key's own group, so the shared prefix does not make every key look close.
    siblings = [o.rpartition(".")[2] for o in options if o.rpartition(".")[0] == group]
    close = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)
    if close:
        return f"unknown setting {key}; did you mean {group + '.' if group else ''}{close[0]}?"
    if group and siblings:
        return f"unknown setting {key}; valid settings under {group}: {', '.join(sorted(siblings))}"
    return f"unknown setting {key}; run 'python -m experiments.run --help' for every setting"


def _bad_choice(key: str, value: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"{key} must be one of {', '.join(choices)}; got '{value}'{hint}"


def _article(type_name: str) -> str:
    if type_name.startswith("one of"):
        return type_name
    return f"an {type_name}" if type_name[:1] in "aeiou" else f"a {type_name}"


def _init_args(class_path: str) -> list[str]:
    """Argument names a class accepts, following ``**kwargs`` up its bases as jsonargparse does."""
    # Imported here: PyTorch comes with it, and --help and --list must not wait for it.
    from lightning_models.checkpoints import import_class

    try:
        cls = import_class(class_path)
    except ImportError:
        return []
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return list(dict.fromkeys(names))


def _did_you_mean_class(keys: list[str], target: str) -> str:
    package = _CLASS_PACKAGES.get(keys[0].split(".")[0]) if keys else None
    if package is None:
        return ""
    exported = getattr(importlib.import_module(package), "__all__", [])
    close = difflib.get_close_matches(target.rpartition(".")[2], exported, n=1, cutoff=0.6)
    return f"; did you mean {package}.{close[0]}?" if close else f"; classes in {package}: {', '.join(exported)}"
