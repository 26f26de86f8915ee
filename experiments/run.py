"""Launch a named experiment: ``python -m experiments.run [NAME] [--key value ...]``.

``NAME`` is a file ``experiments/configs/NAME.yaml`` (default: ``digits_cnn``); ``--config PATH`` runs a YAML of
your own instead. Every model, datamodule, trainer and callback argument can be overridden, e.g.
``--model.lr 0.01 --trainer.max_epochs 3 --data.batch_size 128``. The run fits, tests the best checkpoint and
prints where everything went.

Extra options:
    --list            list the named experiments and exit
    --runs_dir DIR    root folder of all runs (default ``runs``)
    --name NAME       run name (folder under the runs root); defaults to the experiment or config file name
    --print_config    print the fully resolved config and exit
    --model.help CLASS   every argument of a model class, e.g. ``--model.help lightning_models.SmallCNN``
                         (likewise ``--data.help datamodules.DigitsDataModule``)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jsonargparse import DefaultHelpFormatter

from experiments import console

DEFAULT_EXPERIMENT = "digits_cnn"
USAGE_ERROR = 2


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help layout, keeping the line breaks of the description above."""


def experiment_names() -> dict[str, str]:
    """Named experiments and their one-line descriptions (the YAML's first comment line)."""
    from experiments.cli import CONFIG_DIR

    names = {}
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        if path.name.startswith("_"):
            continue
        first = path.read_text().splitlines()[0] if path.stat().st_size else ""
        names[path.stem] = first.lstrip("# ").strip() if first.startswith("#") else ""
    return names


def print_list() -> None:
    names = experiment_names()
    width = max(map(len, names), default=0)
    for name, desc in names.items():
        default = " (default)" if name == DEFAULT_EXPERIMENT else ""
        print(f"{name:<{width}}  {desc}{default}")


def build_args(argv: list[str]) -> list[str]:
    """Turn ``[NAME] [overrides]`` into LightningCLI arguments: the experiment's YAML, its name, then overrides.

    Raises:
        UsageError: for an unknown experiment name.
    """
    from experiments.cli import CONFIG_DIR

    args = list(argv)
    name = None
    if args and not args[0].startswith("-"):
        name = args.pop(0)
    has_config = any(a == "--config" or a.startswith("--config=") or a == "-c" for a in args)
    if name is None and not has_config:
        name = DEFAULT_EXPERIMENT
    prefix: list[str] = []
    if name is not None:
        path = CONFIG_DIR / f"{name}.yaml"
        if name.startswith("_") or not path.is_file():
            valid = ", ".join(experiment_names())
            raise console.UsageError(
                f"unknown experiment '{name}'. Valid names: {valid}. "
                f"Run 'python -m experiments.run --list' to see what each trains."
            )
        prefix = ["--config", str(path), "--name", name]
    elif not any(a == "--name" or a.startswith("--name=") for a in args):
        config_path = _config_arg(args)
        if config_path is not None:
            prefix = ["--name", Path(config_path).stem]
    return prefix + args


def _config_arg(args: list[str]) -> str | None:
    for i, a in enumerate(args):
        if a in ("--config", "-c") and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (0 success, 2 usage or data error)."""
    argv = sys.argv[1:] if argv is None else argv
    if "--list" in argv:
        print_list()
        return 0
    console.quiet()
    try:
        args = build_args(argv)
        return run(args)
    except console.UsageError as err:
        console.error(str(err))
        return USAGE_ERROR


def run(args: list[str]) -> int:
    """Parse ``args``, fit, test the best checkpoint and print the summary."""
    from experiments.cli import ZeroTuneCLI
    from experiments.summary import finish_run

    # The arguments are passed explicitly; hiding argv keeps LightningCLI from warning that both are set.
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        with console.user_errors(config=True):
            cli = ZeroTuneCLI(
                args=args, run=False, parser_kwargs={"description": __doc__, "formatter_class": _HelpFormatter}
            )
    finally:
        sys.argv = argv
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    with console.user_errors():
        trainer.fit(model, datamodule=dm)
    test_metrics: dict[str, float] = {}
    if cli.config.test_after_fit and not trainer.interrupted:
        ckpt = trainer.checkpoint_callback
        best = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
        results = trainer.test(model, datamodule=dm, ckpt_path=best, verbose=False)
        test_metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    if trainer.is_global_zero:
        finish_run(trainer, model, test_metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
