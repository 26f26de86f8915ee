"""Progress output that suits where it goes: Lightning's bars on a terminal, plain lines in a log file.

Piped to a file (CI, ``nohup``, a job scheduler's log), tqdm's bars become ``\\r``-joined lines of a thousand
characters with cursor codes in them. :class:`AdaptiveProgressBar` keeps the bars on a terminal and otherwise prints one
plain line per epoch (and per validation, and at most one a minute inside long epochs): epoch, step, the training
loss and the validation metrics, elapsed time and the estimated time left.
"""

from __future__ import annotations

import math
import sys
import time
from numbers import Number
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

from experiments.rundir import console


class AdaptiveProgressBar(TQDMProgressBar):
    """Lightning's tqdm bars on a terminal; one plain line per epoch when standard output is not a terminal.

    Args:
        refresh_rate: Batches between bar updates; 0 turns all progress output off.
        process_position: Line offset of the bars (several trainers in one terminal).
        leave: Leave each epoch's bar on screen.
        plain: ``true`` for plain lines, ``false`` for bars; ``null`` decides by whether standard output is a
            terminal.
        plain_every_s: In plain mode, also print a line when an epoch has run this many seconds since the last line
            (long epochs, language models trained by steps).
    """

    def __init__(
        self,
        refresh_rate: int = 1,
        process_position: int = 0,
        leave: bool = False,
        plain: bool | None = None,
        plain_every_s: float = 60.0,
    ) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)
        if plain_every_s <= 0:
            raise ValueError(f"progress_bar.plain_every_s must be positive, got {plain_every_s}")
        self.plain = plain
        self.plain_every_s = plain_every_s
        self._plain = False
        self._started = 0.0
        self._start_step = 0
        self._last_line = 0.0
        self._last_line_step = -1

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._plain = self.plain if self.plain is not None else not _isatty(sys.stdout)
        if self._plain:
            # The tqdm bars are still created, but draw nothing; the lines below take their place.
            self.disable()

    # -- plain lines -----------------------------------------------------------------------------------------------
    def _lines_on(self, trainer: L.Trainer) -> bool:
        return self._plain and self.refresh_rate > 0 and trainer.is_global_zero and not trainer.sanity_checking

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._started = self._last_line = time.monotonic()
        self._start_step = trainer.global_step
        if not self._plain:
            console.progress_line_open(True)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        if self._lines_on(trainer) and time.monotonic() - self._last_line >= self.plain_every_s:
            self._line(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if trainer.state.fn == "fit" and self._lines_on(trainer):
            self._line(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._lines_on(trainer) and self._last_line_step != trainer.global_step:
            self._line(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        console.progress_line_open(False)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_test_start(trainer, pl_module)
        if not self._plain:
            console.progress_line_open(True)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_test_end(trainer, pl_module)
        console.progress_line_open(False)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # The message about the exception starts on a line of its own, not behind a half-drawn bar.
        console.end_progress_line()

    def _line(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Print one line: where training is, its metrics, and the time taken and left."""
        now = time.monotonic()
        self._last_line, self._last_line_step = now, trainer.global_step
        # Epochs count from 0, as in the bars, the checkpoint names and the messages.
        epochs = f" (of {trainer.max_epochs})" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        total = trainer.estimated_stepping_batches
        steps = f"/{int(total)}" if math.isfinite(total) else ""
        parts = [f"epoch {trainer.current_epoch}{epochs}", f"step {trainer.global_step}{steps}"]
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num"}
        # Training values first, then validation, each group in the order the model logged them.
        ordered = sorted(metrics.items(), key=lambda kv: not kv[0].startswith("train"))
        parts += [f"{k} {_number(v)}" for k, v in ordered]
        elapsed = now - self._started
        timing = f"{_duration(elapsed)} elapsed"
        done = trainer.global_step - self._start_step
        if done > 0 and math.isfinite(total) and total > trainer.global_step:
            timing += f", eta {_duration(elapsed / done * (total - trainer.global_step))}"
        print("  ".join([*parts, timing]), flush=True)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _number(value: Any) -> str:
    if isinstance(value, Number) and not isinstance(value, bool):
        return f"{float(value):.4g}"
    return str(value)


def _duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
