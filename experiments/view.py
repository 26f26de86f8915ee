"""Open an exported model in Netron: ``python -m experiments.view PATH [--port N] [--host ADDR] [--browse]``.

``PATH`` is a run folder (its ``model.onnx``; for an experiment folder such as ``runs/digits_cnn``, the newest
version that has one) or a model file. Netron's server listens on 127.0.0.1 only (``--host 0.0.0.0`` to let
other machines in), on a free port unless ``--port`` is given, and serves until Ctrl-C. One model per process:
start another command for a second model.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
import webbrowser
from pathlib import Path

from experiments.rundir import console
from experiments.rundir.console import USAGE_ERROR
from experiments.rundir.finder import find_run

DEFAULT_FILE = "model.onnx"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_PORT = 65535


def resolve_model(path: str | Path) -> Path:
    """The model file ``path`` names: the file itself, or the ONNX model of a run or experiment folder.

    Raises:
        console.UsageError: no such file, or a folder without an ONNX model (the message says what to do).
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise console.UsageError(f"{path} does not exist: pass a run folder (runs/NAME/version_N) or an .onnx file")
    run = find_run(path, has=lambda folder: _onnx_in(folder) is not None)
    found = _onnx_in(run) if run is not None else None
    if found is not None:
        return found
    raise console.UsageError(
        f"no {DEFAULT_FILE} in {path}: a run writes it at the end of training (unless --onnx.enabled false); "
        "pass a finished run folder or an .onnx file"
    )


def _onnx_in(folder: Path) -> Path | None:
    if (folder / DEFAULT_FILE).is_file():
        return folder / DEFAULT_FILE
    candidates = sorted(folder.glob("*.onnx"))
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise console.UsageError(f"{folder} holds several ONNX files ({names}): pass the one to open")
    return candidates[0] if candidates else None


def serve(model: Path, host: str = "127.0.0.1", port: int = 0) -> str:
    """Start Netron's server for ``model`` in a background thread; returns its URL."""
    import netron

    # Netron announces itself on the root logger; the URL is printed once, by main().
    logging.getLogger("netron").setLevel(logging.WARNING)
    address = netron.serve(str(model), None, address=(host, port), browse=False)
    return f"http://{address[0]}:{address[1]}"


def _open_browser(url: str) -> None:
    try:
        webbrowser.get()
    except webbrowser.Error:
        print(f"no web browser found here; open {url} in one that can reach this machine")
        return
    webbrowser.open(url)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 after Ctrl-C, 2 for a missing model)."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.view",
        description="Serve an exported model with Netron until Ctrl-C.",
    )
    parser.add_argument("path", help="run folder (runs/NAME/version_N), experiment folder, or model file")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--browse", action="store_true", help="open the page in a web browser")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not 0 <= args.port <= MAX_PORT:
        console.error(f"--port {args.port} is not a port: pass 1 to {MAX_PORT}, or 0 (the default) for a free one")
        return USAGE_ERROR
    try:
        model = resolve_model(args.path)
        url = serve(model, args.host, args.port)
    except console.UsageError as err:
        console.error(str(err))
        return USAGE_ERROR
    except OSError as err:  # the port is taken, or the address is not this machine's
        console.error(f"cannot serve on {args.host}:{args.port}: {err.strerror or err}")
        return USAGE_ERROR
    reach = "this machine only" if args.host in LOOPBACK else "other machines too"
    print(f"Netron is serving {model} at {url} (listening on {args.host}: {reach}; Ctrl-C to stop)", flush=True)
    if args.browse:
        _open_browser(url)
    # A service manager's SIGTERM stops the server as cleanly as Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    import netron

    try:
        while netron.status():
            time.sleep(0.2)
    except KeyboardInterrupt:
        netron.stop()
        print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
