"""List runs and how each one stands: ``python -m experiments.runs [RUNS_DIR or RUN_DIR ...]``.

One line per run folder (``RUNS_DIR/NAME/version_N``, newest last within each experiment): its state from
``status.json`` as :func:`experiments.rundir.status.read_status` reads it (a run whose process died shows as
``crashed``), where it stopped, its best checkpoint's score or test metrics, and the command that resumes it when
it can be. Reads JSON files only: it answers at once, without importing PyTorch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from experiments.rundir.console import USAGE_ERROR
from experiments.rundir.finder import versions
from experiments.rundir.status import STATUS_FILE, read_status


def find_runs(paths: list[Path]) -> list[Path]:
    """Run folders under ``paths``: each path is a runs root, an experiment folder or a run folder."""
    runs: list[Path] = []
    for path in paths:
        if (path / "config.yaml").is_file() or (path / STATUS_FILE).is_file():
            runs.append(path)
            continue
        # Experiment folders by name (the root itself too, when runs lie directly in it); runs oldest first in each.
        experiments = sorted([path, *(p for p in path.iterdir() if p.is_dir())], key=lambda p: p.name)
        runs += [run for experiment in experiments for run in versions(experiment)]
    return runs


def describe(run: Path) -> dict[str, Any]:
    """What the listing shows of one run folder."""
    status = read_status(run) or {"state": "unknown", "reason": "no status.json"}
    where = ""
    if status.get("epoch") is not None:
        where = f"epoch {status['epoch']}, step {status.get('global_step')}"
    metrics = status.get("test_metrics") or {}
    shown = "  ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if isinstance(v, int | float))
    return {
        "run": str(run),
        "state": status["state"],
        "where": where,
        "result": shown or status.get("reason", ""),
        "resume": status.get("resume") if status["state"] in ("interrupted", "failed", "crashed") else None,
    }


def main(argv: list[str] | None = None) -> int:
    """Print the table; returns the exit code (2 when a path does not exist)."""
    parser = argparse.ArgumentParser(prog="python -m experiments.runs", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", default=["runs"], help="runs roots, experiment or run folders (runs)")
    args = parser.parse_args(argv)
    paths = [Path(p) for p in args.paths]
    missing = [str(p) for p in paths if not p.is_dir()]
    if missing:
        print(f"error: no such folder: {', '.join(missing)}; pass a runs folder such as runs", file=sys.stderr)
        return USAGE_ERROR
    rows = [describe(run) for run in find_runs(paths)]
    if not rows:
        print(f"no runs under {', '.join(map(str, paths))}")
        return 0
    width = max(len(r["run"]) for r in rows)
    for r in rows:
        line = f"{r['run']:<{width}}  {r['state']:<11}  {r['where']:<20}  {r['result']}"
        print(line.rstrip())
        if r["resume"]:
            print(f"{'':<{width}}  resume with: {r['resume']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
