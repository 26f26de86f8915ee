"""Faults during training end with a usable run: a resumable checkpoint, a marked run folder and one clear message.

* A NaN or infinite loss stops training at once and names the step; checkpoints are never overwritten with
  non-finite weights, so the last good one stays.
* Ctrl+C (SIGINT) finishes the current batch, then saves a resumable ``last.ckpt`` (a second Ctrl+C stops at
  once). SIGTERM (a scheduler's timeout, ``kill``) does the same. Under several processes a signal that reaches one
  of them stops all of them at the same batch: the processes agree on it after every training batch, so every rank
  joins the save, even on a node that never saw the signal.
* An exception in a callback or the model saves a checkpoint too (single process), names where it came from,
  and marks the run failed.
* A SLURM job with Lightning's auto-requeue (its default) that gets the requeue signal (``#SBATCH
  --signal=SIGUSR1@90``) saves the same way, marks the run ``requeued`` and calls ``scontrol requeue``; the requeued
  job, running the same command, continues the run in its own folder from that checkpoint (see
  :func:`experiments.rundir.status.find_requeued_run`).
* Every run folder has a ``status.json`` (``running``, ``interrupted``, ``requeued``, ``failed``, ``completed``) with
  the reason and the command that resumes it; checkpoints are written atomically by :class:`AtomicCheckpointIO`.
"""

from __future__ import annotations

import errno
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor

from experiments.callbacks.report import RunReport
from experiments.rundir.console import end_progress_line
from experiments.rundir.status import has_checkpoint, resume_command, write_status
from experiments.rundir.stops import (
    EXIT_FAILED,
    CheckpointWriteError,
    CleanStop,
    Outcome,
    StopSignal,
    requeue_job,
    requeue_signal,
)
from fileio.checkpoints import load_state_dict_file
from fileio.errors import DataError
from lightning_models.checkpoints import check_compatible

#: Errors the user fixes in their data or paths; the launcher prints them as usage errors (exit code 2).
USER_ERRORS = (DataError, FileNotFoundError, NotADirectoryError)


class NonFiniteLossError(RuntimeError):
    """The training loss (or the weights about to be saved) became NaN or infinite."""


# -- the callback ----------------------------------------------------------------------------------------------------


class FaultGuard(L.Callback):
    """Stop on non-finite losses, save a resumable checkpoint on interrupts and errors, and mark the run folder.

    Args:
        check_finite: Stop as soon as the training loss is NaN or infinite, and never write a checkpoint whose
            weights are not finite.
        check_every_n_steps: Check the collected losses every N steps, at every epoch end and before every
            checkpoint; the failing step is named exactly either way. Checking in groups spares a GPU a
            synchronization per step; training goes on for at most N-1 steps past the failure, and nothing is
            saved from them.
        save_on_interrupt: Save ``checkpoints/last.ckpt`` when interrupted (SIGINT/SIGTERM) or when a callback or
            the model raises, so the run can be resumed with ``--resume``.
    """

    def __init__(self, check_finite: bool = True, check_every_n_steps: int = 8, save_on_interrupt: bool = True) -> None:
        if check_every_n_steps < 1:
            raise ValueError(f"safety.check_every_n_steps must be >= 1, got {check_every_n_steps}")
        self.check_finite = check_finite
        self.check_every_n_steps = check_every_n_steps
        self.save_on_interrupt = save_on_interrupt
        #: Set when a fit ends early; read by the launcher.
        self.outcome: Outcome | None = None
        self._pending: list[tuple[int, int, int, Tensor]] = []  # (global step, epoch, batch index, loss)
        self._step = (0, 0, 0)
        #: The stop signal this process received (the most urgent one, see :meth:`_urgency`), and the one every
        #: process agreed on when the run stopped.
        self._requested: int | None = None
        self._agreed: int | None = None
        #: SLURM's requeue signal when the run obeys one (see :func:`requeue_signal`).
        self._requeue: int | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Check a checkpoint to resume from fits the model, before Lightning's strict load fails with a dump."""
        path = trainer.ckpt_path
        if stage == "fit" and path and Path(path).is_file():
            check_compatible(pl_module, load_state_dict_file(path), source=path)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.outcome, self._pending, self._requested, self._agreed = None, [], None, None
        run_dir = run_dir_of(trainer)
        if run_dir is not None and trainer.is_global_zero:
            write_status(run_dir, "running")

    # Lightning installs its signal handlers when a fit or test starts running, and restores the ones before when it
    # ends (an exception included). Its SIGTERM handler makes a collective call from inside the handler and stops only
    # the process it reached, which leaves the others waiting for it; the guard's handlers replace it here.
    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take_signals(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take_signals(trainer)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._requested, self._agreed = None, None
        self._take_signals(trainer)

    @property
    def stop_requested(self) -> int | None:
        """The stop signal this process received and the run has not yet stopped for, else ``None``."""
        return self._requested

    def _take_signals(self, trainer: L.Trainer) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._requeue = requeue_signal(trainer)
        for signum in (signal.SIGINT, signal.SIGTERM, self._requeue):
            if signum is not None and signal.getsignal(signum) != self._on_signal:
                signal.signal(signum, self._on_signal)

    def _urgency(self, signum: int | None) -> int:
        """Which stop wins when processes received different signals: SLURM's requeue (the job goes on), then a
        scheduler's SIGTERM, then a Ctrl+C; 0 for none."""
        return {signal.SIGINT: 1, signal.SIGTERM: 2, self._requeue: 3}.get(signum, 0) if signum else 0

    def _on_signal(self, signum: int, frame: Any) -> None:
        """Note the stop; the process stops at the next point where every process can agree on it."""
        if signum == signal.SIGINT and self._requested is not None:
            raise KeyboardInterrupt  # a second Ctrl+C: stop now
        first = self._requested is None
        if first or self._urgency(signum) > self._urgency(self._requested):
            self._requested = signum
        if first and signum == signal.SIGINT:
            end_progress_line()
            print("interrupt: saving a checkpoint after this batch (Ctrl+C again to stop at once)", file=sys.stderr)

    def _stop_if_requested(self, trainer: L.Trainer) -> None:
        """Raise :class:`KeyboardInterrupt` on every process once any of them received a stop signal.

        Under several processes the most urgent signal any of them received is agreed on with one reduction (every
        process calls this at the same point), so every process stops at the same batch and joins the save.
        """
        urgency = self._urgency(self._requested)
        if trainer.world_size > 1:
            flag = torch.tensor(float(urgency), device=trainer.strategy.root_device)
            urgency = int(trainer.strategy.reduce(flag, reduce_op="max").item())
        if urgency:
            stops = (signal.SIGINT, signal.SIGTERM, self._requeue)
            self._agreed = next(s for s in stops if self._urgency(s) == urgency)
            raise KeyboardInterrupt

    # -- per step ------------------------------------------------------------------------------------------------
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._step = (trainer.global_step, trainer.current_epoch, batch_idx)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if self.check_finite and isinstance(loss, Tensor):
            self._pending.append((*self._step, loss.detach()))
            if len(self._pending) >= self.check_every_n_steps:
                self._check_losses()
        # Stop here, with this batch's optimizer step done (not between the batches of an accumulated step, whose
        # gradients a checkpoint cannot hold): Lightning restores a checkpoint saved at this point as "batch
        # completed", so a resumed run neither repeats nor skips a step.
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            self._stop_if_requested(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A signal during the last validation: training is done, but the run stops before testing.
        self._stop_if_requested(trainer)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        # One process stops at once; several finish the validation (their shares of it differ in batches).
        if trainer.world_size == 1 and not trainer.sanity_checking:
            self._stop_if_requested(trainer)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.world_size == 1:
            self._stop_if_requested(trainer)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_if_requested(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_losses()

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Refuse to write weights that are not finite: the checkpoint on disk stays the last good one."""
        if not self.check_finite:
            return
        self._check_losses()
        state = checkpoint.get("state_dict", {})
        floats = [(k, v) for k, v in state.items() if isinstance(v, Tensor) and v.is_floating_point()]
        if not floats:
            return
        finite = torch.stack([torch.isfinite(v).all() for _, v in floats]).cpu()
        if not bool(finite.all()):
            bad = [k for (k, _), ok in zip(floats, finite.tolist(), strict=True) if not ok]
            epoch, step = trainer.current_epoch, trainer.global_step
            raise NonFiniteLossError(
                f"weights became NaN or infinite by epoch {epoch}, global step {step} ({', '.join(bad[:3])}"
                f"{' and more' if len(bad) > 3 else ''})"
            )

    def _check_losses(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        finite = torch.isfinite(torch.stack([p[3].float().reshape(()) for p in pending])).cpu()
        if bool(finite.all()):
            return
        step, epoch, batch_idx, loss = pending[int((~finite).nonzero()[0])]
        raise NonFiniteLossError(f"loss is {loss.item()} at epoch {epoch}, batch {batch_idx} (global step {step})")

    # -- faults --------------------------------------------------------------------------------------------------
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.outcome = None
        self._handle(trainer, exception)

    def _handle(self, trainer: L.Trainer, exception: BaseException) -> None:
        """Save what can be resumed, set :attr:`outcome` and mark the run folder."""
        run_dir = run_dir_of(trainer)
        where = {"epoch": trainer.current_epoch, "global_step": trainer.global_step}
        if isinstance(exception, CleanStop):
            self.outcome = Outcome(exception.state, str(exception), "", exception.exit_code)
            if run_dir is not None and trainer.is_global_zero:
                write_status(run_dir, exception.state, reason=str(exception), **where)
            return
        if isinstance(exception, USER_ERRORS):
            # The launcher prints these as usage errors; the folder still says why the run stopped.
            if run_dir is not None and trainer.is_global_zero:
                write_status(run_dir, "failed", reason=str(exception), **where)
            return
        signum = signal_of(exception, self._agreed or self._requested)
        if signum is None and not isinstance(exception, NonFiniteLossError | CheckpointWriteError):
            # Anything but an interrupt surfaces pending non-finite losses first: they are the likelier cause.
            try:
                self._check_losses()
            except NonFiniteLossError as nan:
                exception = nan
        saved, save_error = None, None
        if self._should_save(trainer, exception, signum):
            path = _last_checkpoint_path(trainer)
            ckpt = trainer.checkpoint_callback
            if isinstance(ckpt, ModelCheckpoint):
                # The checkpoint callback's own last.ckpt from now on: stopped before its first save (a language
                # model's first validation), a resumed run would otherwise write last-v1.ckpt beside it.
                ckpt.last_model_path = str(path)
            try:
                trainer.save_checkpoint(path, weights_only=False)
                saved = path
            except NonFiniteLossError as nan:
                exception, signum = nan, None
            except Exception as err:  # noqa: BLE001 - the original failure is what gets reported
                save_error = err
        self.outcome = self._describe(trainer, exception, signum, saved, save_error, run_dir)
        if signum is not None and signum == self._requeue and trainer.is_global_zero:
            self.outcome = self._requeued(self.outcome, saved)
        if run_dir is not None and trainer.is_global_zero:
            resume = resume_command(run_dir) if has_checkpoint(run_dir) else None
            write_status(
                run_dir,
                self.outcome.state,
                reason=self.outcome.message,
                checkpoint=str(saved) if saved else None,
                resume=resume,
                **where,
            )

    @staticmethod
    def _requeued(outcome: Outcome, saved: Path | None) -> Outcome:
        """Requeue the SLURM job once the resumable checkpoint is written; the outcome says whether SLURM took it."""
        if saved is None:
            return outcome  # nothing the requeued job could continue from: the run stays interrupted
        requeued, note = requeue_job()
        if not requeued:
            return Outcome(outcome.state, f"{outcome.message}; {note}", outcome.hint, outcome.exit_code)
        return Outcome("requeued", f"{outcome.message}; {note}", "", outcome.exit_code)

    def _should_save(self, trainer: L.Trainer, exception: BaseException, signum: int | None) -> bool:
        if not self.save_on_interrupt or trainer.sanity_checking or trainer.global_step == 0:
            return False
        if trainer.state.fn != "fit" or _last_checkpoint_path(trainer) is None:
            return False
        if isinstance(exception, NonFiniteLossError | CheckpointWriteError):
            return False  # non-finite weights, or a disk that just refused a write
        if isinstance(exception, OSError) and exception.errno in (errno.ENOSPC, errno.EDQUOT):
            return False
        # Signals reach every process; an error on one rank alone would leave the others waiting in the save.
        return signum is not None or trainer.world_size == 1

    def _describe(
        self,
        trainer: L.Trainer,
        exception: BaseException,
        signum: int | None,
        saved: Path | None,
        save_error: BaseException | None,
        run_dir: Path | None,
    ) -> Outcome:
        at = phase(trainer)
        resume = f"resume with: {resume_command(run_dir)}" if run_dir is not None else ""
        kept = kept_checkpoint(trainer)
        if signum is not None:
            name = signal.Signals(signum).name
            if saved:
                what = f"saved a resumable checkpoint to {saved}"
            elif save_error is not None:
                what = f"could not save a checkpoint ({save_error}); the last one is {kept or 'missing'}"
            else:
                what = f"the last checkpoint is {kept}" if kept else "no checkpoint had been saved yet"
            hint = resume if (saved or kept) else "start it again: nothing was saved yet"
            return Outcome("interrupted", f"{name} {at}; {what}", hint, 128 + signum)
        if isinstance(exception, NonFiniteLossError):
            keep = f"the last good checkpoint is {kept}" if kept else "no checkpoint had been saved yet"
            return Outcome(
                "failed",
                f"training stopped: {exception}. Checkpoints were not overwritten; {keep}",
                "lower the learning rate (--model.lr), clip gradients (--trainer.gradient_clip_val 1.0) or check "
                "the data for NaN/inf values",
                EXIT_FAILED,
            )
        if isinstance(exception, OSError) and exception.errno in (errno.ENOSPC, errno.EDQUOT):
            detail = exception.strerror or str(exception)
            return Outcome(
                "failed",
                f"disk full {at}: {detail}. The previous checkpoint files are intact"
                + (f" (last: {kept})" if kept else ""),
                f"free some space, then {resume}" if kept and resume else "free some space and start again",
                EXIT_FAILED,
            )
        source = _where(exception)
        what = f"saved a checkpoint to {saved}" if saved else f"the last checkpoint is {kept or 'missing'}"
        return Outcome(
            "failed",
            f"{type(exception).__name__} in {source or 'training'} {at}: {exception}; {what}",
            f"after fixing it, {resume}" if (saved or kept) and resume else "",
            EXIT_FAILED,
            exception,
        )


def find_guard(trainer: L.Trainer) -> FaultGuard | None:
    """The trainer's :class:`FaultGuard`, if it has one."""
    return next((cb for cb in trainer.callbacks if isinstance(cb, FaultGuard)), None)


# -- internals -------------------------------------------------------------------------------------------------------
def run_dir_of(trainer: L.Trainer) -> Path | None:
    """The run folder: the run report's (the launcher's), else the logger's version folder, else ``None``.

    Read without ``trainer.log_dir``, which is a collective call under DDP and would hang when one rank asks alone.
    """
    report = RunReport.of(trainer)
    if report is not None and report.run_dir is not None:
        return report.run_dir
    log_dir = trainer.logger.log_dir if isinstance(trainer.logger, TensorBoardLogger) else None
    return Path(log_dir) if log_dir else None


def _last_checkpoint_path(trainer: L.Trainer) -> Path | None:
    ckpt = trainer.checkpoint_callback
    if not isinstance(ckpt, ModelCheckpoint) or ckpt.dirpath is None:
        run_dir = run_dir_of(trainer)
        return run_dir / "checkpoints" / "last.ckpt" if run_dir is not None else None
    return Path(ckpt.dirpath) / (ckpt.CHECKPOINT_NAME_LAST + ckpt.FILE_EXTENSION)


def kept_checkpoint(trainer: L.Trainer) -> Path | None:
    """The checkpoint a resume would start from: ``last.ckpt``, else the best one, if on disk."""
    last = _last_checkpoint_path(trainer)
    if last is not None and last.is_file():
        return last
    ckpt = trainer.checkpoint_callback
    best = ckpt.best_model_path if isinstance(ckpt, ModelCheckpoint) else ""
    return Path(best) if best and Path(best).is_file() else None


def phase(trainer: L.Trainer) -> str:
    """Where the trainer was, for messages: ``at epoch E, global step S``, or before training, or while testing."""
    step = f"global step {trainer.global_step}"
    if trainer.state.fn == "test":
        return f"while testing (after training to epoch {trainer.current_epoch}, {step})"
    if trainer.global_step == 0 and trainer.fit_loop.epoch_loop.batch_progress.total.ready == 0:
        return "before training started"
    return f"at epoch {trainer.current_epoch}, {step}"


def signal_of(exception: BaseException, requested: int | None) -> int | None:
    """The signal behind an interrupt: a :class:`StopSignal`'s own, SIGTERM for Lightning's SIGTERMException, SIGINT
    for KeyboardInterrupt."""
    if isinstance(exception, StopSignal):
        return exception.signum
    if isinstance(exception, SIGTERMException):
        return signal.SIGTERM
    if isinstance(exception, KeyboardInterrupt):
        return requested or signal.SIGINT
    return None


def _where(exception: BaseException) -> str:
    """``Callback.hook`` (or model/datamodule method) the exception was raised in, from its traceback."""
    where = ""
    tb = exception.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, L.Callback | L.LightningModule | L.LightningDataModule) and not isinstance(
            owner, FaultGuard
        ):
            kind = (
                "callback"
                if isinstance(owner, L.Callback)
                else "model"
                if isinstance(owner, L.LightningModule)
                else "datamodule"
            )
            where = f"{kind} {type(owner).__name__}.{tb.tb_frame.f_code.co_name}"
        tb = tb.tb_next
    return where
