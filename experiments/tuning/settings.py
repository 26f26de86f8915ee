"""A sweep's settings and where its study lives: plain data, stored with the study and shared by every worker."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from experiments.launcher.launch import Config

#: Each sweep's resolved base config, once per process (parsing the launcher's arguments takes a second).
_BASE_CONFIGS: dict[str, Any] = {}
#: Trials a study runs to unless told otherwise.
DEFAULT_TRIALS = 20
#: Settings of every trial that shape what it learns (``best.yaml`` keeps them); the sweep's own settings win.
TRIAL_SETTINGS: dict[str, Any] = {"early_stopping.enabled": True, "trainer.devices": 1}
#: Settings of trials only (``best.yaml`` runs with the experiment's): one line per trial instead of a progress
#: bar, no ONNX export or image dashboards, and no test: trials are compared on validation only.
TRIAL_ONLY: dict[str, Any] = {
    "trainer.enable_progress_bar": False,
    "onnx.enabled": False,
    "dashboards.enabled": False,
    "test_after_fit": False,
}


@dataclass
class Sweep:
    """A study's settings, stored with it so that every worker and ``--resume`` runs the same sweep.

    Attributes:
        experiment: The named experiment, or the path of the config file.
        named: Whether ``experiment`` is a name (else a config path).
        name: Folder of the experiment under the runs root.
        space: The search space as written (see :mod:`experiments.tuning.search_space`).
        fixed: Launcher arguments of every trial, as given on the sweep's command line (parsed once, by the
            launcher's own parser: :meth:`base_config`).
        settings: Settings of every trial from the sweep file's ``fixed:`` mapping, as typed values.
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
    settings: dict[str, Any] = field(default_factory=dict)
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

    def base_config(self) -> Config:
        """The whole config of every trial before its searched values: the experiment, the command line's settings
        (parsed by the launcher's parser, once per process), the sweep file's and :data:`TRIAL_SETTINGS`."""
        from experiments.launcher.launch import apply_overrides, resolve_config

        key = json.dumps([self.experiment, self.fixed, self.settings], sort_keys=True, default=str)
        if key not in _BASE_CONFIGS:
            resolved = resolve_config([*self.base_args(), *self.fixed])
            _BASE_CONFIGS[key] = apply_overrides(resolved, {**TRIAL_SETTINGS, **self.settings})
        return _BASE_CONFIGS[key]

    def trial_config(self, params: Mapping[str, Any]) -> Config:
        """The config of a run with ``params`` (typed values) as configured in the study: no placement, no
        trial-only settings; what ``best.yaml`` holds."""
        from experiments.launcher.launch import apply_overrides

        return apply_overrides(self.base_config(), params)

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
