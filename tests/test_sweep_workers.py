"""Sweep workers that die: a worker killed with SIGKILL in the middle of a trial, and a sweep whose parent is killed.

Each test starts ``python -m experiments.sweep --workers 2`` on tiny digits trials (one epoch of two batches), holds
chosen trials after their first step (``tests.sweep_helpers.PauseInTrial``) and kills a process from outside.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import ROOT
from optuna.trial import TrialState

# Tiny trials of the smallest experiment: one epoch of 2 training batches, validation on 1 batch.
TINY = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
SPACE = ["--space", "none", "--param", "model.lr={loguniform: [1.0e-3, 1.0e-1]}", "--sampler", "random"]
PAUSE = "--trainer.callbacks+=tests.sweep_helpers.PauseInTrial"
# Heartbeats every second, a trial taken for dead after 10 s without one (a worker of this machine whose process
# is gone is taken for dead at once).
HEARTBEAT = {"ZEROTUNE_SWEEP_HEARTBEAT": "1", "ZEROTUNE_SWEEP_GRACE": "10"}


def load(folder: Path) -> optuna.Study:
    from optuna.storages.journal import JournalFileBackend

    record = json.loads((folder / "study.json").read_text())
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(folder / "study.journal")))
    return optuna.load_study(study_name=record["study"], storage=storage)


def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie nobody reaps has ended too)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def wait_for(paths: list[Path], proc: subprocess.Popen[str], timeout: float = 180.0) -> list[dict[str, object]]:
    """The contents of the marker files ``paths`` once all exist; fails if ``proc`` ends first."""
    deadline = time.monotonic() + timeout
    while not all(p.is_file() for p in paths):
        if proc.poll() is not None:
            out, err = proc.communicate() if proc.stdout is not None else ("", "")
            pytest.fail(f"the sweep ended (exit {proc.returncode}) before its trials paused:\n{out}\n{err[-3000:]}")
        assert time.monotonic() < deadline, f"no trial paused within {timeout} s"
        time.sleep(0.1)
    return [json.loads(p.read_text()) for p in paths]


def test_worker_killed_mid_trial_is_failed_and_run_again(tmp_path: Path) -> None:
    runs, markers = tmp_path / "runs", tmp_path / "markers"
    pause = [PAUSE, "--trainer.callbacks.marker_dir", str(markers), "--trainer.callbacks.folders", "trial_1"]
    command = [sys.executable, "-m", "experiments.sweep", "digits_mlp", "--runs_dir", str(runs), "--workers", "2"]
    command += ["--trials", "4", *SPACE, *TINY, *pause]
    env = dict(os.environ, **HEARTBEAT)
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        (marker,) = wait_for([markers / "trial_1.json"], proc)
        victim = int(marker["pid"])
        os.kill(victim, signal.SIGKILL)  # kill -9 of the worker that runs trial 1, in the middle of it
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    folder = runs / "digits_mlp" / "sweep-0"
    trials = load(folder).get_trials()
    by_number = {t.number: t for t in trials}
    # No trial number lost: 0..4, of which the killed one failed and its retry (same parameters) completed.
    assert sorted(by_number) == [0, 1, 2, 3, 4]
    killed = by_number[1]
    assert killed.state == TrialState.FAIL and killed.user_attrs["worker"]["pid"] == victim
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == 1]
    assert retry.params == killed.params and retry.state == TrialState.COMPLETE
    assert retry.system_attrs["retry_history"] == [1]  # Optuna's RetryHeartbeatStaleTrialCallback's record
    assert retry.user_attrs["worker"]["pid"] != victim
    assert (
        retry.user_attrs["retry_reason"]
        == f"worker died (process {victim} on {killed.user_attrs['worker']['host']} is gone)"
    )
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4 and len(trials) == 5
    # The study's best config is written; its run folder of the killed trial says what happened.
    assert (folder / "best.yaml").is_file()
    status = json.loads((folder / "trial_1" / "status.json").read_text())
    assert status["state"] == "crashed" and status["retried_as"] == retry.number
    assert status["reason"] == f"{retry.user_attrs['retry_reason']}; re-queued as trial {retry.number}"
    assert f"trial   1  failed: worker died (process {victim}" in out
    assert f"queued to run again as trial {retry.number}" in out
    assert "4 of 4 trials" in out and "4 complete, 0 pruned, 0 failed, 1 interrupted" in out
    assert "worker " in err and "was killed (SIGKILL); the other workers ran its trial again" in err
    assert "Traceback" not in out + err


def test_workers_end_when_the_sweep_is_killed(tmp_path: Path) -> None:
    runs, markers = tmp_path / "runs", tmp_path / "markers"
    pause = [PAUSE, "--trainer.callbacks.marker_dir", str(markers)]  # every trial pauses after its first step
    command = [sys.executable, "-m", "experiments.sweep", "digits_mlp", "--runs_dir", str(runs), "--workers", "2"]
    command += ["--trials", "4", *SPACE, *TINY, *pause]
    env = dict(os.environ, **HEARTBEAT)
    # Output into a file: the workers, which share it, may outlive the sweep (and a pipe would wait for them).
    log = (tmp_path / "output.log").open("w")
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    workers: list[int] = []
    try:
        paused = wait_for([markers / "trial_0.json", markers / "trial_1.json"], proc)
        workers = [int(m["pid"]) for m in paused]
        assert len(set(workers)) == 2
        proc.kill()  # SIGKILL of the sweep that started the workers: it cannot pass anything on
        proc.wait(timeout=30)
        deadline = time.monotonic() + 60
        while not all(gone(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [pid for pid in workers if not gone(pid)]
        assert not left, f"workers {left} kept running after their sweep was killed"
    finally:
        log.close()
        for pid in workers:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
    # Each worker stopped its trial as SIGTERM stops a run: marked interrupted, its parameters queued again.
    folder = runs / "digits_mlp" / "sweep-0"
    trials = {t.number: t for t in load(folder).get_trials()}
    for number in (0, 1):
        assert trials[number].state == TrialState.FAIL and "interrupted" in trials[number].user_attrs
        (retry,) = [t for t in trials.values() if t.user_attrs.get("retry_of") == number]
        assert retry.state == TrialState.WAITING and retry.params == trials[number].params
        status = json.loads((folder / f"trial_{number}" / "status.json").read_text())
        assert status["state"] == "interrupted" and status["reason"].endswith(f"re-queued as trial {retry.number}")
    assert "Traceback" not in (tmp_path / "output.log").read_text()


@pytest.mark.slow
def test_worker_stopped_past_the_grace_period_is_taken_for_dead_and_its_late_result_not_counted(
    tmp_path: Path,
) -> None:
    runs, markers = tmp_path / "runs", tmp_path / "markers"
    pause = [PAUSE, "--trainer.callbacks.marker_dir", str(markers), "--trainer.callbacks.folders", "trial_1"]
    command = [sys.executable, "-m", "experiments.sweep", "digits_mlp", "--runs_dir", str(runs), "--workers", "2"]
    command += ["--trials", "4", *SPACE, *TINY, *pause, "--trainer.callbacks.seconds", "2"]
    env = dict(os.environ, ZEROTUNE_SWEEP_HEARTBEAT="1", ZEROTUNE_SWEEP_GRACE="4")
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stopped = 0
    try:
        (marker,) = wait_for([markers / "trial_1.json"], proc)
        stopped = int(marker["pid"])
        os.kill(stopped, signal.SIGSTOP)  # alive, but silent: only the heartbeat can tell (a suspended job)
        folder = runs / "digits_mlp" / "sweep-0"
        deadline = time.monotonic() + 120
        while load(folder).get_trials()[1].state == TrialState.RUNNING:
            assert time.monotonic() < deadline, "the stopped worker's trial was never taken for dead"
            time.sleep(0.2)
        os.kill(stopped, signal.SIGCONT)
        out, err = proc.communicate(timeout=240)
    finally:
        if stopped and not gone(stopped):
            os.kill(stopped, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    trials = {t.number: t for t in load(folder).get_trials()}
    assert sorted(trials) == [0, 1, 2, 3, 4] and trials[1].state == TrialState.FAIL
    (retry,) = [t for t in trials.values() if t.user_attrs.get("retry_of") == 1]
    assert retry.state == TrialState.COMPLETE and retry.params == trials[1].params
    assert retry.user_attrs["retry_reason"].startswith(f"worker died (no heartbeat from process {stopped} on ")
    assert sum(t.state == TrialState.COMPLETE for t in trials.values()) == 4
    # The stopped worker, once continued, finished its trial: the study refused its result, and it said so.
    assert "trial   1  failed            val/acc -" in out and "another worker took this trial for dead" in out
    assert "Traceback" not in out + err
