"""What both demos share: every run goes through the Python API, announced by the command that runs it alone."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from experiments.launcher.launch import RunResult


def launch_shown(experiment: str, settings: Mapping[str, Any], runs_dir: str, name: str | None = None) -> RunResult:
    """Run ``experiment`` with ``settings`` through :func:`experiments.api.launch`, first printing the
    ``python -m experiments.run`` command that runs it alone."""
    from experiments.api import launch
    from experiments.launcher.launch import command_line

    shown = command_line(experiment, {**settings, "runs_dir": runs_dir, **({"name": name} if name else {})})
    print(f"\n$ python -m experiments.run {' '.join(shown)}", flush=True)
    return launch(experiment, settings, runs_dir=runs_dir, name=name)
