"""Test-only callbacks of sweep trials, loaded by class path (``--trainer.callbacks+=tests.sweep_helpers.NAME``).

They live in an importable module, not in a test file, because the worker processes of a sweep build every trial's
callbacks by name.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import lightning as L


class PauseInTrial(L.Callback):
    """Holds a trial after its first training step, so that a test can kill its worker in the middle of it.

    The trial writes ``MARKER_DIR/FOLDER.json`` (its run folder's name, and the PID of the worker that runs it), then
    waits until the worker is asked to stop (SIGTERM) or ``seconds`` have passed.

    Args:
        marker_dir: Folder of the marker files.
        folders: Comma-separated names of the run folders that pause (e.g. ``trial_1``); empty: every trial.
        when_env: Pause only in processes whose environment sets this variable (empty: in every process): the same
            sweep settings on two "machines", of which one pauses.
        seconds: The longest pause.
    """

    def __init__(self, marker_dir: str, folders: str = "", when_env: str = "", seconds: float = 120.0) -> None:
        self.marker_dir = marker_dir
        self.folders = [f for f in folders.split(",") if f]
        self.when_env = when_env
        self.seconds = seconds
        self._paused = False

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        folder = Path(trainer.log_dir or "").name
        if self._paused or (self.folders and folder not in self.folders):
            return
        if self.when_env and not os.environ.get(self.when_env):
            return
        self._paused = True
        marker = Path(self.marker_dir) / f"{folder}.json"
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.with_suffix(".tmp").write_text(json.dumps({"folder": folder, "pid": os.getpid()}))
        marker.with_suffix(".tmp").replace(marker)
        from experiments.callbacks.safety import find_guard

        guard = find_guard(trainer)
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline and not (guard and guard.stop_requested):
            time.sleep(0.05)
