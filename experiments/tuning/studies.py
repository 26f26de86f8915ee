"""Where sweeps keep their studies: storage, safe creation, settings, and trials whose worker died.

A study lives in a journal file in its sweep folder (``runs/NAME/sweep-STUDY/study.journal``) unless ``--storage``
names another place: a journal file or SQLite file on a filesystem every machine of a cluster sees, or a database
server (``postgresql://user@host/db``). Creating a study is safe when several workers start at once (a file lock
on one machine, retries on a shared database), and every worker checks that the study it joins is the study its
command describes.

Workers that die are found by Optuna's heartbeat: while a trial runs, Optuna's heartbeat thread (started by
``Study.optimize``) records a heartbeat for it every ``ZEROTUNE_SWEEP_HEARTBEAT`` seconds, and
:func:`optuna.storages.fail_stale_trials` fails a running trial whose last heartbeat is older than the grace period
(``ZEROTUNE_SWEEP_GRACE`` seconds) and hands it to the storage's callback, Optuna's
:class:`~optuna.storages.RetryHeartbeatStaleTrialCallback` (formerly ``RetryFailedTrialCallback``), which queues its
parameters to run again as a new trial that records which one it retries. Optuna's RDBStorage (SQLite, PostgreSQL,
MySQL) keeps heartbeats; its JournalStorage has none in Optuna 5.0, so the journal storage here adds them (as a
system attribute of the trial). Both storages add what a heartbeat cannot tell at once: a running trial whose worker
ran on this machine and whose process is gone is stale at once, without waiting out the grace period. A trial
failed this way never counts towards the study's number of trials; its retry does.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import os
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial, TrialState

from experiments.rundir.console import UsageError

if TYPE_CHECKING:
    from experiments.tuning.settings import Sweep

#: User attribute of the study holding the sweep's settings.
SETTINGS_ATTR = "zerotune"
#: Trial user attributes: who runs it, why it was cut short (Ctrl+C, SIGTERM), which trial it retries and why.
WORKER_ATTR, INTERRUPTED_ATTR, RETRY_ATTR, RETRY_REASON_ATTR = "worker", "interrupted", "retry_of", "retry_reason"
#: System attribute of a trial in a journal file: when its worker last showed life (seconds since the epoch).
HEARTBEAT_ATTR = "zerotune:heartbeat"
#: Environment variables: seconds between heartbeats, seconds without one before a trial is taken for dead, and
#: the name this machine's workers record (default: the host name).
HEARTBEAT_ENV, GRACE_ENV, MACHINE_ENV = "ZEROTUNE_SWEEP_HEARTBEAT", "ZEROTUNE_SWEEP_GRACE", "ZEROTUNE_SWEEP_MACHINE"
HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 600
#: How often the parameters of a trial whose worker died are run again before the trial counts as failed.
MAX_RETRIES = 2
JOURNAL_FILE = "study.journal"
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def storage_url(spec: str | None, study_dir: Path) -> str:
    """The storage a ``--storage`` value names: a database URL, ``sqlite:///`` for a ``.db`` file, else a journal.

    Returns:
        A URL (``sqlite:///...``, ``postgresql://...``) or the absolute path of a journal file.
    """
    if spec is None:
        return str((study_dir / JOURNAL_FILE).resolve())
    if "://" in spec:
        return spec
    path = Path(spec).expanduser().resolve()
    return f"sqlite:///{path}" if path.suffix in _SQLITE_SUFFIXES else str(path)


def shown_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (safe to print and to write into the sweep folder)."""
    if "://" not in url:
        return url
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def heartbeat_settings() -> tuple[int, int]:
    """Seconds between a running trial's heartbeats, and without one before its worker is taken for dead.

    Raises:
        UsageError: for a value of ``ZEROTUNE_SWEEP_HEARTBEAT`` or ``ZEROTUNE_SWEEP_GRACE`` that is not a whole number
            of seconds, or a grace period not longer than the interval.
    """
    values = []
    for name, default in ((HEARTBEAT_ENV, HEARTBEAT_SECONDS), (GRACE_ENV, GRACE_SECONDS)):
        text = os.environ.get(name, "").strip()
        value = int(text) if text.isdigit() else (default if not text else 0)
        if value < 1:
            raise UsageError(f"{name}={text}: give a whole number of seconds >= 1 (default {default})")
        values.append(value)
    interval, grace = values
    if grace <= interval:
        raise UsageError(
            f"{GRACE_ENV}={grace} must be longer than the heartbeat interval {HEARTBEAT_ENV}={interval}, or every "
            "trial would be taken for dead between two heartbeats"
        )
    return interval, grace


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """The Optuna storage behind ``url`` (see :func:`storage_url`), with heartbeats and retries of dead trials.

    Raises:
        UsageError: for a database that cannot be reached or a file that cannot be created.
    """
    interval, grace = heartbeat_settings()
    heartbeat = {
        "heartbeat_interval": interval,
        "grace_period": grace,
        "heartbeat_stale_trial_callback": RetryDead(grace),
    }
    try:
        if "://" not in url:
            from optuna.storages.journal import JournalFileBackend

            Path(url).parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(url), **heartbeat)
        # SQLite waits for a busy file rather than failing at once when workers write together.
        kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeats are experimental in Optuna 5.0
            return _retry_creation(lambda: RDBStorage(url, engine_kwargs=kwargs, **heartbeat))
    except (ImportError, ModuleNotFoundError) as err:
        raise UsageError(f"--storage {shown_url(url)}: {err}; install the database's driver") from None
    except Exception as err:  # noqa: BLE001 - drivers raise their own types; the message says what went wrong
        reason = " ".join(str(err).split())
        raise UsageError(f"--storage {shown_url(url)}: cannot open it ({type(err).__name__}: {reason})") from None


def _retry_creation(make: Callable[[], Any], attempts: int = 20) -> Any:
    """``make()``, again after a moment when another machine was creating the same tables or rows at that instant."""
    for attempt in range(attempts):
        try:
            return make()
        except Exception as err:  # noqa: BLE001 - IntegrityError and friends of whichever driver
            text = f"{type(err).__name__} {err}"
            if attempt == attempts - 1 or not any(
                w in text for w in ("IntegrityError", "already exists", "UniqueViolation")
            ):
                raise
            time.sleep(0.2 + 0.1 * attempt)
    raise AssertionError("unreachable")


class FileLock:
    """An exclusive ``flock`` on ``path`` (created if missing): serializes the workers of one machine.

    Taken by :meth:`acquire` (or entering a ``with`` block) and given back by :meth:`release` or the end of the
    block, whichever comes first; a worker hands it back as soon as the trial it chose under it is recorded.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: Any = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a")  # noqa: SIM115 - closed by release()
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def file_lock(path: Path) -> FileLock:
    """Hold an exclusive ``flock`` on ``path`` for a ``with`` block (see :class:`FileLock`)."""
    return FileLock(path)


def create_or_load(
    url: str, name: str, directions: list[str], settings: dict[str, Any], lock: Path
) -> tuple[optuna.Study, bool]:
    """Create the study ``name`` in the storage at ``url`` with ``settings``, or load it if it exists.

    Safe when workers start together: on one machine they take turns through the file ``lock`` (which also keeps
    them from creating a new SQLite file's tables at once); workers of other machines sharing a database retry
    when another one created the study first.

    Returns:
        The study and whether this call created it.
    """
    with file_lock(lock):
        storage = open_storage(url)
        existing = find_study(storage, name)
        # A database another machine wrote first raises IntegrityError: the study is then loaded.
        study = _retry_creation(
            lambda: optuna.create_study(storage=storage, study_name=name, directions=directions, load_if_exists=True)
        )
        created = existing is None
        if created:
            study.set_user_attr(SETTINGS_ATTR, settings)
    return study, created


def find_study(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study | None:
    """The study ``name`` in ``storage``, or ``None``."""
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def stored_settings(study: optuna.Study, wait: float = 30.0) -> dict[str, Any]:
    """The sweep settings stored with ``study`` (waiting a little for a creator on another machine to write them).

    Raises:
        UsageError: when the study was not made by a sweep.
    """
    deadline = time.monotonic() + wait
    while True:
        settings = study.user_attrs.get(SETTINGS_ATTR)
        if settings is not None:
            return settings
        if time.monotonic() > deadline:
            raise UsageError(
                f"study '{study.study_name}' was not made by 'python -m experiments.sweep' (it has no sweep settings)"
            )
        time.sleep(0.5)
        study = optuna.load_study(study_name=study.study_name, storage=study._storage)


def other_experiments(storage: optuna.storages.BaseStorage, experiment: str) -> list[tuple[str, str]]:
    """``(study, experiment)`` of the sweep studies in ``storage`` that belong to another experiment."""
    found = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        settings = summary.user_attrs.get(SETTINGS_ATTR) or {}
        if settings.get("experiment") not in (None, experiment):
            found.append((summary.study_name, settings["experiment"]))
    return found


# -- trials: owners, heartbeats, dead workers --------------------------------------------------------------------------
def machine() -> str:
    """The name this machine's workers record with their trials: ``ZEROTUNE_SWEEP_MACHINE``, else the host name."""
    return os.environ.get(MACHINE_ENV) or socket.gethostname()


def _boot_id() -> str | None:
    """This machine's boot id (Linux): tells two machines that share a host name apart."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def worker_identity() -> dict[str, Any]:
    """This process as the owner of a trial: machine, boot, PID and the process's start time."""
    from experiments.rundir.status import process_start_time

    pid = os.getpid()
    return {"host": machine(), "boot": _boot_id(), "pid": pid, "start": process_start_time(pid)}


def worker_gone(trial: FrozenTrial) -> str | None:
    """Why a running trial's worker is known to be dead (it ran on this machine and its process is gone), or ``None``.

    A worker on another machine cannot be looked up: only its heartbeat tells.
    """
    from experiments.rundir.status import process_alive

    owner = trial.user_attrs.get(WORKER_ATTR)
    if not isinstance(owner, dict) or owner.get("host") != machine() or owner.get("boot") != _boot_id():
        return None
    pid, start = owner.get("pid"), owner.get("start")
    if not isinstance(pid, int) or pid <= 0:
        return None
    started = int(start) if str(start).isdigit() else None  # studies of older versions stored it as text
    if process_alive(pid, started):  # a zombie (ended, not yet reaped) is not alive
        return None
    return f"worker died (process {pid} on {owner.get('host')} is gone)"


def why_stale(trial: FrozenTrial, grace: int) -> str:
    """Why the heartbeat failed ``trial``: its process is gone (this machine), or it sent no heartbeat in time."""
    gone = worker_gone(trial)
    if gone is not None:
        return gone
    owner = trial.user_attrs.get(WORKER_ATTR)
    who = f"process {owner.get('pid')} on {owner.get('host')}" if isinstance(owner, dict) else "its worker"
    return f"worker died (no heartbeat from {who} for over {grace} s)"


class _DeadWorkersHere:
    """Adds to the stale trials of a storage (heartbeat older than the grace period) the running trials whose worker
    ran on this machine and whose process is gone: those are failed at once."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = list(super()._get_stale_trial_ids(study_id))  # type: ignore[misc]
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):  # type: ignore[attr-defined]
            if trial._trial_id not in stale and worker_gone(trial) is not None:
                stale.append(trial._trial_id)
        return stale


class RDBStorage(_DeadWorkersHere, optuna.storages.RDBStorage):
    """Optuna's RDBStorage: heartbeats kept in the database, timed by the database's clock."""

    def record_heartbeat(self, trial_id: int) -> None:
        # Optuna's heartbeat thread ends at its first error: a database that is busy or briefly unreachable would
        # then silence the trial for good. A missed beat is tried again at the next; only a long silence counts.
        with contextlib.suppress(Exception):
            super().record_heartbeat(trial_id)


class _JournalHeartbeats(optuna.storages.JournalStorage, BaseHeartbeat):
    """Optuna's JournalStorage with the heartbeat of its RDBStorage: each heartbeat is a system attribute of the
    trial, appended to the journal; a trial is stale when its last one (or its start, before the first) is older than
    ``grace_period`` seconds by this machine's clock."""

    def __init__(
        self,
        backend: Any,
        heartbeat_interval: int,
        grace_period: int,
        heartbeat_stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    ) -> None:
        super().__init__(backend)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.heartbeat_stale_trial_callback = heartbeat_stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        # A trial ended meanwhile, or a journal on a network filesystem that is briefly unreachable: a missed beat is
        # tried again at the next (Optuna's heartbeat thread would end at the first error).
        with contextlib.suppress(UpdateFinishedTrialError, KeyError, OSError):
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            beat = trial.system_attrs.get(HEARTBEAT_ATTR)
            if beat is None:
                beat = trial.datetime_start.timestamp() if trial.datetime_start else now
            if now - float(beat) > self.grace_period:
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self.heartbeat_stale_trial_callback


class JournalStorage(_DeadWorkersHere, _JournalHeartbeats):
    """A journal file with heartbeats (see :class:`_JournalHeartbeats`)."""


class RetryDead:
    """The storages' callback for a trial that the heartbeat failed: run its parameters again, and say so.

    Args:
        grace: The grace period, for the message.
    """

    def __init__(self, grace: int) -> None:
        self.grace = grace

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        reason = why_stale(trial, self.grace)
        number = requeue(study, trial, reason)
        then = (
            f"its parameters are queued to run again as trial {number}"
            if number is not None
            else f"not run again: its parameters were tried {MAX_RETRIES + 1} times"
        )
        print(f"trial {trial.number:>3}  failed: {reason}; {then}", flush=True)


def requeue(study: optuna.Study, trial: FrozenTrial, reason: str) -> int | None:
    """Queue the parameters of ``trial``, a FAILED trial that was cut short, to run again as a new trial.

    Optuna's :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback` adds the new trial (waiting, same
    parameters, and the numbers of the trials it retries in its system attributes); it also records, as user
    attributes, which trial it retries and why. The run folder of ``trial`` says so in its ``status.json``.

    Returns:
        The new trial's number, or ``None`` when these parameters were already run again ``MAX_RETRIES`` times.
    """
    template = copy.deepcopy(trial)
    # The retry is a new trial: not the dead one's worker, run folder, error or heartbeat.
    template.user_attrs = {RETRY_ATTR: trial.number, RETRY_REASON_ATTR: reason}
    template.system_attrs = {k: v for k, v in trial.system_attrs.items() if k != HEARTBEAT_ATTR}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)(study, template)
    trials = study.get_trials(deepcopy=False)
    number = next((t.number for t in trials if retry_history(t)[-1:] == [trial.number]), None)
    _mark_run(trial, reason, number)
    return number


def _mark_run(trial: FrozenTrial, reason: str, number: int | None) -> None:
    """Make the run folder of a trial cut short say so: ``crashed`` (its worker died) or ``interrupted``, and whether
    its parameters run again (only on a machine that sees the folder)."""
    import json

    from experiments.rundir.status import ACTIVE_STATES, STATUS_FILE, write_status

    run_dir = trial.user_attrs.get("run_dir")
    if not run_dir or not Path(run_dir).is_dir():
        return
    try:
        status = json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        status = {}
    status = status if isinstance(status, dict) else {}
    then = f"re-queued as trial {number}" if number is not None else "not re-queued (tried too often)"
    kept = {k: v for k, v in status.items() if k not in ("state", "reason", "host", "pid", "pid_started", "updated")}
    state = status.get("state")
    if state is None or state in ACTIVE_STATES:
        write_status(run_dir, "crashed", **kept, reason=f"{reason}; {then}", retried_as=number)
    elif state == "interrupted":
        write_status(run_dir, state, **kept, reason=f"{status.get('reason', 'interrupted')}; {then}", retried_as=number)


def retry_history(trial: FrozenTrial) -> list[int]:
    """The numbers of the trials that ``trial`` runs again, the first one first (Optuna's record; empty if none)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback.retry_history(trial)


def reap(study: optuna.Study) -> None:
    """Fail the running trials whose worker died (Optuna's ``fail_stale_trials``); the storage's :class:`RetryDead`
    queues each one's parameters again and prints a line about it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def cut_short(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of the failed ``trials`` that were cut short (interrupted, or their worker died): they never count."""
    retried = {n for t in trials for n in retry_history(t)}
    return {
        t.number
        for t in trials
        if t.state == TrialState.FAIL and (INTERRUPTED_ATTR in t.user_attrs or t.number in retried)
    }


def counted(study: optuna.Study) -> int:
    """Trials that count towards the study's size: finished, pruned, failed on their own, or running."""
    trials = study.get_trials(deepcopy=False)
    short = cut_short(trials)
    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.FAIL)
    return sum(t.state in done and t.number not in short for t in trials)


# -- samplers and pruners ------------------------------------------------------------------------------------------
def make_sampler(sweep: Sweep, stream: int = 0) -> Any:
    """The Optuna sampler of ``sweep``; ``stream`` picks another random stream of the same seed (other workers).

    Raises:
        UsageError: for arguments the sampler does not take, or a space it cannot search.
    """
    import numpy as np

    from experiments.tuning.search_space import SearchSpace

    seed = sweep.seed if stream == 0 else int(np.random.SeedSequence([sweep.seed, stream]).generate_state(1)[0])
    args = dict(sweep.sampler_args)
    space = SearchSpace.parse(sweep.space)
    try:
        if sweep.sampler == "grid":
            return GridSampler(space.grid(), seed=seed, **args)
        if sweep.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed, **args)
        if sweep.sampler == "cmaes":
            _check_cmaes(sweep, space)
            return optuna.samplers.CmaEsSampler(seed=seed, **args)
        return optuna.samplers.TPESampler(seed=seed, **args)
    except TypeError as err:
        raise UsageError(f"--sampler_args {args}: {err}") from None


def _check_cmaes(sweep: Sweep, space: Any) -> None:
    try:
        import cmaes  # noqa: F401
    except ImportError:
        raise UsageError("--sampler cmaes needs the cmaes package: pip install cmaes") from None
    if len(sweep.objectives) > 1:
        raise UsageError("--sampler cmaes optimizes one objective; use tpe for several")
    choices = [d.key for d in space.dims if d.kind == "choice"]
    if choices:
        raise UsageError(f"--sampler cmaes searches numeric ranges only; {', '.join(choices)} is a choice: use tpe")
    if len(space.dims) < 2:
        raise UsageError("--sampler cmaes needs at least two searched settings; use tpe for one")


def make_pruner(sweep: Sweep) -> Any:
    """The Optuna pruner of ``sweep`` (Hyperband's budget is ``trainer.max_epochs``).

    Raises:
        UsageError: for arguments the pruner does not take.
    """
    args = dict(sweep.pruner_args)
    try:
        if sweep.pruner == "median":
            return optuna.pruners.MedianPruner(**args)
        if sweep.pruner == "hyperband":
            budget = sweep.max_epochs if sweep.max_epochs and sweep.max_epochs > 0 else "auto"
            return optuna.pruners.HyperbandPruner(**{"min_resource": 1, "max_resource": budget, **args})
        return optuna.pruners.NopPruner()
    except (TypeError, ValueError) as err:
        raise UsageError(f"--pruner_args {args}: {err}") from None


class GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler; the sweep counts the trials itself (a grid's size is the study's size)."""

    def after_trial(self, *args: Any, **kwargs: Any) -> None:
        # Optuna's stops an ``optimize`` loop here once the grid is done; sweeps run trials by ask and tell.
        pass
