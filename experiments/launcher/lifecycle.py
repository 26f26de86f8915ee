"""The run's life as the launcher sees it: stop signals outside Lightning's loops, a fit or test that stopped, the
final status, and the lines that report it.

A fit runs inside :func:`guarded`; the :class:`~experiments.callbacks.safety.FaultGuard` saves what can be resumed
and describes how the fit ended (an :class:`~experiments.rundir.stops.Outcome`); this module prints it, marks the run
folder and raises :class:`~experiments.rundir.stops.TrainingStopped` with the exit code.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

from experiments.callbacks.report import RunReport
from experiments.callbacks.safety import (
    USER_ERRORS,
    FaultGuard,
    find_guard,
    kept_checkpoint,
    phase,
    run_dir_of,
    signal_of,
)
from experiments.rundir.console import end_progress_line
from experiments.rundir.status import resume_command, write_status
from experiments.rundir.stops import Outcome, StopSignal, TrainingStopped, requeue_signal


def _raise_stop(signum: int, frame: Any) -> None:
    raise StopSignal(signum)


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Make SIGTERM (and, in a SLURM job, its requeue signal) raise :class:`StopSignal` wherever the process is,
    outside Lightning's loops.

    Python's default SIGTERM (and SIGUSR1) ends the process on the spot, without a word and with the run folder still
    saying ``running``. Inside a fit or test the :class:`FaultGuard` takes the signals over instead (it stops after the
    current batch, on every rank together); Lightning restores these handlers when the fit or test ends. The previous
    handlers are restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = [signal.SIGTERM] + ([requeue] if (requeue := requeue_signal()) else [])
    previous = {signum: signal.signal(signum, _raise_stop) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def guarded(trainer: L.Trainer, fn: Callable[[], Any]) -> Any:
    """Run ``fn()`` (the trainer's fit or test) and return its result; when the guard stopped it (interrupt,
    non-finite loss, error), print why and raise.

    Usage errors (:class:`DataError`, missing files) propagate unchanged for the launcher to print.

    Raises:
        TrainingStopped: with the :class:`Outcome` (its ``exit_code`` is what the process should end with).
    """
    guard = find_guard(trainer)
    try:
        return fn()
    except (Exception, KeyboardInterrupt, SystemExit) as err:
        outcome = guard.outcome if guard is not None else None
        if outcome is None or isinstance(err, USER_ERRORS):
            raise
        if trainer.is_global_zero:
            report(outcome)
        raise TrainingStopped(outcome) from None


@contextlib.contextmanager
def mark_stopped(trainer: L.Trainer) -> Iterator[None]:
    """Report an interrupt that reaches the launcher outside a guarded fit or test (between them, or while the
    summary is written): one line, and the run folder marked ``interrupted`` (``requeued`` when SLURM's requeue
    signal stopped a job that has a checkpoint to continue from).

    Raises:
        TrainingStopped: for such an interrupt, with its :class:`Outcome`.
    """
    try:
        yield
    except (KeyboardInterrupt, SIGTERMException) as err:
        signum = signal_of(err, None)
        run_dir = run_dir_of(trainer)
        kept = kept_checkpoint(trainer)
        resume = resume_command(run_dir) if run_dir is not None and kept else None
        outcome = Outcome(
            "interrupted",
            f"{signal.Signals(signum).name} {phase(trainer)}; "
            + (f"the last checkpoint is {kept}" if kept else "no checkpoint had been saved yet"),
            f"resume with: {resume}" if resume else "start it again: nothing was saved yet",
            128 + signum,
        )
        if signum == requeue_signal(trainer) and trainer.is_global_zero:
            outcome = FaultGuard._requeued(outcome, kept)
        if run_dir is not None and trainer.is_global_zero:
            write_status(run_dir, outcome.state, reason=outcome.message, checkpoint=kept, resume=resume)
        if trainer.is_global_zero:
            report(outcome)
        raise TrainingStopped(outcome) from None


def report(outcome: Outcome) -> None:
    """Print an outcome: the traceback of a bug, then one line saying what happened and one saying what next."""
    if outcome.exception is not None:
        import traceback

        traceback.print_exception(outcome.exception, file=sys.stderr)
    label = "error" if outcome.state == "failed" else outcome.state
    end_progress_line()
    print(f"{label}: {outcome.message}", file=sys.stderr)
    if outcome.hint:
        print(outcome.hint, file=sys.stderr)


def mark_completed(trainer: L.Trainer, report: RunReport) -> None:
    """Mark the run folder completed (``status.json``): where it ended, the best checkpoint, the test metrics, and what
    else the run report holds (where early stopping stopped it)."""
    run_dir = report.run_dir or run_dir_of(trainer)
    if run_dir is None or not trainer.is_global_zero:
        return
    metrics = {k: v for k, v in report.test_metrics.items() if math.isfinite(v)}
    write_status(
        run_dir,
        "completed",
        epoch=trainer.current_epoch,
        global_step=trainer.global_step,
        best_checkpoint=str(report.best.path) if report.best is not None else None,
        test_metrics=metrics,
        **report.status_fields(),
    )
