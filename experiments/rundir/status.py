"""The run status file: ``status.json`` in every run folder, written atomically, read back honestly.

A run writes ``starting`` when its folder is created, ``running`` when fitting starts, and at its end one of
``completed``, ``interrupted`` or ``failed`` with the reason. Each record names the host and process that wrote it,
so a reader can tell a run that is still going from one whose process died without a word (SIGKILL, the
out-of-memory killer, a node failure): :func:`read_status` reports the latter as ``crashed``.

Only the standard library is imported here: the launcher reads statuses before it imports PyTorch.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"
#: States of a run whose process is (or was, if it died) still working on it.
ACTIVE_STATES = ("starting", "running")


def resume_command(run_dir: str | os.PathLike) -> str:
    """The shell command that continues the run in ``run_dir``."""
    return f"{shlex.quote(sys.executable)} -m experiments.run --resume {shlex.quote(str(run_dir))}"


def process_start_time(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (Linux ``/proc``); ``None`` where unknown.

    Recorded with the PID so that a PID reused by an unrelated process is not taken for the run's own.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may contain spaces and parentheses, so count from its closing one.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19]) if len(fields) > 19 else None


def process_alive(pid: int, started: int | None = None) -> bool:
    """Whether process ``pid`` runs on this host (and, when ``started`` is known, is the same process)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if _zombie(pid):
        return False  # ended, but not yet reaped by its parent (a container whose first process never reaps)
    if started is not None:
        now = process_start_time(pid)
        return now is None or now == started
    return True


def _zombie(pid: int) -> bool:
    """Whether process ``pid`` has ended and waits only to be reaped (state ``Z`` in Linux ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].startswith("Z")


def write_status(run_dir: str | os.PathLike, state: str, **fields: Any) -> None:
    """Write ``run_dir/status.json`` atomically: ``state``, ``fields``, this process and the time.

    Never raises on a full disk or a read-only folder: the run goes on and a warning says the status is stale.
    """
    from fileio.atomic import atomic_write_text

    pid = os.getpid()
    job = slurm_job()
    record = {
        "state": state,
        **fields,
        # The SLURM job that runs it, so a requeued job finds its run folder again (see find_requeued_run).
        **({"slurm_job": job} if job else {}),
        "host": socket.gethostname(),
        "pid": pid,
        "pid_started": process_start_time(pid),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        atomic_write_text(Path(run_dir) / STATUS_FILE, json.dumps(record, indent=2, default=str) + "\n")
    except OSError as err:
        print(f"warning: could not write {Path(run_dir) / STATUS_FILE}: {err.strerror or err}", file=sys.stderr)


def slurm_job() -> str | None:
    """This process's SLURM job as ``scontrol requeue`` names it (``ARRAYJOB_TASK`` for an array task), or ``None``
    outside SLURM (and in an interactive allocation, whose job name is ``bash`` or ``interactive``)."""
    if os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return None
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")
    return job if job and job.replace("_", "").isdigit() else None


def requeued_job() -> str | None:
    """The SLURM job this process belongs to when SLURM started it again after a requeue (``SLURM_RESTART_COUNT``
    of 1 or more), else ``None``."""
    restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
    return slurm_job() if restarts.isdigit() and int(restarts) > 0 else None


def find_requeued_run(runs_dir: str | os.PathLike, name: str, job: str) -> Path | None:
    """The newest run folder ``runs_dir/name/*`` that SLURM job ``job`` wrote and whose ``checkpoints/last.ckpt`` a
    resume can start from."""
    found = []
    for status_file in Path(runs_dir, name).glob(f"*/{STATUS_FILE}"):
        try:
            status = json.loads(status_file.read_text())
        except (OSError, ValueError):
            continue
        last = status_file.parent / "checkpoints" / "last.ckpt"
        if isinstance(status, dict) and status.get("slurm_job") == job and last.is_file():
            found.append((status_file.stat().st_mtime, status_file.parent))
    return max(found)[1] if found else None


def read_status(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run's status as its readers should report it; ``None`` when the folder has no readable status file.

    A ``starting``/``running`` record whose process is gone from this host becomes ``crashed``, with the reason and,
    when a checkpoint exists, the ``resume`` command. A record written on another host is returned as it is
    (``host`` says where): this host cannot see that process.
    """
    run_dir = Path(run_dir)
    try:
        status = json.loads((run_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(status, dict):
        return None
    pid = status.get("pid")
    mine = status.get("host") == socket.gethostname() and isinstance(pid, int)
    if status.get("state") in ACTIVE_STATES and mine and not process_alive(pid, status.get("pid_started")):
        stage = "before training started" if status["state"] == "starting" else "during training"
        status["state"] = "crashed"
        status["reason"] = (
            f"process {pid} ended {stage} without saying why (SIGKILL, the out-of-memory killer or a node failure)"
        )
        status["resume"] = resume_command(run_dir) if has_checkpoint(run_dir) else None
    return status


def still_running(status: dict[str, Any] | None) -> bool:
    """Whether a status read by :func:`read_status` belongs to a process that may still be writing the run."""
    return status is not None and status.get("state") in ACTIVE_STATES


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    """Whether the run folder holds a checkpoint a resume could start from."""
    folder = Path(run_dir) / "checkpoints"
    return (folder / "last.ckpt").is_file() or any(folder.glob("*.ckpt"))


def recorded_best_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The best checkpoint the run's ``status.json`` records, if that file exists.

    Recorded as the training saw it (relative to where it ran, or absolute); when that path no longer holds it, the
    file of the same name in the run's own ``checkpoints/`` (the run folder was moved or copied) is used.
    """
    run_dir = Path(run_dir)
    try:
        best = json.loads((run_dir / STATUS_FILE).read_text()).get("best_checkpoint")
    except (OSError, ValueError, AttributeError):
        return None
    if not best:
        return None
    for candidate in (Path(best), run_dir / "checkpoints" / Path(best).name):
        if candidate.is_file():
            return candidate
    return None
