"""A sweep's settings and where its study lives: plain data, stored with the study and shared by every worker."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Trials a study runs to unless told otherwise.
DEFAULT_TRIALS = 20
#: Settings of every trial that shape what it learns (``best.yaml`` keeps them); the sweep's own settings win.
TRIAL_SETTINGS = ["--early_stopping.enabled", "true", "--trainer.devices", "1"]
#: Settings of trials only (``best.yaml`` runs with the experiment's): one line per trial instead of a progress
#: bar, no ONNX export or image dashboards, and no test: trials are compared on validation only.


@dataclass
class Sweep:
    """A study's settings, stored with it so that every worker and ``--resume`` runs the same sweep.

    Attributes:
        experiment: The named experiment, or the path of the config file.
        named: Whether ``experiment`` is a name (else a config path).
        name: Folder of the experiment under the runs root.
        space: The search space as written (see :mod:`experiments.tuning.search_space`).
        fixed: Launcher arguments of every trial.
        objectives: ``[metric, "maximize" | "minimize"]`` pairs.
        sampler: ``tpe``, ``random``, ``grid`` or ``cmaes``.
        sampler_args: Keyword arguments of the Optuna sampler.
        pruner: ``median``, ``hyperband`` or ``none``.
        pruner_args: Keyword arguments of the Optuna pruner.
        seed: Seed of the sampler.
        trials: Trials the study runs to.
        max_epochs: The trials' ``trainer.max_epochs`` (Hyperband's largest budget).
        monitor: The trials' checkpoint metric, whose best value each trial logs as ``hp_metric``.
    """

    experiment: str
    named: bool
    name: str
    space: dict[str, Any]
    fixed: list[str] = field(default_factory=list)
    objectives: list[list[str]] = field(default_factory=list)
    sampler: str = "tpe"
    sampler_args: dict[str, Any] = field(default_factory=dict)
    pruner: str = "median"
    pruner_args: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    trials: int = DEFAULT_TRIALS
    max_epochs: int | None = None
    monitor: str = "val/loss"

    def base_args(self) -> list[str]:
        """The launcher arguments that select the experiment."""
        from experiments.launcher.launch import build_args

        return build_args([self.experiment]) if self.named else ["--config", self.experiment, "--name", self.name]

    def run_args(self, params: dict[str, Any]) -> list[str]:
        """Launcher arguments of a run with ``params`` as configured in the study (no placement, no trial-only)."""
        from experiments.tuning.search_space import launcher_args

        return [*self.base_args(), *TRIAL_SETTINGS, *self.fixed, *launcher_args(params)]

    def identity(self) -> dict[str, Any]:
        """What must match for a worker to join this study (all but the number of trials)."""
        record = asdict(self)
        record.pop("trials")
        return record

    def describe_objectives(self) -> str:
        return ", ".join(f"{m} ({'max' if d == 'maximize' else 'min'})" for m, d in self.objectives)


@dataclass
class StudyRef:
    """Where a study is: its name in the storage, the storage, and its sweep folder."""

    name: str
    url: str
    folder: Path

    @property
    def runs_dir(self) -> Path:
        return self.folder.parent.parent
