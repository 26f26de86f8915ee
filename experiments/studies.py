"""Where sweeps keep their studies: storage, safe creation, settings, and trials whose worker died.

A study lives in a journal file in its sweep folder (``runs/NAME/sweep-STUDY/study.journal``) unless ``--storage``
names another place: a journal file or SQLite file on a filesystem every machine of a cluster sees, or a database
server (``postgresql://user@host/db``). Creating a study is safe when several workers start at once (a file lock
on one machine, retries on a shared database), and every worker checks that the study it joins is the study its
command describes.

Each running trial records its worker (host and process) and refreshes a heartbeat. A trial whose process is gone
(same machine) or whose heartbeat is older than ``stale_after`` seconds (any machine) is marked failed and its
parameters are queued to run again; such a trial never counts towards the study's number of trials.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from experiments.console import UsageError

if TYPE_CHECKING:
    from experiments.sweep import Sweep

#: User attribute of the study holding the sweep's settings.
SETTINGS_ATTR = "zerotune"
#: Trial user attributes: who runs it, when it last showed life, why it was failed, what it retries.
WORKER_ATTR, HEARTBEAT_ATTR, INTERRUPTED_ATTR, RETRY_ATTR = "worker", "heartbeat", "interrupted", "retry_of"
HEARTBEAT_SECONDS = 30.0
#: A trial on another machine whose heartbeat is older than this is taken for dead.
STALE_AFTER_SECONDS = 600.0
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


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """The Optuna storage behind ``url`` (see :func:`storage_url`).

    Raises:
        UsageError: for a database that cannot be reached or a file that cannot be created.
    """
    try:
        if "://" not in url:
            from optuna.storages.journal import JournalFileBackend

            Path(url).parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(url))
        # SQLite waits for a busy file rather than failing at once when workers write together.
        kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except (ImportError, ModuleNotFoundError) as err:
        raise UsageError(f"--storage {shown_url(url)}: {err}; install the database's driver") from None
    except Exception as err:  # noqa: BLE001 - drivers raise their own types; the message says what went wrong
        raise UsageError(f"--storage {shown_url(url)}: cannot open it ({type(err).__name__}: {err})") from None


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing): serializes workers of one machine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


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
        for attempt in range(20):
            try:
                study = optuna.create_study(
                    storage=storage, study_name=name, directions=directions, load_if_exists=True
                )
                break
            except Exception as err:  # noqa: BLE001 - IntegrityError from a database another machine wrote first
                if attempt == 19 or "IntegrityError" not in type(err).__name__ + str(err):
                    raise
                time.sleep(0.2 + 0.1 * attempt)
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
def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux ``/proc``), telling a reused PID from the original process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _boot_id() -> str | None:
    """This machine's boot id (Linux): tells two machines that share a host name apart."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def worker_identity() -> dict[str, Any]:
    """This process as the owner of a trial: host, boot, PID and the process's start time."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "boot": _boot_id(), "pid": pid, "start": _process_start(pid)}


def _here(owner: dict[str, Any]) -> bool:
    """Whether ``owner`` ran on this machine (since its last boot), where its process can be looked up."""
    return owner.get("host") == socket.gethostname() and owner.get("boot") == _boot_id()


def _alive(owner: dict[str, Any]) -> bool:
    pid = int(owner.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    start = owner.get("start")
    return start is None or _process_start(pid) in (None, start)


def is_dead(trial: FrozenTrial, now: float, stale_after: float = STALE_AFTER_SECONDS) -> str | None:
    """Why a RUNNING trial's worker is taken for dead, or ``None`` while it may be alive."""
    owner = trial.user_attrs.get(WORKER_ATTR)
    started = trial.datetime_start.timestamp() if trial.datetime_start else now
    if owner is None:
        # Owners are recorded right after a trial is created; one without for this long lost its worker.
        return "its worker stopped before recording itself" if now - started > stale_after else None
    if _here(owner) and not _alive(owner):
        return f"its worker (process {owner.get('pid')} on {owner.get('host')}) is gone"
    beat = float(trial.user_attrs.get(HEARTBEAT_ATTR, started))
    if now - beat > stale_after:
        return f"its worker ({owner.get('host')}, process {owner.get('pid')}) sent no heartbeat for {now - beat:.0f} s"
    return None


def fail_interrupted(study: optuna.Study, trial: FrozenTrial, reason: str, retry: bool = True) -> None:
    """Mark a RUNNING trial failed because it was cut short, and queue its parameters to run again."""
    if trial.user_attrs.get(INTERRUPTED_ATTR):
        retry = False  # another worker is already failing it
    with contextlib.suppress(Exception):
        study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED_ATTR, reason)
    if retry and trial.params:
        study.enqueue_trial(trial.params, user_attrs={RETRY_ATTR: trial.number}, skip_if_exists=False)
    with contextlib.suppress(ValueError):  # already finished by another worker
        study.tell(trial.number, state=TrialState.FAIL)


def reap(study: optuna.Study, stale_after: float = STALE_AFTER_SECONDS) -> list[tuple[int, str]]:
    """Fail (and queue again) the RUNNING trials whose worker died; returns ``(trial number, reason)`` of each."""
    now = time.time()
    reaped = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = is_dead(trial, now, stale_after)
        if reason is not None:
            fail_interrupted(study, trial, f"interrupted: {reason}")
            reaped.append((trial.number, reason))
    return reaped


def counted(study: optuna.Study) -> int:
    """Trials that count towards the study's size: finished, pruned, failed on their own, or running."""
    n = 0
    for t in study.get_trials(deepcopy=False):
        own_failure = t.state == TrialState.FAIL and INTERRUPTED_ATTR not in t.user_attrs
        if own_failure or t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
            n += 1
    return n


class Heartbeat:
    """Refreshes a trial's heartbeat attribute from a background thread while its run trains.

    Args:
        trial: The running trial.
        interval: Seconds between beats.
    """

    def __init__(self, trial: optuna.Trial, interval: float = HEARTBEAT_SECONDS) -> None:
        self.trial = trial
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="sweep-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):  # a finished trial or a storage hiccup: the next beat retries
                self.trial.set_user_attr(HEARTBEAT_ATTR, time.time())

    def __enter__(self) -> Heartbeat:
        self.trial.set_user_attr(HEARTBEAT_ATTR, time.time())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# -- samplers and pruners ------------------------------------------------------------------------------------------
def make_sampler(sweep: Sweep, stream: int = 0) -> Any:
    """The Optuna sampler of ``sweep``; ``stream`` picks another random stream of the same seed (other workers).

    Raises:
        UsageError: for arguments the sampler does not take, or a space it cannot search.
    """
    import numpy as np

    from experiments.search_space import SearchSpace

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
