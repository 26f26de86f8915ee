"""``python -m experiments.view``: finds the model of a run, serves it with Netron on loopback, stops on Ctrl-C."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from experiments.rundir import console
from experiments.view import main, resolve_model

ROOT = Path(__file__).resolve().parent.parent


def write_tiny_onnx(path: Path) -> Path:
    """A one-node Gemm model (``input (batch, 4) -> output (batch, 2)``): a valid ONNX file without exporting."""
    weight = helper.make_tensor("W", TensorProto.FLOAT, [2, 4], [0.5] * 8)
    node = helper.make_node("Gemm", ["input", "W"], ["output"], transB=1)
    graph = helper.make_graph(
        [node],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 2])],
        [weight],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_resolves_files_run_folders_and_experiment_folders(tmp_path: Path) -> None:
    run0 = write_tiny_onnx(tmp_path / "exp" / "version_0" / "model.onnx")
    run2 = write_tiny_onnx(tmp_path / "exp" / "version_2" / "model.onnx")
    (tmp_path / "exp" / "version_10").mkdir()  # newest, but unfinished: no model yet
    assert resolve_model(run0) == run0
    assert resolve_model(run0.parent) == run0
    assert resolve_model(tmp_path / "exp") == run2
    other = write_tiny_onnx(tmp_path / "solo" / "custom.onnx")
    assert resolve_model(other.parent) == other


@pytest.mark.parametrize("case", ["missing", "empty folder", "two models"])
def test_bad_paths_are_one_line_errors_with_exit_code_2(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "run"
    if case != "missing":
        target.mkdir()
    if case == "two models":
        write_tiny_onnx(target / "a.onnx")
        write_tiny_onnx(target / "b.onnx")
    with pytest.raises(console.UsageError):
        resolve_model(target)
    assert main([str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(target) in err[0]
    expected = {"missing": "does not exist", "empty folder": "no model.onnx", "two models": "a.onnx, b.onnx"}[case]
    assert expected in err[0]


def test_serves_the_model_on_loopback_until_ctrl_c(tmp_path: Path) -> None:
    model = write_tiny_onnx(tmp_path / "run" / "model.onnx")
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.view", str(model.parent)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl+C as a terminal delivers it, even when the suite itself runs as a background job (SIGINT ignored).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:(\d+))", line)
        assert match, f"no URL in the first line: {line!r}"
        url = match.group(1)
        assert "this machine only" in line and str(model) in line
        with urllib.request.urlopen(url + "/", timeout=10) as page:
            html = page.read().decode()
        assert '<meta name="file" content="/data/model.onnx">' in html
        with urllib.request.urlopen(url + "/data/model.onnx", timeout=10) as served:
            assert served.read() == model.read_bytes()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert "stopped" in out and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_taken_port_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    model = write_tiny_onnx(tmp_path / "model.onnx")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main([str(model), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot serve on 127.0.0.1:{port}")


@pytest.mark.parametrize("port", ["99999", "-1"])
def test_a_port_out_of_range_is_a_one_line_error(port: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = write_tiny_onnx(tmp_path / "model.onnx")
    assert main([str(model), "--port", port]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --port {port} is not a port: pass 1 to 65535, or 0 (the default) for a free one"]
