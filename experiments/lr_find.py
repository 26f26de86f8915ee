"""Learning-rate range test: the rate to train at, and the command that trains at it.

Trains the experiment for ``--num_training`` steps while the learning rate grows from ``--min_lr`` to ``--max_lr``
(Lightning's range test), then suggests the rate where the smoothed loss falls fastest. The experiment and its
overrides are parsed exactly as ``python -m experiments.run`` parses them. The loss-versus-rate plot goes into a run
folder (``runs/NAME/lr_find/version_N/lr_find.png``, also in TensorBoard's Images tab), with the numbers in
``lr_find.json``; the command that trains at the suggested rate is printed. Progress is tqdm's bar on a terminal;
in a log (standard error not a terminal) it is a plain line at each quarter of the test.

``python -m experiments.run NAME --auto_lr true`` runs the same test at the start of a run and trains at the
suggested rate: the optimizer, the scheduler, ``config.yaml``, ``hparams.yaml`` and the checkpoints all hold it.

Options (everything else is passed to the launcher):
    --min_lr LR         lowest rate tried (default 1e-8)
    --max_lr LR         highest rate tried (default 1)
    --num_training N    steps of the test (default 100; more epochs are run if one epoch is shorter)
    --mode MODE         exponential (default) or linear growth of the rate
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from experiments.launcher.lr_range import RangeTest, find_lr, save_results
from experiments.rundir import console

USAGE = (
    "usage: python -m experiments.lr_find [NAME] [--min_lr LR] [--max_lr LR] [--num_training N] [--mode MODE] "
    "[overrides]"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.lr_find",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        add_help=False,
    )
    defaults = RangeTest()
    parser.add_argument("--min_lr", type=float, default=defaults.min_lr)
    parser.add_argument("--max_lr", type=float, default=defaults.max_lr)
    parser.add_argument("--num_training", type=int, default=defaults.num_training)
    parser.add_argument("--mode", default=defaults.mode)
    return parser


def _last_option(args: list[str], flag: str) -> str | None:
    value = None
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith(f"{flag}="):
            value = a.split("=", 1)[1]
    return value


def run_command(argv: list[str], lr: float) -> str:
    """The ``experiments.run`` command with the user's arguments and ``--model.lr lr`` (theirs replaced)."""
    kept: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--model.lr":
            skip = True
            continue
        if a.startswith("--model.lr="):
            continue
        kept.append(a)
    return shlex.join([sys.executable, "-m", "experiments.run", *kept, "--model.lr", repr(lr)])


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 success, 2 usage error)."""
    from experiments.launcher.launch import build_args, make_cli
    from experiments.rundir.console import USAGE_ERROR

    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(f"{USAGE}\n\n{__doc__}", end="")
        return 0
    console.quiet()
    try:
        known, rest = _parser().parse_known_args(argv)
        test = RangeTest(known.min_lr, known.max_lr, known.num_training, known.mode)
        test.check()
        for flag in ("--resume", "--ckpt_path", "--auto_lr"):
            if _last_option(rest, flag) is not None:
                raise console.UsageError(f"{flag} is a training option: the range test always starts from scratch")
        args = build_args(rest)
        name = _last_option(args, "--name") or "experiment"
        root = Path(_last_option(args, "--runs_dir") or "runs")
        # RUNS/NAME/lr_find/version_N: beside the experiment's runs, as a run name of its own.
        cli = make_cli([*args, "--runs_dir", str(root / name), "--name", "lr_find"])
        with console.user_errors():
            lr = find_lr(cli.trainer, cli.model, cli.datamodule, test)
        run_dir = cli.run_dir
        plot = None
        if run_dir is not None:
            from fileio.atomic import atomic_write_text

            config = cli.config.clone()
            config.resume = None
            atomic_write_text(run_dir / "config.yaml", cli.parser.dump(config, skip_unset=False))
            plot = save_results(run_dir, test, cli.trainer.logger)
    except console.UsageError as err:
        console.error(str(err))
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted: the range test was not finished", file=sys.stderr)
        return 130
    diverged = " (stopped early: the loss diverged)" if len(test.lr) < test.num_training else ""
    lines = [
        f"range test    {len(test.lr)} steps{diverged}, lr {test.min_lr:g} -> {test.max_lr:g} ({test.mode})",
        f"suggested lr  {lr:g}   (steepest fall of the smoothed loss)",
    ]
    if plot is not None:
        lines.append(f"plot          {plot}")
        lines.append(
            f"tensorboard   {shlex.quote(sys.executable)} -m tensorboard.main --logdir {shlex.quote(str(run_dir))} "
            "--host 127.0.0.1   (Images tab)"
        )
    lines.append(f"train with    {run_command(argv_without_finder_options(argv), lr)}")
    print("\n".join(lines))
    return 0


def argv_without_finder_options(argv: list[str]) -> list[str]:
    """``argv`` without this command's own options (what the launcher gets)."""
    return _parser().parse_known_args(argv)[1]


if __name__ == "__main__":
    sys.exit(main())
