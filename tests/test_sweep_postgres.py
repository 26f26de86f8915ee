"""One study on two machines through PostgreSQL: the commands of docs/tune.md, one machine's worker killed mid-trial.

The "machines" are two processes started on their own, as on two hosts: each with its own runs folder and its own
machine name (``ZEROTUNE_SWEEP_MACHINE``), so that neither can look the other's processes up and only the heartbeat
in the database tells that a worker died.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
from conftest import ROOT
from optuna.trial import TrialState
from postgres_fixture import postgres_url  # noqa: F401 - a fixture
from test_sweep_workers import PAUSE, TINY, gone, wait_for

DOC_HOST = "db-host:5432"


def machine_commands() -> list[list[str]]:
    """The commands docs/tune.md gives for the machines of a study on PostgreSQL, in order."""
    text = (ROOT / "docs" / "tune.md").read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("python -m experiments.sweep") and "postgresql://" in ln]
    return [shlex.split(ln) for ln in lines]


def test_two_machines_share_a_postgresql_study_and_lose_nothing(postgres_url: str, tmp_path: Path) -> None:  # noqa: F811
    commands = machine_commands()
    assert len(commands) == 2 and commands[0] == commands[1], "docs/tune.md: one command per machine, the same"
    command = [sys.executable, *commands[0][1:]]
    assert f"postgresql://tuner@{DOC_HOST}/studies" in command
    server = re.sub(r"^postgresql://tuner@([^/]+)/studies$", r"\1", postgres_url)
    command = [a.replace(DOC_HOST, server) for a in command]
    markers = tmp_path / "markers"
    # Test-only settings, the same on both machines (a machine with other settings would be refused): tiny trials,
    # 4 of them, and a pause after the first step of a trial in the process whose environment says PAUSE_HERE.
    pause = [PAUSE, "--trainer.callbacks.marker_dir", str(markers), "--trainer.callbacks.when_env", "PAUSE_HERE"]
    extra = ["--trials", "4", *TINY, *pause]
    heartbeat = {"ZEROTUNE_SWEEP_HEARTBEAT": "1", "ZEROTUNE_SWEEP_GRACE": "5"}
    procs: dict[str, subprocess.Popen[str]] = {}
    logs = {}
    try:
        for machine in ("b", "a"):
            env = dict(os.environ, **heartbeat, ZEROTUNE_SWEEP_MACHINE=f"node-{machine}")
            if machine == "b":
                env["PAUSE_HERE"] = "1"
            runs = tmp_path / f"machine-{machine}" / "runs"
            logs[machine] = (tmp_path / f"machine-{machine}.log").open("w")
            procs[machine] = subprocess.Popen(
                [*command, *extra, "--runs_dir", str(runs)],
                cwd=ROOT,
                env=env,
                stdout=logs[machine],
                stderr=subprocess.STDOUT,
                text=True,
            )
            if machine == "b":
                # Machine B holds its first trial; then machine A starts and works on the study.
                (marker,) = wait_for([markers / "trial_0.json"], procs["b"])
        study = optuna.load_study(study_name="digits_mlp/sweep-lr", storage=postgres_url)
        deadline = time.monotonic() + 180
        while not any(t.state == TrialState.COMPLETE for t in study.get_trials()):
            assert procs["a"].poll() is None and time.monotonic() < deadline, "machine A completed no trial"
            time.sleep(0.2)
        procs["b"].send_signal(signal.SIGKILL)  # machine B's worker dies in the middle of trial 0
        procs["b"].wait(timeout=30)
        procs["a"].wait(timeout=240)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs.values():
            log.close()
    out = (tmp_path / "machine-a.log").read_text()
    assert procs["a"].returncode == 0, out[-3000:]
    assert procs["b"].returncode == -signal.SIGKILL and gone(int(marker["pid"]))
    trials = {t.number: t for t in study.get_trials()}
    # Nothing lost: trials 0..4, the killed one failed and run again with its parameters by machine A.
    assert sorted(trials) == [0, 1, 2, 3, 4]
    killed = trials[0]
    assert killed.state == TrialState.FAIL and killed.user_attrs["worker"]["host"] == "node-b"
    (retry,) = [t for t in trials.values() if t.user_attrs.get("retry_of") == 0]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    assert retry.system_attrs["retry_history"] == [0] and retry.user_attrs["worker"]["host"] == "node-a"
    pid = killed.user_attrs["worker"]["pid"]
    assert retry.user_attrs["retry_reason"] == f"worker died (no heartbeat from process {pid} on node-b for over 5 s)"
    assert sum(t.state == TrialState.COMPLETE for t in trials.values()) == 4
    assert f"trial   0  failed: worker died (no heartbeat from process {pid} on node-b" in out
    assert "4 of 4 trials" in out and "4 complete, 0 pruned, 0 failed, 1 interrupted" in out
    folder = tmp_path / "machine-a" / "runs" / "digits_mlp" / "sweep-lr"
    assert (folder / "best.yaml").is_file()
    assert json.loads((folder / "study.json").read_text())["storage"] == postgres_url
    assert "Traceback" not in out
