"""Several "nodes" on one machine: the launcher started once per node, as on a cluster, on 127.0.0.1.

``torchrun`` nodes run the documented command (``torchrun --nnodes N --nproc-per-node P --node-rank R
--master-addr ... --master-port ... -m experiments.run ...``); plain nodes set Lightning's own variables (``NODE_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``) and let each node's launcher start its processes. Output goes to files, so a node
that prints a lot never blocks on a full pipe.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = str(Path(sys.executable).parent / "torchrun")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Node:
    """One started node: its process and where its output goes."""

    rank: int
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def env(**extra: str) -> dict[str, str]:
    """The test's environment with the checkout importable (``tests.run_helpers`` callbacks) and ``extra`` set."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_"))}
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT"):
        base.pop(var, None)
    base["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
    base["PYTHONUNBUFFERED"] = "1"
    return {**base, **extra}


def start(command: list[str], log: Path, environ: dict[str, str]) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as sink:
        return subprocess.Popen(command, cwd=ROOT, env=environ, stdout=sink, stderr=subprocess.STDOUT)


def torchrun_nodes(args: list[str], logs: Path, nnodes: int = 2, nproc: int = 1, port: int | None = None) -> list[Node]:
    """Start ``nnodes`` torchrun agents with ``nproc`` processes each, running ``python -m experiments.run ARGS``."""
    port = port or free_port()
    nodes = []
    for rank in range(nnodes):
        command = [
            TORCHRUN,
            "--nnodes", str(nnodes), "--nproc-per-node", str(nproc), "--node-rank", str(rank),
            "--master-addr", "127.0.0.1", "--master-port", str(port),
            "-m", "experiments.run", *args,
            "--trainer.num_nodes", str(nnodes), "--trainer.devices", str(nproc),
        ]  # fmt: skip
        log = logs / f"node{rank}.log"
        nodes.append(Node(rank, start(command, log, env()), log))
    return nodes


def plain_nodes(args: list[str], logs: Path, nnodes: int = 2, devices: int = 1, port: int | None = None) -> list[Node]:
    """Start ``python -m experiments.run ARGS`` once per node with ``NODE_RANK``/``MASTER_ADDR``/``MASTER_PORT``."""
    port = port or free_port()
    nodes = []
    for rank in range(nnodes):
        command = [
            sys.executable, "-m", "experiments.run", *args,
            "--trainer.num_nodes", str(nnodes), "--trainer.devices", str(devices),
        ]  # fmt: skip
        environ = env(NODE_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        log = logs / f"node{rank}.log"
        nodes.append(Node(rank, start(command, log, environ), log))
    return nodes


def finish(nodes: list[Node], timeout: float = 240) -> list[int]:
    """Wait for every node (killing all once ``timeout`` seconds have passed); returns their exit codes."""
    deadline = time.monotonic() + timeout
    try:
        for node in nodes:
            node.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for node in nodes:
            node.proc.kill()
        outputs = "\n".join(f"--- node {n.rank} ---\n{n.output()[-3000:]}" for n in nodes)
        raise AssertionError(f"nodes still running after {timeout:.0f} s:\n{outputs}") from None
    return [int(node.proc.returncode) for node in nodes]


def wait_for(path: Path, nodes: list[Node], timeout: float = 180) -> None:
    """Wait until ``path`` exists; fail (with the nodes' output) when a node ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        ended = [n for n in nodes if n.proc.poll() is not None]
        if ended or time.monotonic() > deadline:
            for node in nodes:
                node.proc.kill()
            outputs = "\n".join(f"--- node {n.rank} ---\n{n.output()[-3000:]}" for n in nodes)
            raise AssertionError(f"{path} never appeared:\n{outputs}")
        time.sleep(0.05)
