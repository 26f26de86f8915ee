"""Running a sweep's trials: each one a launcher run in its own folder, one progress line each, N at once.

A worker takes trials from the study until it holds the number asked for: it fails (and queues again) the trials
of workers that died, then runs one trial through Optuna's ``Study.optimize`` (which asks the study for the next
point, keeps the trial's heartbeat while it runs and tells the study how it ended: complete, pruned or failed); the
trial is a launcher run (:func:`experiments.run.launch`) with everything it prints sent to ``trial_N/output.log``.
Once the study holds its number of trials, a worker stays while other workers' trials run, to run again any trial
whose worker dies. ``--workers N`` starts N such workers as processes, each with its share of the CPU cores or its
own GPU; they end with the sweep that started them, even when it is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from experiments.rundir import console
from experiments.rundir.console import UsageError
from experiments.tuning.settings import TRIAL_ONLY

if TYPE_CHECKING:
    from experiments.launcher.launch import Config
    from experiments.tuning.reporter import TrialReporter
    from experiments.tuning.settings import StudyRef, Sweep

LOCK_FILE = ".sweep.lock"
#: Event file with the study's description for TensorBoard's HParams tab (see :func:`write_hparams_config`).
STUDY_EVENTS = "events.out.tfevents.0.study"
#: Trials in a row that end with an error (not a pruned or diverged run) before a worker gives up.
MAX_FAILURES_IN_A_ROW = 3


@dataclass
class TrialOutcome:
    """How one trial ended, for its progress line and the worker's loop."""

    number: int
    state: str  # complete, pruned, failed, diverged, interrupted
    values: list[float] | None
    params: dict[str, Any]
    seconds: float
    note: str = ""
    exit_code: int = 0
    error: bool = False  # a usage error or a bug (counts towards MAX_FAILURES_IN_A_ROW)

    def line(self, sweep: Sweep, best: float | None) -> str:
        from experiments.tuning.search_space import format_value

        metric = sweep.objectives[0][0]
        label = self.state if not self.note or self.state != "pruned" else self.note
        shown = "  ".join(f"{k}={format_value(v)}" for k, v in self.params.items())
        if self.values:
            value = "  ".join(f"{m} {v:.4f}" for (m, _), v in zip(sweep.objectives, self.values, strict=False))
        else:
            value = f"{metric} -"
        best_text = f"  (best {best:.4f})" if best is not None and len(sweep.objectives) == 1 else ""
        line = f"trial {self.number:>3}  {label:<17} {value}{best_text}  {self.seconds:6.1f}s  {shown}"
        if self.state in ("failed", "diverged", "interrupted") and self.note:
            line += f"\n           {self.note}"
        return line


@contextlib.contextmanager
def captured(path: Path) -> Iterator[None]:
    """Send everything the process prints (Python and C level) to ``path`` while the block runs."""
    sys.stdout.flush()
    sys.stderr.flush()
    with open(path, "a", buffering=1) as log:
        saved = (os.dup(1), os.dup(2))
        streams = (sys.stdout, sys.stderr)
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        sys.stdout = sys.stderr = log
        try:
            yield
        finally:
            log.flush()
            sys.stdout, sys.stderr = streams
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def run_trial(trial: Any, sweep: Sweep, ref: StudyRef) -> TrialOutcome:
    """Run ``trial`` as a launcher run in ``SWEEP_DIR/trial_N``; returns how it ended (the caller tells the study)."""
    from experiments.launcher.launch import apply_overrides
    from experiments.tuning.reporter import PARAMS, TrialReporter
    from experiments.tuning.search_space import SearchSpace

    params = SearchSpace.parse(sweep.space).suggest(trial)
    folder = ref.folder / f"trial_{trial.number}"
    folder.mkdir(parents=True, exist_ok=True)
    write_hparams_config(folder, sweep)
    trial.set_user_attr("run_dir", str(folder))
    placement = {"runs_dir": str(ref.folder.parent), "name": ref.folder.name, "version": folder.name}
    config = apply_overrides(sweep.trial_config(params), {**TRIAL_ONLY, **placement})
    reporter = TrialReporter(trial, sweep.objectives, pruner=sweep.pruner if sweep.pruner != "none" else "")
    outcome = TrialOutcome(trial.number, "complete", None, params, 0.0)
    start = time.monotonic()
    log = folder / "output.log"
    with captured(log):
        model = _launch(config, reporter, outcome)
    outcome.seconds = time.monotonic() - start
    metric = sweep.objectives[0][0]
    if outcome.state == "complete":
        values = [
            float(sum(p.numel() for p in model.parameters())) if m == PARAMS else reporter.best.get(m)
            for m, _ in sweep.objectives
        ]
        if None in values:
            outcome.state, outcome.exit_code, outcome.error = "failed", 2, True
            outcome.note = f"no finite {metric} was logged (does the run validate?)"
        else:
            outcome.values = values
    if outcome.state in ("failed", "diverged"):
        outcome.note += f" (log: {log})"
    if outcome.state == "pruned":
        outcome.values = [reporter.best[metric]] if metric in reporter.best else None
    return outcome


class _TrialEnded(Exception):
    """Ends the objective of a trial that failed, diverged or was interrupted: Optuna marks it failed."""


def run_one(study: Any, sweep: Sweep, ref: StudyRef, lock: Any) -> TrialOutcome | None:
    """Run the study's next trial through ``Study.optimize`` (one trial, with Optuna's heartbeat while it runs).

    Args:
        study: The study, loaded with this worker's sampler and pruner.
        sweep: Its settings.
        ref: Where it is.
        lock: The sweep folder's lock, held by the caller; handed back once the new trial has recorded its worker.

    Returns:
        How the trial ended, or ``None`` if it never started.
    """
    import optuna

    from experiments.tuning.studies import GRACE_ENV, INTERRUPTED_ATTR, WORKER_ATTR, requeue, worker_identity

    ended: list[tuple[TrialOutcome, int]] = []

    def objective(trial: optuna.Trial) -> float | list[float]:
        trial.set_user_attr(WORKER_ATTR, worker_identity())
        lock.release()
        outcome = run_trial(trial, sweep, ref)
        ended.append((outcome, trial._trial_id))
        if outcome.state == "complete":
            assert outcome.values is not None
            return outcome.values[0] if len(outcome.values) == 1 else outcome.values
        if outcome.state == "pruned":
            raise optuna.TrialPruned(outcome.note)
        # Set while the trial runs: Optuna refuses to change a trial once it has ended.
        trial.set_user_attr(INTERRUPTED_ATTR if outcome.state == "interrupted" else "error", outcome.note)
        raise _TrialEnded(outcome.note)

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the sweep prints its own line for each trial
    superseded = False
    try:
        study.optimize(objective, n_trials=1, catch=(_TrialEnded,))
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError) as err:
        # Optuna refuses to tell a trial that has ended ("Cannot tell a FAIL trial."): another worker took this one
        # for dead (no heartbeat within the grace period) and queued it again.
        refused = isinstance(err, optuna.exceptions.UpdateFinishedTrialError) or str(err).startswith("Cannot tell")
        if not refused or not ended or not study._storage.get_trial(ended[0][1]).state.is_finished():
            raise
        superseded = True
    finally:
        optuna.logging.set_verbosity(verbosity)
    if not ended:
        return None
    outcome, trial_id = ended[0]
    if superseded:
        outcome.state, outcome.values, outcome.error = "failed", None, False
        outcome.note = (
            "another worker took this trial for dead (its heartbeat came too late) and queued its parameters again: "
            f"this result is not counted (raise {GRACE_ENV})"
        )
        return outcome
    if outcome.state == "interrupted":
        # Cut short, not a result of its parameters: they run again (Ctrl+C and SIGTERM save a checkpoint first).
        number = requeue(study, study._storage.get_trial(trial_id), outcome.note)
        if number is not None:
            outcome.note += f"; its parameters are queued to run again as trial {number}"
    return outcome


def _launch(config: Config, reporter: TrialReporter, outcome: TrialOutcome) -> Any:
    """Run the trial's launcher run; set how it ended on ``outcome``; return the trained model (``None`` if none).

    Ends: ``complete``; ``pruned``; ``interrupted`` (Ctrl+C, SIGTERM); ``diverged`` (a NaN loss: a result of its
    parameters, counted like any trial); ``failed`` with ``error`` set (a usage error, exit code 2, or a bug, 1).
    """
    from experiments.api import launch
    from experiments.rundir.stops import TrainingStopped

    try:
        return launch(config, callbacks=[reporter]).model
    except TrainingStopped as stop:
        how = stop.outcome
        outcome.note, outcome.exit_code = how.message, how.exit_code
        if how.state == "pruned":
            epoch = reporter.pruned_epoch
            outcome.state, outcome.note = "pruned", "pruned" if epoch is None else f"pruned at epoch {epoch}"
        elif how.state == "interrupted":
            outcome.state = "interrupted"
        elif how.exception is None and how.exit_code != 2:
            outcome.state, outcome.exit_code = "diverged", 0
        else:
            outcome.state, outcome.error = "failed", True
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        outcome.state, outcome.note, outcome.exit_code, outcome.error = "failed", str(err), 2, True
    except KeyboardInterrupt:
        outcome.state, outcome.note, outcome.exit_code = "interrupted", "interrupted (Ctrl+C)", 130
    except Exception as err:  # noqa: BLE001 - a bug in one trial is reported and the sweep goes on
        traceback.print_exc()
        outcome.state, outcome.note, outcome.exit_code = "failed", f"{type(err).__name__}: {err}", 1
        outcome.error = True
    return None


def work(ref: StudyRef, sweep: Sweep, rank: int | None = None, created: bool = False) -> int:
    """Run trials of the study until it has ``sweep.trials``; returns the exit code (0, 1, 2, 130 or 143).

    Args:
        ref: The study.
        sweep: Its settings.
        rank: This worker's number among ``--workers`` (``None`` for a sweep run in one process).
        created: Whether this process created the study (a fresh single-process study draws from the seed alone).
    """
    import optuna
    from optuna.trial import TrialState

    from experiments.tuning.studies import counted, heartbeat_settings, make_pruner, make_sampler, open_storage, reap

    storage = open_storage(ref.url)
    n_before = len(optuna.load_study(study_name=ref.name, storage=storage).trials)
    # The seed alone for a fresh single-process study (reproducible); other streams of it for other workers, for
    # a resumed study (which would otherwise draw its first points again) and for a process joining from another
    # machine (which would otherwise draw the points of the one that created the study).
    if rank is None and n_before == 0:
        stream = 0 if created else 1 + os.getpid()
    else:
        stream = 1 + n_before * 1000 + (rank or 0)
    study = optuna.load_study(
        study_name=ref.name, storage=storage, sampler=make_sampler(sweep, stream), pruner=make_pruner(sweep)
    )
    interval, _ = heartbeat_settings()
    failures = 0
    waiting_for: list[int] = []
    while True:
        lock = _lock(ref)
        try:
            with lock:
                reap(study)  # trials of dead workers fail here, and their parameters are queued again
                full = counted(study) >= sweep.trials
                running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
                if full and not running:
                    return 0
                outcome = None if full else run_one(study, sweep, ref, lock)
        except KeyboardInterrupt:
            return 130  # between trials: nothing was running
        if full:
            # The study is full, but trials of other workers run: stay to run again any whose worker dies.
            if running != waiting_for:
                print(f"waiting    for trial {', '.join(map(str, running))} of other workers to finish", flush=True)
                waiting_for = running
            try:
                time.sleep(min(interval, 1))
            except KeyboardInterrupt:
                return 130
            continue
        if outcome is None:
            continue
        print(outcome.line(sweep, _best_value(study, sweep)), flush=True)  # the study's best, all workers
        if outcome.state == "interrupted":
            return outcome.exit_code or 130
        failures = failures + 1 if outcome.error else 0
        if failures >= MAX_FAILURES_IN_A_ROW:
            console.error(f"{failures} trials in a row failed, the last with: {outcome.note}")
            return outcome.exit_code or 1


def _lock(ref: StudyRef) -> Any:
    from experiments.tuning.studies import FileLock

    return FileLock(ref.folder / LOCK_FILE)


def _best_value(study: Any, sweep: Sweep) -> float | None:
    if len(sweep.objectives) != 1:
        return None
    try:
        return float(study.best_value)
    except ValueError:
        return None


#: Environment variable naming the process that started a worker, whose death ends the worker.
PARENT_ENV = "ZEROTUNE_SWEEP_PARENT"
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def end_with_parent() -> None:
    """End this worker (SIGTERM) when the sweep that started it dies, even by SIGKILL; no orphans keep training.

    On Linux the kernel sends the signal (``prctl(PR_SET_PDEATHSIG)``); elsewhere a thread polls the parent's PID.
    SIGTERM stops a running trial after its batch, with a checkpoint; the trial is marked interrupted and its
    parameters are queued to run again.
    """
    text = os.environ.get(PARENT_ENV, "")
    if not text.isdigit():
        return
    parent = int(text)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    else:
        import threading

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch, name="sweep-parent-watch", daemon=True).start()
    if os.getppid() != parent:  # the parent died before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)


def spawn_workers(ref: StudyRef, workers: int, storage: str | None) -> int:
    """Run ``workers`` worker processes on this machine, each with its share of the cores (or its own GPU).

    Returns:
        0 when the study holds its trials at the end (a worker that was killed meanwhile is reported, its trial was
        run again by another), else the workers' worst exit code (130 or 143 when interrupted).
    """
    import torch

    import experiments

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // workers)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(str(i) for i in range(gpus))).split(",")
    root = str(Path(experiments.__file__).resolve().parent.parent)
    procs = []
    for rank in range(workers):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        # The workers import this very checkout of zerotune, wherever they are started from.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        env[PARENT_ENV] = str(os.getpid())
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = visible[rank % len(visible)]
        command = [sys.executable, "-m", "experiments.sweep", "--resume", str(ref.folder), "--_worker", str(rank)]
        command += ["--_threads", str(threads)]
        if storage is not None:
            env["ZEROTUNE_SWEEP_STORAGE"] = storage
        # In a session of their own: Ctrl+C reaches this process only, which passes it on once to each worker.
        procs.append(subprocess.Popen(command, env=env, start_new_session=True))

    def forward(signum: int, frame: Any = None) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        while True:
            try:
                codes = [p.wait() for p in procs]
                break
            except KeyboardInterrupt:
                # Each worker stops its trial after the batch (a second Ctrl+C: at once) and marks it interrupted.
                forward(signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)
    killed = [(rank, -c) for rank, c in enumerate(codes) if c < 0]
    done = bool(killed) and _study_done(ref)
    for rank, signum in killed:
        name = signal.Signals(signum).name if signum in {s.value for s in signal.Signals} else f"signal {signum}"
        then = "; the other workers ran its trial again" if done else ""
        print(f"worker {rank} was killed ({name}){then}", file=sys.stderr)
    bad = [c for c in codes if c > 0]
    if bad:
        return 130 if 130 in bad else 143 if 143 in bad else max(bad) if max(bad) in (1, 2) else 1
    return 0 if not killed or done else 1


def _study_done(ref: StudyRef) -> bool:
    """Whether the study holds its number of trials, none of them still running."""
    import optuna
    from optuna.trial import TrialState

    from experiments.tuning.studies import counted, open_storage, stored_settings

    study = optuna.load_study(study_name=ref.name, storage=open_storage(ref.url))
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return not running and counted(study) >= int(stored_settings(study)["trials"])


def write_hparams_config(folder: Path, sweep: Sweep) -> None:
    """Tell TensorBoard's HParams tab which hyperparameters the study searches and which metrics compare trials.

    Every trial logs all of its hyperparameters, and TensorBoard takes the table's columns from the description
    of whichever run it reads first. Written into the sweep folder and, before each trial starts, into the trial's
    folder (as the first event file there), this description makes the columns the searched settings (by their
    logged names, ``model/lr`` for ``model.lr``) and the metrics ``hp_metric`` (the best value of the monitored
    metric) and the last ``val/loss``.
    """
    from tensorboard.plugins.hparams import summary_v2 as hp
    from torch.utils.tensorboard import SummaryWriter

    from experiments.tuning.search_space import SearchSpace

    path = folder / STUDY_EVENTS
    if path.exists():
        return
    hparams = []
    for d in SearchSpace.parse(sweep.space).dims:
        if d.kind == "choice":
            values = [d.encode(c) if d.encoded else c for c in d.args]
            same_type = len({type(v) for v in values}) == 1 and not isinstance(values[0], bool | type(None))
            domain = hp.Discrete(values if same_type else [str(v) for v in values])
        elif d.kind in ("int", "logint"):
            domain = hp.IntInterval(int(d.args[0]), int(d.args[1]))
        else:
            domain = hp.RealInterval(float(d.args[0]), float(d.args[1]))
        hparams.append(hp.HParam(d.key.replace(".init_args.", ".").replace(".", "/"), domain, display_name=d.key))
    metrics = [hp.Metric("hp_metric", display_name=f"best {sweep.monitor}"), hp.Metric("val/loss")]
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        writer = SummaryWriter(tmp)
        writer._get_file_writer().add_summary(hp.hparams_config_pb(hparams, metrics))
        writer.close()
        # Named to sort before the event files of the trial's run, whose first description TensorBoard keeps.
        os.replace(next(Path(tmp).glob("events.out.tfevents.*")), path)
