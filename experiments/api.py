"""zerotune from Python: launch a run with typed settings, resume it, and read what it did, without a command line.

    from experiments.api import launch

    result = launch("digits_cnn", {"model.lr": 0.01, "trainer.max_epochs": 3}, runs_dir="runs")
    result.run_dir                      # runs/digits_cnn/version_0
    result.best_checkpoint              # runs/digits_cnn/version_0/checkpoints/best-epoch002.ckpt
    result.test_metrics["test/acc"]     # 0.97...
    result.report.onnx.max_abs_diff     # the exported model's largest difference from PyTorch

Settings are the command line's dotted keys with plain Python values (``{"model.hidden": [32], "onnx.enabled":
False}``): nothing is turned into text and parsed back. A run launched here is the run ``python -m experiments.run``
makes: the same run folder, checkpoints, ONNX export, TensorBoard curves, ``status.json`` and summary, and the same
one-line errors, raised as :class:`~experiments.rundir.console.UsageError` (a setting or a file the user can fix) or
:class:`~experiments.rundir.stops.TrainingStopped` (the run was interrupted or failed; it said so and marked its
folder, and the exception's ``outcome`` says how).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from experiments.launcher.recipes import DEFAULT_EXPERIMENT

if TYPE_CHECKING:
    import lightning as L

    from experiments.launcher.launch import Config, RunResult

__all__ = ["Built", "build", "config", "export_hf", "launch", "resume"]


def config(
    experiment: str | os.PathLike | Config = DEFAULT_EXPERIMENT,
    settings: Mapping[str, Any] | None = None,
    *,
    runs_dir: str | os.PathLike | None = None,
    name: str | None = None,
    version: str | None = None,
    ckpt_path: str | os.PathLike | None = None,
) -> Config:
    """The config a run of ``experiment`` with ``settings`` gets, as plain data, before the launcher's parser fills in
    the defaults (:func:`launch` takes it, as do the sweep and the demos).

    Args:
        experiment: A named experiment (``digits_cnn``: ``experiments/configs/digits_cnn.yaml``), a YAML file, or
            a config from an earlier call (``settings`` and the placement then apply on top of it).
        settings: Dotted keys and values, e.g. ``{"model.lr": 0.01, "trainer.max_epochs": 3}``.
        runs_dir: Root of the run folders (default ``runs``).
        name: The run's name, the folder under ``runs_dir`` (default: the experiment's).
        version: The run folder's own name under ``runs_dir/name`` (default: the next free ``version_N``).
        ckpt_path: Start from this checkpoint's full training state, in a new run folder.

    Raises:
        UsageError: an unknown experiment, or a YAML file that is missing or holds no settings.
    """
    from experiments.launcher.launch import apply_overrides, experiment_config

    base = experiment if isinstance(experiment, dict) else experiment_config(experiment)
    placement = {"runs_dir": runs_dir, "name": name, "version": version, "ckpt_path": ckpt_path}
    given = {k: str(v) for k, v in placement.items() if v is not None}
    return apply_overrides(base, {**(settings or {}), **given})


def launch(
    experiment: str | os.PathLike | Config = DEFAULT_EXPERIMENT,
    settings: Mapping[str, Any] | None = None,
    *,
    runs_dir: str | os.PathLike | None = None,
    name: str | None = None,
    version: str | None = None,
    ckpt_path: str | os.PathLike | None = None,
    callbacks: Sequence[L.Callback] = (),
) -> RunResult:
    """Train ``experiment`` with ``settings``, test its best checkpoint, export it to ONNX, print the summary.

    Args:
        experiment: A named experiment, a YAML file, or a config from :func:`config` (then ``settings`` and the
            placement apply on top of it).
        settings: Dotted keys and values, e.g. ``{"model.lr": 0.01, "data.batch_size": 64}``.
        runs_dir: Root of the run folders (default ``runs``).
        name: The run's name (default: the experiment's).
        version: The run folder's own name (default: the next free ``version_N``).
        ckpt_path: Start from this checkpoint's full training state, in a new run folder.
        callbacks: Callback objects added to the trainer without appearing in the saved config.

    Returns:
        The run's :class:`~experiments.launcher.launch.RunResult`: its report, the trained model and the datamodule.

    Raises:
        UsageError: a setting, experiment or file the user can fix (one line).
        TrainingStopped: the run was interrupted or failed; it has said so and marked its run folder.
    """
    from experiments.launcher.launch import launch as launch_config
    from experiments.rundir import console

    console.quiet()
    run_config = config(experiment, settings, runs_dir=runs_dir, name=name, version=version, ckpt_path=ckpt_path)
    return launch_config(run_config, callbacks)


@dataclass
class Built:
    """A run assembled as the launcher assembles it, not started: call ``trainer.fit(model, datamodule=datamodule)``.

    Attributes:
        model: The LightningModule the config names.
        datamodule: The LightningDataModule the config names (set up only when its data was checked).
        trainer: The Trainer with every default callback, its logger and the run folder.
    """

    model: L.LightningModule
    datamodule: L.LightningDataModule
    trainer: L.Trainer


def build(
    experiment: str | os.PathLike | Config = DEFAULT_EXPERIMENT,
    settings: Mapping[str, Any] | None = None,
    *,
    runs_dir: str | os.PathLike | None = None,
    name: str | None = None,
    callbacks: Sequence[L.Callback] = (),
    check_data: bool = True,
) -> Built:
    """Assemble ``experiment`` with ``settings`` without training it: for code that drives the Trainer itself (the
    benchmarks time the fit alone, on data of their own).

    Args:
        experiment: A named experiment, a YAML file, or a config from :func:`config`.
        settings: Dotted keys and values.
        runs_dir: Root of the run folders (default ``runs``).
        name: The run's name (default: the experiment's).
        callbacks: Callback objects added to the trainer without appearing in the saved config.
        check_data: Set up and check the data first (``False`` when the caller replaces the data).

    Raises:
        UsageError: a setting, experiment or file the user can fix (one line).
    """
    from experiments.launcher.launch import make_cli

    cli = make_cli(config(experiment, settings, runs_dir=runs_dir, name=name), callbacks, check_data=check_data)
    return Built(cli.model, cli.datamodule, cli.trainer)


def resume(
    run_dir: str | os.PathLike,
    settings: Mapping[str, Any] | None = None,
    *,
    force: bool = False,
    callbacks: Sequence[L.Callback] = (),
) -> RunResult:
    """Continue the interrupted run in ``run_dir`` from its last checkpoint, with the config saved there.

    Args:
        run_dir: The run folder (``runs/NAME/version_N``).
        settings: Settings that change the saved config, e.g. ``{"trainer.max_epochs": 20}`` to train longer.
        force: Resume although the run's status says a process is still working on it (that process is gone).
        callbacks: Callback objects added to the trainer without appearing in the saved config.

    Raises:
        UsageError: a folder that holds no run, or a run still in progress (without ``force``).
        TrainingStopped: the run was interrupted or failed again.
    """
    import yaml

    from experiments.launcher.launch import apply_overrides, resumable_config
    from experiments.launcher.launch import launch as launch_config
    from experiments.rundir import console

    console.quiet()
    saved = yaml.safe_load(resumable_config(run_dir, force).read_text()) or {}
    run_config = apply_overrides(saved, {**(settings or {}), "resume": str(Path(run_dir))})
    return launch_config(run_config, callbacks)


def export_hf(source: str | os.PathLike, out: str | os.PathLike | None = None, *, force: bool = False) -> Path:
    """Write a run fine-tuned from a Hugging Face encoder in the Hugging Face layout (``config.json``,
    ``model.safetensors``, tokenizer files) that ``transformers.AutoModelForSequenceClassification`` loads.

    Args:
        source: A run folder (its best checkpoint) or a ``.ckpt`` file.
        out: The folder to write (default ``RUN/hf``).
        force: Replace an earlier export there.

    Raises:
        UsageError: a run that did not start from a Hugging Face model or does not pool with its pooler, or an
            output folder that exists.
    """
    from experiments.inference.hf_export import export_hf as write

    return write(source, out, force=force)
