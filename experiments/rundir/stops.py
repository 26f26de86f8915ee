"""How a run stops: a clean stop asked for by a callback, a stop signal, SLURM's requeue, and the outcome reported.

Shared by the fault guard (:mod:`experiments.callbacks.safety`), which stops a fit, and the launcher
(:mod:`experiments.launcher.lifecycle`), which reports it and ends the process.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lightning.pytorch.utilities.exceptions import SIGTERMException

from experiments.rundir.status import slurm_job

if TYPE_CHECKING:
    import lightning as L

#: Exit code of a failed run; interrupted ones end with the shell's ``128 + signal`` (130 for Ctrl+C).
EXIT_FAILED = 1


@dataclass
class Outcome:
    """How a fit that did not complete ended, for the launcher to report.

    Attributes:
        state: ``interrupted`` or ``failed``.
        message: One line saying what happened and where.
        hint: One line saying what to do next (e.g. the resume command), or ``""``.
        exit_code: The process exit code to end with.
        exception: The exception, when it is a bug whose traceback the user needs.
    """

    state: str
    message: str
    hint: str
    exit_code: int
    exception: BaseException | None = None


class TrainingStopped(Exception):
    """Raised by :func:`guarded` once a stopped fit or test has been reported; carries the :class:`Outcome`."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


class CleanStop(Exception):
    """Raised by a callback to end a fit on purpose, e.g. a sweep pruning its trial.

    The fault guard marks the run folder with ``state`` and the message, saves no checkpoint and prints no
    traceback; the launcher ends with ``exit_code``.

    Args:
        message: One line saying why the run stopped.
        state: The ``status.json`` state, e.g. ``pruned``.
        exit_code: The process exit code to end with.
    """

    def __init__(self, message: str, state: str = "stopped", exit_code: int = 0) -> None:
        super().__init__(message)
        self.state = state
        self.exit_code = exit_code


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, permissions); the previous file at that path is intact."""


class StopSignal(SIGTERMException):
    """A stop signal that arrived outside Lightning's loops: SIGTERM, or SLURM's requeue signal.

    Args:
        signum: The signal.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


def requeue_signal(trainer: L.Trainer | None = None) -> int | None:
    """The signal that asks this SLURM job to save and requeue itself, or ``None`` when there is none to obey.

    It is the one of Lightning's ``SLURMEnvironment`` (SIGUSR1 unless ``--trainer.plugins`` sets another
    ``requeue_signal``), obeyed while its ``auto_requeue`` is on (Lightning's default). Outside SLURM, in an
    interactive allocation, and before a trainer exists with a plugin saying otherwise: SIGUSR1 under SLURM, else
    ``None``.
    """
    from lightning.fabric.plugins.environments import SLURMEnvironment
    from lightning.pytorch.strategies import ParallelStrategy

    strategy = trainer.strategy if trainer is not None else None
    environment = strategy.cluster_environment if isinstance(strategy, ParallelStrategy) else None
    if isinstance(environment, SLURMEnvironment):
        return int(environment.requeue_signal) if environment.auto_requeue and environment.requeue_signal else None
    # A single task (or no trainer yet): under srun, with Lightning's defaults.
    return int(signal.SIGUSR1) if slurm_job() is not None and "SLURM_NTASKS" in os.environ else None


def requeue_job() -> tuple[bool, str]:
    """Ask SLURM to requeue this job (``scontrol requeue JOB``), as Lightning's auto-requeue does.

    Returns:
        Whether SLURM took the request, and a sentence saying what happened.
    """
    job = slurm_job()
    if job is None:
        return False, "not a SLURM batch job, so it cannot be requeued"
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, f"could not requeue SLURM job {job} (scontrol: {getattr(err, 'strerror', None) or err})"
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        return False, f"could not requeue SLURM job {job} (scontrol: {why[-1] if why else done.returncode})"
    return True, f"SLURM job {job} requeued: it continues from there in the same run folder"
