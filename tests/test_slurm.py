"""The sbatch script of docs/scale.md under SLURM's variables, with stand-ins for ``srun`` and ``scontrol``.

The stand-in ``srun`` starts one process per task with the variables SLURM gives a task (``SLURM_PROCID``,
``SLURM_LOCALID``, ``SLURM_NODEID``) and passes signals on to every task, as ``srun`` does; the stand-in
``scontrol`` records what it was asked. The batch script itself runs unchanged, with the variables ``sbatch`` sets.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from multinode import ROOT, env

SRUN = textwrap.dedent(
    f"""\
    #!{sys.executable}
    # srun's stand-in: one process per task of this node, SLURM's task variables set, signals passed on to every task.
    import os, signal, subprocess, sys
    tasks = int(os.environ["SLURM_NTASKS_PER_NODE"])
    procs = [
        subprocess.Popen(sys.argv[1:], env={{**os.environ, "SLURM_PROCID": str(t), "SLURM_LOCALID": str(t),
                                             "SLURM_NODEID": "0", "SLURM_NTASKS": str(tasks), "SLURM_STEP_ID": "0"}})
        for t in range(tasks)
    ]
    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)
    for s in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
        signal.signal(s, forward)
    open(os.environ["SRUN_PID_FILE"], "w").write(str(os.getpid()))
    sys.exit(max(p.wait() for p in procs))
    """
)
SCONTROL = textwrap.dedent(
    """\
    #!/bin/sh
    # scontrol's stand-in: records its arguments.
    echo "$@" >> "$SCONTROL_LOG"
    """
)


def sbatch_script() -> str:
    """The batch script docs/scale.md tells users to save as ``train.sbatch``."""
    text = (ROOT / "docs" / "scale.md").read_text()
    blocks = re.findall(r"```bash\n(#!/bin/bash\n#SBATCH.*?)```", text, flags=re.S)
    assert len(blocks) == 1, "docs/scale.md should show one sbatch script"
    return blocks[0]


def _job_id() -> str:
    """A job id whose port (Lightning's SLURM default: 15000 + its last 4 digits) is free on 127.0.0.1."""
    for job in range(424_200, 434_200, 37):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", 15000 + job % 10_000))
            except OSError:
                continue
            return str(job)
    raise AssertionError("no free port for the job")


class Cluster:
    """A one-node allocation of two tasks: the batch script, stand-ins on ``PATH`` and the job's variables."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
            (bin_dir / name).write_text(text)
            (bin_dir / name).chmod(0o755)
        self.script = tmp_path / "train.sbatch"
        self.script.write_text(sbatch_script())
        self.scontrol_log = tmp_path / "scontrol.log"
        self.srun_pid = tmp_path / "srun.pid"
        self.job = _job_id()
        path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]])
        self.env = env(
            PATH=path, SCONTROL_LOG=str(self.scontrol_log), SRUN_PID_FILE=str(self.srun_pid),
            SLURM_JOB_ID=self.job, SLURM_JOB_NAME="zerotune", SLURM_NNODES="1", SLURM_JOB_NUM_NODES="1",
            SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="2", SLURM_NODELIST="localhost", SLURM_SUBMIT_DIR=str(ROOT),
        )  # fmt: skip

    def submit(self, args: list[str], log: str, restarts: int = 0) -> subprocess.Popen[bytes]:
        """Run the batch script as SLURM runs the job (``restarts``: how often it was requeued before)."""
        environ = {**self.env, **({"SLURM_RESTART_COUNT": str(restarts)} if restarts else {})}
        self.srun_pid.unlink(missing_ok=True)
        with open(self.root / log, "ab") as sink:
            return subprocess.Popen(
                ["bash", str(self.script), *args], cwd=ROOT, env=environ, stdout=sink, stderr=subprocess.STDOUT
            )

    def output(self, log: str) -> str:
        return (self.root / log).read_text(errors="replace")


FAST = [
    "digits_mlp",
    "--model.hidden", "[32]",
    "--progress_bar.refresh_rate", "0",
    "--onnx.enabled", "false",
    "--dashboards.enabled", "false",
    "--trainer.accelerator", "cpu",
]  # fmt: skip


def _wait(proc: subprocess.Popen[bytes], cluster: Cluster, log: str, timeout: float = 240) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(cluster.output(log)[-4000:]) from None


def test_sbatch_script_requeues_on_sigusr1_and_the_requeued_job_continues_from_the_saved_step(
    tmp_path: Path, runs_dir: Path
) -> None:
    cluster = Cluster(tmp_path)
    marks, steps = tmp_path / "marks", tmp_path / "steps"
    args = [
        *FAST, "--runs_dir", str(runs_dir), "--trainer.max_epochs", "3", "--test_after_fit", "false",
        "--trainer.callbacks+=tests.run_helpers.MarkAtStep", f"--trainer.callbacks.out_dir={marks}",
        "--trainer.callbacks.step=13", "--trainer.callbacks.sleep=0.1",
        "--trainer.callbacks+=tests.run_helpers.StepLog", f"--trainer.callbacks.out_dir={steps}",
        "--trainer.callbacks+=tests.run_helpers.RankMarker", f"--trainer.callbacks.out_dir={tmp_path / 'ranks'}",
    ]  # fmt: skip
    job = cluster.submit(args, "slurm.out")
    deadline = time.monotonic() + 180
    while not (marks / "rank0.pid").exists():
        assert job.poll() is None and time.monotonic() < deadline, cluster.output("slurm.out")[-4000:]
        time.sleep(0.05)
    # SLURM's warning before the time limit: SIGUSR1 to every task, mid-epoch 1 (10 steps an epoch on 2 tasks).
    os.kill(int(cluster.srun_pid.read_text()), signal.SIGUSR1)
    code = _wait(job, cluster, "slurm.out")
    out = cluster.output("slurm.out")
    run = runs_dir / "digits_mlp" / "version_0"
    assert code == 128 + signal.SIGUSR1, out[-4000:]
    assert cluster.scontrol_log.read_text().split() == ["requeue", cluster.job]
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "requeued" and status["slurm_job"] == cluster.job, status
    assert f"requeued: SIGUSR1 at epoch 1, global step {status['global_step']}" in out
    assert f"SLURM job {cluster.job} requeued: it continues from there in the same run folder" in out
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    stopped = saved["global_step"]
    assert 13 <= stopped < 20 and stopped == status["global_step"]  # mid-epoch 1, not an epoch boundary

    # SLURM starts the requeued job: the same script, the same command.
    requeued = cluster.submit(args, "slurm.out", restarts=1)
    assert _wait(requeued, cluster, "slurm.out") == 0, cluster.output("slurm.out")[-4000:]
    out = cluster.output("slurm.out")
    assert f"note: SLURM job {cluster.job} was requeued: resuming {run} from its last checkpoint" in out
    assert sorted(p.name for p in (runs_dir / "digits_mlp").iterdir()) == ["version_0"]  # the same run folder
    assert json.loads((run / "status.json").read_text())["state"] == "completed"
    for rank in (0, 1):
        lines = [tuple(map(int, ln.split())) for ln in (steps / f"rank{rank}.steps").read_text().splitlines()]
        # Each of the 30 steps (3 epochs of 10) ran once: the first job's up to the step it saved, then the
        # requeued job's from there on, in epoch 1 where the first job stopped.
        assert [g for _, g, _, _ in lines] == list(range(30)), (rank, lines)
        first, second = {pid for *_, pid in lines[:stopped]}, {pid for *_, pid in lines[stopped:]}
        assert len(first) == len(second) == 1 and first != second, (rank, lines)
        assert lines[stopped][:3] == (1, stopped, stopped - 10), (rank, lines)
    # The ranks were SLURM's tasks, and stayed in step.
    ranks = [json.loads((tmp_path / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world_size"] for r in ranks} == {2}
    assert ranks[0]["param_sum"] == ranks[1]["param_sum"]


@pytest.mark.slow
@pytest.mark.parametrize("restarts", [0, 1])
def test_sbatch_script_without_a_requeue_runs_a_fresh_run(tmp_path: Path, runs_dir: Path, restarts: int) -> None:
    """A job that was never requeued, or was requeued before its first checkpoint, starts a run of its own."""
    cluster = Cluster(tmp_path)
    args = [*FAST, "--runs_dir", str(runs_dir), "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"]
    job = cluster.submit(args, "slurm.out", restarts=restarts)
    assert _wait(job, cluster, "slurm.out") == 0, cluster.output("slurm.out")[-4000:]
    out = cluster.output("slurm.out")
    assert "was requeued" not in out and out.count("test       test/acc=") == 1
    status = json.loads((runs_dir / "digits_mlp" / "version_0" / "status.json").read_text())
    assert status["state"] == "completed" and status["slurm_job"] == cluster.job
    assert not cluster.scontrol_log.exists()


@pytest.mark.parametrize("scontrol", ["missing", "refuses"])
def test_a_requeue_scontrol_cannot_do_says_so(scontrol: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from experiments.callbacks.safety import FaultGuard
    from experiments.rundir.stops import Outcome, requeue_job

    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_NAME", "zerotune")
    monkeypatch.setenv("PATH", str(tmp_path))
    if scontrol == "refuses":
        (tmp_path / "scontrol").write_text("#!/bin/sh\necho 'Invalid job id specified' >&2\nexit 1\n")
        (tmp_path / "scontrol").chmod(0o755)
    requeued, note = requeue_job()
    assert not requeued and note.startswith("could not requeue SLURM job 4242 (scontrol: ")
    if scontrol == "refuses":
        assert note.endswith("(scontrol: Invalid job id specified)")
    stopped = Outcome("interrupted", "SIGUSR1 at epoch 1, global step 13; saved ...", "resume with: ...", 138)
    outcome = FaultGuard._requeued(stopped, tmp_path / "last.ckpt")
    assert outcome.state == "interrupted" and outcome.hint == "resume with: ..."
    assert outcome.message.endswith(note)
