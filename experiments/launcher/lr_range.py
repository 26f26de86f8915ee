"""The learning-rate range test: train while the rate grows, suggest the rate where the loss falls fastest.

Used by ``python -m experiments.lr_find`` (:mod:`experiments.lr_find`) and by the launcher's ``--auto_lr true``,
which runs the test at the start of a run and trains at the suggested rate (:func:`apply_auto_lr`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from experiments.callbacks.report import AutoLR, RunReport
from experiments.rundir import console

if TYPE_CHECKING:
    import lightning as L

    from experiments.launcher.cli import ZeroTuneCLI

PLOT_FILE = "lr_find.png"
RESULT_FILE = "lr_find.json"
#: Lightning's suggestion skips this many points at the start and end of the curve; fewer points give none.
_MIN_POINTS = 13
#: Smoothing factor of the loss average Lightning's range test records.
_BETA = 0.98


@dataclass
class RangeTest:
    """Settings and outcome of one learning-rate range test.

    Attributes:
        min_lr: Lowest rate tried.
        max_lr: Highest rate tried.
        num_training: Steps asked for (the test stops earlier once the loss diverges).
        mode: ``exponential`` or ``linear`` growth of the rate.
        lr: The rate of each step.
        loss: The smoothed training loss of each step.
        suggestion: The suggested rate (three significant digits), ``None`` until run.
    """

    min_lr: float = 1e-8
    max_lr: float = 1.0
    num_training: int = 100
    mode: str = "exponential"
    lr: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    suggestion: float | None = None

    def check(self) -> None:
        """Raises: UsageError for an empty or inverted range, too few steps or an unknown mode."""
        if not 0 < self.min_lr < self.max_lr:
            raise console.UsageError(
                f"--min_lr {self.min_lr} and --max_lr {self.max_lr}: need 0 < min_lr < max_lr (e.g. 1e-8 and 1)"
            )
        if self.num_training < _MIN_POINTS:
            raise console.UsageError(f"--num_training {self.num_training}: the test needs at least {_MIN_POINTS} steps")
        if self.mode not in ("exponential", "linear"):
            raise console.UsageError(f"--mode {self.mode}: must be exponential or linear")


def find_lr(trainer: L.Trainer, model: L.LightningModule, datamodule: L.LightningDataModule, test: RangeTest) -> float:
    """Run the range test on ``model`` and return the suggested rate (also stored in ``test``).

    Only the finder's own callback runs during the test, nothing is logged, and afterwards the model, the optimizer
    state, the training loop and the random streams are as they were: a fit that follows trains exactly as a fresh
    run with ``--model.lr SUGGESTION`` would.

    Raises:
        UsageError: on several devices, or when the test gathered too few loss values for a suggestion.
    """
    from lightning.pytorch.tuner import Tuner

    from lightning_models.base import _rng_states, _set_rng_states

    test.check()
    if trainer.world_size > 1:
        raise console.UsageError(
            "the learning-rate range test runs on one device: pass --trainer.devices 1 (the rate suits the same "
            "per-device batch size on more devices)"
        )
    callbacks, loggers, fit_loop = trainer.callbacks, trainer.loggers, trainer.fit_loop
    max_epochs, root_dir, log_dir, rng = fit_loop.max_epochs, trainer._default_root_dir, trainer.log_dir, _rng_states()
    trainer.callbacks, trainer.loggers = [], []
    # The test takes its steps over as many epochs as needed; its temporary checkpoint goes into the run folder
    # rather than the working directory (Trainer has no public setter for the folder).
    fit_loop.max_epochs = max(max_epochs or 1, test.num_training)
    if log_dir:
        trainer._default_root_dir = log_dir
    with _quiet_search(), _plain_progress():
        try:
            finder = Tuner(trainer).lr_find(
                model,
                datamodule=datamodule,
                min_lr=test.min_lr,
                max_lr=test.max_lr,
                num_training=test.num_training,
                mode=test.mode,
                update_attr=False,
            )
        finally:
            trainer.callbacks, trainer.loggers = callbacks, loggers
            fit_loop.max_epochs, trainer._default_root_dir = max_epochs, root_dir
            _set_rng_states(rng)
    test.lr = [float(v) for v in finder.results.get("lr", [])]
    test.loss = _unbiased(finder.results.get("loss", []), _BETA)
    suggestion = suggest(test.lr, test.loss, test.mode)
    if suggestion is None:
        raise console.UsageError(
            f"the learning-rate range test got only {len(test.lr)} usable loss values before the loss diverged: "
            "lower --min_lr, or raise --num_training"
        )
    test.suggestion = suggestion
    return suggestion


@contextlib.contextmanager
def _quiet_search() -> Iterator[None]:
    """Hide what Lightning says about the search's own bookkeeping (its temporary checkpoint and step limit)."""
    noise = ("Restored all states", "`Trainer.fit` stopped", "LR finder stopped early", "`weights_only` was not set")

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not any(n in record.getMessage() for n in noise)

    names = ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero", "lightning.pytorch.tuner.lr_finder")
    loggers = [logging.getLogger(n) for n in (*names, "lightning.pytorch.trainer.connectors.checkpoint_connector")]
    drop = _Drop()
    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)


class _PlainProgress:
    """Stands in for tqdm's bar where it would be carriage returns in a log: one line at each quarter of the test.

    Takes the arguments Lightning's range test gives tqdm (``desc``, ``total``) and the calls it makes.
    """

    def __init__(self, *args: Any, total: int | None = None, **kwargs: Any) -> None:
        self.total, self.n, self._shown = total, 0, 0

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.total:
            return
        quarter = min(4, self.n * 4 // self.total)
        if quarter > self._shown:
            self._shown = quarter
            print(f"lr_find: step {self.n} of {self.total}", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Nothing to clear: every line is complete."""


@contextlib.contextmanager
def _plain_progress() -> Iterator[None]:
    """Plain lines instead of the range test's tqdm bar while standard error (where the bar goes) is no terminal."""
    from lightning.pytorch.tuner import lr_finder

    try:
        terminal = sys.stderr.isatty()
    except (AttributeError, ValueError):
        terminal = False
    if terminal:
        yield
        return
    bar = lr_finder.tqdm
    lr_finder.tqdm = _PlainProgress
    try:
        yield
    finally:
        lr_finder.tqdm = bar


def _unbiased(smoothed: list[float], beta: float) -> list[float]:
    """Lightning's smoothed losses with the average's start-up bias removed correctly.

    Lightning divides the running average after step ``i`` (0-based) by ``1 - beta**(i + 2)`` where
    ``1 - beta**(i + 1)`` removes the bias of an average started at zero, so its first values come out about half
    the real loss and the curve seems to rise at the lowest rates. Rescaling by the ratio undoes that exactly.
    """
    return [float(v) * (1 - beta ** (i + 2)) / (1 - beta ** (i + 1)) for i, v in enumerate(smoothed)]


def suggest(lrs: list[float], losses: list[float], mode: str, skip_begin: int = 10) -> float | None:
    """The rate where the smoothed loss falls fastest, per decade of rate for an exponential test.

    Only the points before the loss's minimum count (past it, training diverges), and the first ``skip_begin``
    (the average is still settling). Lightning's own suggestion differentiates by the rate itself, which on an
    exponential scale favours the smallest rates, where tiny wiggles span tiny intervals.

    Returns:
        The suggested rate, rounded to three significant digits, or ``None`` with too few usable points.
    """
    import numpy as np

    lr, loss = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    keep = np.isfinite(loss)
    lr, loss = lr[keep], loss[keep]
    if len(loss) <= skip_begin + 2:
        return None
    end = int(np.argmin(loss)) + 1
    lr, loss = lr[skip_begin:end], loss[skip_begin:end]
    if len(loss) < 3:
        return None
    x = np.log10(lr) if mode == "exponential" else lr
    steepest = int(np.argmin(np.gradient(loss, x)))
    return float(f"{lr[steepest]:.3g}")


def save_results(run_dir: Path, test: RangeTest, logger: Any | None = None) -> Path:
    """Write ``lr_find.png`` and ``lr_find.json`` into ``run_dir`` and the plot into TensorBoard; return the PNG."""
    from experiments.rundir.plots import figure, render
    from fileio.atomic import atomic_write, atomic_write_text

    fig, ax = figure(7, 4.5)
    fig.set_dpi(100)
    ax.plot(test.lr, test.loss, color="tab:blue", label="training loss (smoothed)")
    if test.mode == "exponential":
        ax.set_xscale("log")
    if test.suggestion is not None:
        ax.axvline(test.suggestion, color="tab:red", linestyle="--", label=f"suggested lr {test.suggestion:g}")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.set_title(f"learning-rate range test: {len(test.lr)} steps")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower left")
    png = run_dir / PLOT_FILE
    atomic_write(png, lambda tmp: fig.savefig(tmp, format="png"))
    atomic_write_text(run_dir / RESULT_FILE, json.dumps(asdict(test), indent=2) + "\n")
    writer = getattr(logger, "experiment", None)
    if writer is not None and hasattr(writer, "add_image"):
        writer.add_image("lr_find/loss_vs_lr", render(fig), 0, dataformats="HWC")
        writer.add_text("lr_find/suggestion", f"suggested learning rate: {test.suggestion:g}", 0)
        writer.flush()
    return png


def apply_auto_lr(cli: ZeroTuneCLI) -> float:
    """``--auto_lr true``: find the rate and make it the run's rate everywhere it is recorded.

    The model's hyperparameters (what the optimizer and scheduler are built from, and what checkpoints and
    ``hparams.yaml`` store) and the config written to ``config.yaml`` get the suggestion; the saved config says
    ``auto_lr: false``, so running it again trains at the same rate without searching.
    """
    model = cli.model
    if cli.ckpt_path:
        raise console.UsageError(
            "--auto_lr finds the rate of a fresh run; a resumed run (or --ckpt_path) keeps its checkpoint's rate: "
            "leave out --auto_lr"
        )
    if "lr" not in model.hparams:
        raise console.UsageError(f"--auto_lr: {type(model).__name__} has no 'lr' hyperparameter to set")
    test = RangeTest()
    with console.user_errors():
        lr = find_lr(cli.trainer, model, cli.datamodule, test)
    # save_hyperparameters with a dict replaces both the live and the initial hparams (what loggers record).
    model.save_hyperparameters({**model.hparams, "lr": lr})
    cli.config.model.init_args.lr = lr
    cli.config.auto_lr = False
    run_dir, plot = cli.run_dir, None
    if run_dir is not None and cli.trainer.is_global_zero:
        plot = save_results(run_dir, test, cli.trainer.logger)
    report = RunReport.of(cli.trainer)
    if report is not None:
        report.auto_lr = AutoLR(lr, plot)
    print(f"auto_lr: training at lr {lr:g}, the range test's suggestion" + (f" (plot: {plot})" if plot else ""))
    return lr
