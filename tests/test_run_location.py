"""Runs stay inside the runs folder, and a runs folder that cannot hold runs is one clear line (exit 2), checked
before anything is created. Driven through the real launcher, in a subprocess where the fault was end to end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_launcher


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "..", ".", ""])
def test_run_name_is_one_path_component(tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "deep" / "runs"
    code, _, err = run_launcher(["digits_mlp", "--runs_dir", str(runs), "--name", name], capsys)
    assert code == 2
    assert err.strip() == (
        f"error: --name '{name}' is not a plain folder name: a run name is one path component (no '/', not '.' or "
        "'..', not empty), so every run stays inside --runs_dir; pass e.g. --name my_experiment"
    )
    assert sorted(p.name for p in tmp_path.rglob("*")) == []  # nothing created, inside or outside


def test_name_in_a_shared_yaml_is_checked_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "shared.yaml"
    config.write_text(
        (ROOT / "experiments/configs/digits_mlp.yaml").read_text() + "name: ../escaped\n", encoding="utf-8"
    )
    code, _, err = run_launcher(["--config", str(config), "--runs_dir", str(tmp_path / "runs")], capsys)
    assert code == 2 and err.startswith("error: --name '../escaped' is not a plain folder name")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "escaped").exists()


def _read_only_launch(folder: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run the launcher with ``folder`` read-only: by permissions for a normal user, by a read-only bind mount (in a
    private user and mount namespace) for root, whom permissions do not stop."""
    cmd = [sys.executable, "-m", "experiments.run", *args]
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    if shutil.which("unshare") is None:
        pytest.skip("running as root without unshare(1): cannot make a read-only folder")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("running as root and user namespaces are not available: cannot make a read-only folder")
    script = 'mount --bind -o ro "$0" "$0" && exec "$@"'
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, str(folder), *cmd], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_read_only_runs_dir_is_one_line(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    proc = _read_only_launch(runs, ["digits_mlp", "--runs_dir", str(runs)])
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: --runs_dir '{runs}' ")
    assert "Traceback" not in proc.stderr and "can write" in proc.stderr


def test_runs_dir_that_is_a_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("not a folder")
    code, _, err = run_launcher(["digits_mlp", "--runs_dir", str(blocker / "runs")], capsys)
    assert code == 2
    assert err.strip() == (
        f"error: --runs_dir '{blocker / 'runs'}': '{blocker}' is a file, not a folder; pass a folder for the runs"
    )
    assert blocker.read_text() == "not a folder"


def test_runs_dir_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    runs = os.fsencode(tmp_path) + b"/runs\xff"
    cmd = [sys.executable.encode(), b"-m", b"experiments.run", b"digits_mlp", b"--runs_dir", runs]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=120)
    err = proc.stderr.decode("utf-8", "backslashreplace")
    assert proc.returncode == 2, err
    assert err.strip() == (
        f"error: --runs_dir '{tmp_path}/runs\\xff' is not valid UTF-8, which TensorBoard's event files need; choose a "
        "name of UTF-8 characters"
    )
    assert list(tmp_path.iterdir()) == []
