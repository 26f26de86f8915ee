"""A sweep's link into each of its trial runs: the objective's best values, reports to Optuna, pruning.

Added by ``python -m experiments.sweep`` to the trainer of every trial (it never appears in a config). Pruning ends
the run through the fault guard's clean-stop path: the run folder's ``status.json`` says ``pruned``, no checkpoint
is written for it and nothing is reported as an error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import lightning as L
import optuna
from optuna_integration import PyTorchLightningPruningCallback

from experiments.launcher.summary import log_hparams
from experiments.rundir.stops import CleanStop

#: The objective that is the model's parameter count rather than a logged metric.
PARAMS = "params"


class TrialPruned(CleanStop, optuna.TrialPruned):
    """The pruner stopped the trial: a clean stop in state ``pruned``, and Optuna's own pruning signal."""

    def __init__(self, message: str) -> None:
        CleanStop.__init__(self, message, state="pruned", exit_code=0)


class TrialReporter(PyTorchLightningPruningCallback):
    """Keep each objective's best value; with one objective, report it to ``trial`` every epoch and prune.

    Args:
        trial: The Optuna trial this run is.
        objectives: ``(metric, direction)`` pairs, direction ``maximize`` or ``minimize``; ``params`` (the
            parameter count) is left to the sweep.
        pruner: The pruner's name, for the message of a pruned run.
    """

    def __init__(self, trial: optuna.Trial, objectives: Sequence[tuple[str, str]], pruner: str = "") -> None:
        super().__init__(trial, objectives[0][0])
        self.objectives = list(objectives)
        self.pruner = pruner
        #: Best value of every metric objective so far (validation runs, not the sanity check).
        self.best: dict[str, float] = {}
        #: The epoch at which the pruner stopped the run (``None`` while it runs or if it was never pruned).
        self.pruned_epoch: int | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        logged = trainer.callback_metrics
        for metric, direction in self.objectives:
            if metric == PARAMS:
                continue
            if metric not in logged:
                shown = ", ".join(sorted(k for k in logged if not k.startswith("train/"))) or "none"
                raise CleanStop(
                    f"the objective {metric} is not logged by this run (validation metrics: {shown}); pass "
                    "--objective with one of them",
                    state="failed",
                    exit_code=2,
                )
            value = float(logged[metric])
            if math.isfinite(value):
                best = self.best.get(metric)
                better = best is None or (value > best if direction == "maximize" else value < best)
                self.best[metric] = value if better else best
        if len(self.objectives) > 1:
            return  # Optuna prunes single-objective studies only
        try:
            super().on_validation_end(trainer, pl_module)
        except optuna.TrialPruned:
            value = float(logged[self.monitor])
            # The checkpoint callback has not seen this epoch yet: hp_metric is the best value including it.
            log_hparams(trainer, pl_module, {}, best_value=self.best.get(self.monitor))
            self.pruned_epoch = trainer.current_epoch
            by = f" by the {self.pruner} pruner" if self.pruner else ""
            raise TrialPruned(f"stopped{by} at epoch {trainer.current_epoch} ({self.monitor}={value:.4f})") from None
