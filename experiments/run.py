"""Launch a named experiment: ``python -m experiments.run [NAME] [--key value ...]``.

``NAME`` is a file ``experiments/configs/NAME.yaml`` (default: ``digits_cnn``); ``--config PATH`` runs a YAML of
your own instead. Every model, datamodule, trainer and callback argument can be overridden, e.g.
``--model.lr 0.01 --trainer.max_epochs 3 --data.batch_size 128``. The run fits, tests the best checkpoint and
prints where everything went. ``--help`` lists the common options (:mod:`experiments.launcher.help`), then every
option. ``--list`` lists the named experiments without importing PyTorch.
"""

from __future__ import annotations

import signal
import sys

from experiments.launcher.recipes import DEFAULT_EXPERIMENT, experiment_names
from experiments.rundir import console
from experiments.rundir.console import USAGE_ERROR


def print_list() -> None:
    """One line per named experiment: its name and what it trains."""
    names = experiment_names()
    width = max(map(len, names), default=0)
    for name, desc in names.items():
        default = " (default)" if name == DEFAULT_EXPERIMENT else ""
        print(f"{name:<{width}}  {desc}{default}")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (0 success, 2 usage or data error, 130/143 interrupted)."""
    argv = sys.argv[1:] if argv is None else argv
    if "--list" in argv:
        print_list()
        return 0
    if "-h" in argv or "--help" in argv:
        from experiments.launcher.help import capture_help, print_help

        def full_help(args: list[str]) -> str:
            # Only on a cache miss: the parser that lists every option needs PyTorch and Lightning.
            from experiments.launcher.launch import build_args, launch

            return capture_help(lambda a: launch(build_args(a)), args)

        print_help(argv, full_help)
        return 0
    if "--force" in argv and not any(a == "--resume" or a.startswith("--resume=") for a in argv):
        console.error("--force only applies to --resume RUN_DIR (resume a run whose status says it is running)")
        return USAGE_ERROR
    console.quiet()
    from experiments.launcher.launch import build_args, run
    from experiments.launcher.lifecycle import sigterm_raises
    from experiments.rundir.stops import requeue_job, requeue_signal

    try:
        with sigterm_raises():
            args = build_args(argv)
            return run(args)
    except console.UsageError as err:
        console.error(str(err))
        return USAGE_ERROR
    except (KeyboardInterrupt, SystemExit) as stop:
        # Ctrl+C, SIGTERM or SLURM's requeue signal before training started (once it has, the run saves and says
        # how to resume).
        signum = _interrupt_signal(stop)
        if signum is None:
            raise
        name = signal.Signals(signum).name
        if signum == requeue_signal():
            requeued, note = requeue_job()
            label = "requeued" if requeued else "interrupted"
            print(f"\n{label}: {name} before training started, nothing saved; {note}", file=sys.stderr)
        else:
            print(f"\ninterrupted: {name} before training started: nothing to resume", file=sys.stderr)
        return 128 + signum


def _interrupt_signal(stop: BaseException) -> int | None:
    """The signal behind an interrupt exception (SIGINT for Ctrl+C, a :class:`StopSignal`'s own, SIGTERM for
    Lightning's exception), else None."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from experiments.rundir.stops import StopSignal

    if isinstance(stop, StopSignal):
        return stop.signum
    if isinstance(stop, SIGTERMException):
        return signal.SIGTERM
    return signal.SIGINT if isinstance(stop, KeyboardInterrupt) else None


if __name__ == "__main__":
    sys.exit(main())
