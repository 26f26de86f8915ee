"""A throw-away PostgreSQL server for tests (``postgres_url``): Debian's ``postgresql`` package, no system service.

The fixture makes a new cluster with ``initdb`` (trust authentication), runs ``postgres`` on it as a child process
listening on 127.0.0.1 only, on a free port and without a Unix socket, creates the database ``studies`` and yields
its URL, ``postgresql://tuner@127.0.0.1:PORT/studies``. At the end it stops the server (and its own processes) and
checks that none is left. PostgreSQL refuses to run as root: under root the server runs as the ``postgres`` user
that the Debian package creates, in a folder of its own under the system's temporary folder (the test's own is
closed to that user), removed afterwards. Tests that use it are skipped, saying why, where the binaries or the
Python driver (``psycopg``, which SQLAlchemy uses for ``postgresql://`` URLs) are missing.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

DATABASE, USER = "studies", "tuner"


def postgres_bin() -> Path | None:
    """The folder of ``initdb`` and ``postgres``: Debian's newest ``/usr/lib/postgresql/N/bin``, else on ``PATH``."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)
    found = [p for p in versions if (p / "initdb").is_file() and (p / "postgres").is_file()]
    if found:
        return found[0]
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and (Path(initdb).parent / "postgres").is_file() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the server's own: checkpointer, writers, one per connection)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _start(postgres: Path, data: Path, log: Path, as_user: dict[str, Any]) -> tuple[subprocess.Popen[bytes], int]:
    """Run the server on a free port of 127.0.0.1 until it accepts connections; returns it and its port."""
    import psycopg

    for _ in range(3):  # another process may take the free port before the server binds it
        port = _free_port()
        options = ["listen_addresses=127.0.0.1", f"port={port}", "unix_socket_directories=", "fsync=off"]
        options += ["synchronous_commit=off", "full_page_writes=off"]
        command = [str(postgres), "-D", str(data), *(a for o in options for a in ("-c", o))]
        with log.open("ab") as out:
            server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, **as_user)
        deadline = time.monotonic() + 60
        while server.poll() is None and time.monotonic() < deadline:
            try:
                psycopg.connect(f"postgresql://{USER}@127.0.0.1:{port}/postgres", connect_timeout=2).close()
                return server, port
            except psycopg.OperationalError:
                time.sleep(0.1)
        _stop(server)
    pytest.fail(f"the PostgreSQL server did not start:\n{log.read_text()[-3000:]}")


def _stop(server: subprocess.Popen[bytes]) -> None:
    """Stop the server at once (SIGQUIT: immediate shutdown) and wait for it and its processes to end."""
    processes = _children(server.pid)
    if server.poll() is None:
        server.send_signal(3)  # SIGQUIT
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)
    deadline = time.monotonic() + 10
    while not all(_gone(p) for p in processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p in processes if not _gone(p)]
    assert not left, f"PostgreSQL server processes {left} are still running"


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of an empty database on a PostgreSQL server started for the tests of one module."""
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (initdb and postgres not found; Debian: apt-get install postgresql)")
    try:
        import psycopg
    except ImportError:
        pytest.skip("the PostgreSQL driver psycopg is not installed (pip install -e '.[dev]')")
    as_user: dict[str, Any] = {}
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root, and there is no 'postgres' user to run the PostgreSQL server as")
        as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        base = Path(tempfile.mkdtemp(prefix="zerotune-pg-"))
        os.chown(base, account.pw_uid, account.pw_gid)
    else:
        base = tmp_path_factory.mktemp("postgres")
    data, log = base / "data", base / "server.log"
    server = None
    try:
        initdb = [str(bindir / "initdb"), "-D", str(data), "-U", USER, "--auth=trust", "--no-sync", "-E", "UTF8"]
        subprocess.run(initdb, check=True, capture_output=True, timeout=120, **as_user)
        server, port = _start(bindir / "postgres", data, log, as_user)
        with psycopg.connect(f"postgresql://{USER}@127.0.0.1:{port}/postgres", autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {DATABASE}")
        yield f"postgresql://{USER}@127.0.0.1:{port}/{DATABASE}"
    finally:
        if server is not None:
            _stop(server)
        if as_user:
            shutil.rmtree(base, ignore_errors=True)
