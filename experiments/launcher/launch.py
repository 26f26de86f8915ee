"""Launching a run: the launcher's arguments (an experiment, a resumed run, a requeued SLURM job), the CLI built from
them, the fit, the test of the best checkpoint, the summary, and the result.

``python -m experiments.run`` (:mod:`experiments.run`) is the command line on top of it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from jsonargparse import DefaultHelpFormatter

from experiments.callbacks.report import BestCheckpoint, RunReport
from experiments.launcher.recipes import CONFIG_DIR, DEFAULT_EXPERIMENT, experiment_names
from experiments.rundir import console

if TYPE_CHECKING:
    import lightning as L

    from experiments.launcher.cli import ZeroTuneCLI

USAGE = "python -m experiments.run [NAME] [--key value ...]"
#: A run's config as plain data: the YAML's structure (``model: {class_path, init_args}``, ``trainer: {...}``, ...).
Config = dict[str, Any]
#: The description above the parser's full list of options (the common ones come first, from experiments.launcher.help).
FULL_HELP = """All options. Besides the trainer, model, data and callback settings:
    --list              list the named experiments and exit
    --resume RUN_DIR    continue an interrupted run in its own folder, from its last checkpoint, with the config
                        saved there; options after it override that config; --force if its status says running
    --version NAME      name of the run folder under RUNS_DIR/NAME (default: the next free version_N)
    --auto_lr true      run the learning-rate range test first and train at the rate it suggests
    --early_stopping.enabled true  stop once the validation metric stops improving (--early_stopping.patience N)
    --model.help CLASS  every argument of a model class, e.g. --model.help lightning_models.SmallCNN
                        (likewise --data.help datamodules.DigitsDataModule)"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help layout, keeping the line breaks of the description above."""


def build_args(argv: list[str]) -> list[str]:
    """Turn ``[NAME] [overrides]`` into LightningCLI arguments: the experiment's YAML, its name, then overrides.

    Raises:
        UsageError: for an unknown experiment name.
    """
    args = list(argv)
    name = None
    if args and not args[0].startswith("-"):
        name = args.pop(0)
    resume = _option(args, "--resume")
    if resume is not None:
        return _resume_args(resume, name, args)
    has_config = any(a == "--config" or a.startswith("--config=") or a == "-c" for a in args)
    if name is None and not has_config:
        name = DEFAULT_EXPERIMENT
    prefix: list[str] = []
    if name is not None:
        prefix = ["--config", str(named_config(name)), "--name", name]
    elif not any(a == "--name" or a.startswith("--name=") for a in args):
        config_path = _option(args, "--config", "-c")
        if config_path is not None:
            prefix = ["--name", Path(config_path).stem]
    requeued = _requeued_run(prefix + args)
    if requeued is not None:
        return requeued
    return prefix + args


def named_config(name: str) -> Path:
    """The YAML of the named experiment ``name`` (``experiments/configs/NAME.yaml``).

    Raises:
        UsageError: for an unknown name, listing the valid ones.
    """
    path = CONFIG_DIR / f"{name}.yaml"
    if name.startswith("_") or not path.is_file():
        valid = ", ".join(experiment_names())
        raise console.UsageError(
            f"unknown experiment '{name}'. Valid names: {valid}. "
            f"Run 'python -m experiments.run --list' to see what each trains."
        )
    return path


def _requeued_run(args: list[str]) -> list[str] | None:
    """Arguments that resume this SLURM job's own run when SLURM started the job again after a requeue.

    The requeued job runs the same command as before. Its run folder is found by the job id its ``status.json``
    records; the job continues that run from its last checkpoint with the config saved there (the same command's
    settings), as ``--resume`` would. ``None`` for a job that is not requeued or left no checkpoint (it starts anew).
    """
    from experiments.rundir.status import find_requeued_run, requeued_job

    job = requeued_job()
    if job is None or "--version" in args or any(a.startswith("--version=") for a in args):
        return None
    name = _option(args, "--name") or "experiment"
    runs_dir = _option(args, "--runs_dir") or _config_value(_option(args, "--config", "-c"), "runs_dir") or "runs"
    run_dir = find_requeued_run(runs_dir, name, job)
    if run_dir is None:
        return None
    if not _is_worker_process():
        print(f"note: SLURM job {job} was requeued: resuming {run_dir} from its last checkpoint", file=sys.stderr)
    return _resume_args(str(run_dir), None, ["--resume", str(run_dir), "--force"])


def _config_value(path: str | None, key: str) -> str | None:
    """A top-level value of a YAML config file, if the file sets it."""
    if path is None:
        return None
    import yaml

    try:
        value = (yaml.safe_load(Path(path).read_text()) or {}).get(key)
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return str(value) if value is not None else None


def _option(args: list[str], flag: str, short: str | None = None) -> str | None:
    """The value given to ``flag`` (``--flag VALUE`` or ``--flag=VALUE``), if any."""
    for i, a in enumerate(args):
        if a in (flag, short) and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(f"{flag}="):
            return a.split("=", 1)[1]
    return None


def _resume_args(run_dir: str, name: str | None, args: list[str]) -> list[str]:
    """Arguments that continue the run in ``run_dir``: its saved config first, then the given overrides.

    Raises:
        UsageError: for an experiment name or ``--ckpt_path`` next to ``--resume``, a folder that is no run, or a
            run whose process is still working on it (unless ``--force`` is given).
    """
    if name is not None:
        raise console.UsageError(
            f"--resume continues a run with the config saved in its folder: leave out the experiment name '{name}'"
        )
    if _option(args, "--ckpt_path") is not None:
        raise console.UsageError("--resume restores the run's own last checkpoint: leave out --ckpt_path")
    force = "--force" in args
    args = [a for a in args if a != "--force"]
    return ["--config", str(resumable_config(run_dir, force)), *args]


def resumable_config(run_dir: str | Path, force: bool = False) -> Path:
    """The ``config.yaml`` of the run in ``run_dir``, once it is clear that the run may be resumed.

    Raises:
        UsageError: for a folder that is no run, or a run whose process is still working on it (unless ``force``).
    """
    from experiments.rundir.status import read_status, still_running

    config = Path(run_dir) / "config.yaml"
    if not config.is_file():
        raise console.UsageError(
            f"--resume {run_dir}: no config.yaml there. Pass a run folder such as runs/digits_cnn/version_0 "
            "(the 'run' line of a run's summary)."
        )
    status = read_status(run_dir)
    # DDP worker processes re-run this command while rank 0, which rewrote the status, works on the run.
    if _is_worker_process() or status is None:
        return config
    where = f"PID {status.get('pid')} on {'this host' if status.get('host') == _hostname() else status.get('host')}"
    if still_running(status) and not force:
        raise console.UsageError(
            f"--resume {run_dir}: the run is still {status['state']} ({where}); two processes would write one run "
            f"folder. Stop that process first, or pass --force if it is gone"
        )
    if status.get("state") == "crashed" and (Path(run_dir) / "checkpoints" / "last.ckpt").is_file():
        print(f"note: {run_dir} crashed: {status['reason']}; resuming from its last checkpoint", file=sys.stderr)
    return config


def _is_worker_process() -> bool:
    """Whether this process is not global rank 0 of a multi-process run (Lightning's DDP, torchrun, SLURM, or a node
    started with ``NODE_RANK``), by the launcher's environment."""
    from experiments.launcher.cli import is_global_zero

    return not is_global_zero()


def _hostname() -> str:
    import socket

    return socket.gethostname()


def experiment_config(experiment: str | os.PathLike) -> Config:
    """The config of a named experiment (``experiments/configs/NAME.yaml``) or of a YAML file, with its run name, as
    plain data (``_defaults.yaml`` is laid under it by the launcher's parser).

    Raises:
        UsageError: an unknown name, a missing or unreadable file, or one that holds no mapping.
    """
    path = Path(experiment)
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        name = path.stem
        if not path.is_file():
            raise console.UsageError(
                f"config file not found: '{path}'; pass a YAML file that exists, or an experiment name"
            )
    else:
        name, path = str(experiment), named_config(str(experiment))
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise console.UsageError(f"cannot read {path} as YAML: {' '.join(str(err).split())}") from None
    if not isinstance(config, dict):
        raise console.UsageError(f"{path} holds no settings (a YAML mapping such as 'model: ...')")
    config.setdefault("name", name)
    return config


def apply_overrides(config: Config, overrides: Mapping[str, Any]) -> Config:
    """A copy of ``config`` with ``overrides`` applied, as the command line applies ``--key value``.

    Keys are dotted as on the command line (``model.lr``, ``trainer.max_epochs``, ``data.batch_size``,
    ``onnx.enabled``); a key inside a group given by class (``model``, ``data``) goes to the class's ``init_args``.
    A string given for such a group itself (``{"model": "lightning_models.SmallCNN"}``) chooses another class,
    which keeps the arguments it also takes.
    Values keep their types: nothing is turned into text and parsed back.
    """
    out = copy.deepcopy(config)
    for key, value in overrides.items():
        *path, last = key.split(".")
        node = out
        for part in path:
            node = _into_init_args(node, part)
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node = _into_init_args(node, last)
        if isinstance(value, str) and isinstance(node.get(last), dict) and "class_path" in node[last]:
            node[last] = _another_class(node[last], value)
        else:
            node[last] = value
    return out


def _another_class(group: dict[str, Any], class_path: str) -> dict[str, Any]:
    """``group`` (``{class_path, init_args}``) switched to ``class_path``, keeping the arguments the new class also
    takes, as the command line's ``--data OtherClass`` does."""
    import inspect

    from lightning_models.checkpoints import import_class

    try:
        cls = import_class(class_path)
    except ImportError:
        return {"class_path": class_path}  # the parser names the class that cannot be used
    params: set[str] = set()
    for klass in cls.__mro__:  # through **kwargs into the parents' arguments, as the parser follows them
        if "__init__" not in vars(klass):
            continue
        signature = inspect.signature(klass.__init__).parameters.values()
        params |= {p.name for p in signature if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind == p.VAR_KEYWORD for p in signature):
            break
    kept = {k: v for k, v in (group.get("init_args") or {}).items() if k in params}
    return {"class_path": class_path, **({"init_args": kept} if kept else {})}


def _into_init_args(node: dict[str, Any], key: str) -> dict[str, Any]:
    """Where ``key`` lives in ``node``: its ``init_args`` when ``node`` names a class, else ``node`` itself."""
    if "class_path" in node and key not in ("class_path", "init_args", "dict_kwargs"):
        return node.setdefault("init_args", {})
    return node


def resolve_config(args: list[str] | Config) -> Config:
    """The whole config a run of ``args`` gets (its YAML, ``_defaults.yaml`` and every override), as plain data, without
    building anything; launching it gives the same run as launching ``args``.

    Raises:
        UsageError: for a bad setting, with one line naming it.
    """
    from experiments.launcher.cli import ParseOnlyCLI

    cli = make_cli(args, cli_class=ParseOnlyCLI)
    config = yaml.safe_load(cli.parser.dump(cli.config, skip_unset=False)) or {}
    config.pop("config", None)
    return config


def command_line(experiment: str, overrides: Mapping[str, Any] | None = None) -> list[str]:
    """``python -m experiments.run`` arguments of ``experiment`` with ``overrides``, for a run in a process of its own
    (a benchmark times the command a user types): each value written as the launcher's YAML parser reads it."""
    args = [experiment]
    for key, value in (overrides or {}).items():
        args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return args


@dataclass
class RunResult:
    """What one launcher run produced.

    Attributes:
        report: What the run did (:class:`~experiments.callbacks.report.RunReport`): its folder, the fit's time, the
            best checkpoint, the test metrics, the ONNX export, early stopping, the pre-trained weights loaded.
        model: The trained LightningModule (holding the tested checkpoint's weights when a test ran).
        datamodule: The run's LightningDataModule, set up.
    """

    report: RunReport
    model: L.LightningModule | None = None
    datamodule: L.LightningDataModule | None = None

    @property
    def run_dir(self) -> Path | None:
        """The run folder (``None`` without a logger, e.g. ``fast_dev_run``)."""
        return self.report.run_dir

    @property
    def best_checkpoint(self) -> Path | None:
        """The best checkpoint, if one was saved."""
        return self.report.best.path if self.report.best is not None else None

    @property
    def test_metrics(self) -> dict[str, float]:
        """Test metrics of the best checkpoint (empty when testing was skipped)."""
        return self.report.test_metrics

    @property
    def onnx(self) -> Path | None:
        """The exported ONNX file, if the export succeeded."""
        return self.report.onnx.path if self.report.onnx is not None else None


def run(args: list[str]) -> int:
    """Parse ``args``, fit, test the best checkpoint and print the summary; returns the exit code."""
    from experiments.rundir.stops import TrainingStopped

    try:
        launch(args)
    except TrainingStopped as stop:  # already reported: interrupted (130/143) or failed (1)
        return stop.outcome.exit_code
    return 0


def make_cli(
    args: list[str] | Config,
    callbacks: Sequence[L.Callback] = (),
    cli_class: type[ZeroTuneCLI] | None = None,
    check_data: bool = True,
) -> ZeroTuneCLI:
    """Parse ``args`` and build the run: model, datamodule, trainer (with ``callbacks`` added), run folder.

    Args:
        args: Launcher arguments (see :func:`build_args`), or a config as plain data (see :func:`apply_overrides`).
        callbacks: Callback objects added to the trainer without appearing in the config.
        cli_class: A :class:`~experiments.launcher.cli.ZeroTuneCLI` subclass to build with (e.g. one that only checks).
        check_data: Set up the data before the run folder is made, refusing data no run can learn from (``False``
            when the caller replaces the data, as the synthetic benchmark does).

    Raises:
        UsageError: for a bad setting, with one line naming it.
    """
    from experiments.launcher.cli import ZeroTuneCLI

    # The arguments are passed explicitly; hiding argv keeps LightningCLI from warning that both are set.
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        with console.user_errors(config=True):
            return (cli_class or ZeroTuneCLI)(
                args=args,
                run=False,
                parser_kwargs={"description": FULL_HELP, "formatter_class": _HelpFormatter, "usage": USAGE},
                trainer_defaults={"callbacks": list(callbacks)} if callbacks else None,
                check_data=check_data,
            )
    finally:
        sys.argv = argv


def launch(args: list[str] | Config, callbacks: Sequence[L.Callback] = ()) -> RunResult:
    """Parse ``args``, fit (resuming when asked), test the best checkpoint, print the summary; return the result.

    Args:
        args: Launcher arguments (see :func:`build_args`), or a config as plain data (see :func:`apply_overrides`;
            :mod:`experiments.api` builds one from typed settings).
        callbacks: Callback objects added to the trainer without appearing in the config (e.g. a sweep's trial
            reporter).

    Raises:
        TrainingStopped: the run was interrupted or failed; it has said so and marked its run folder.
    """
    from experiments.launcher.lifecycle import guarded, mark_completed, mark_stopped
    from experiments.launcher.summary import finish_run

    cli = make_cli(args, callbacks)
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    # An interrupt outside fit and test (which report their own) still leaves one line and an honest status.
    with mark_stopped(trainer), console.user_errors():
        # Set on the trainer rather than passed to fit: the model sees it in setup() and does not load
        # model.pretrained weights that the checkpoint replaces anyway.
        trainer.ckpt_path = cli.ckpt_path
        if cli.config.get("auto_lr"):
            from experiments.launcher.lr_range import apply_auto_lr

            apply_auto_lr(cli)
        start = time.perf_counter()
        # An interrupt, a NaN loss or an error saves what can be resumed, marks the run and raises TrainingStopped.
        try:
            guarded(trainer, lambda: trainer.fit(model, datamodule=dm))
        except console.USER_ERRORS:
            # A mistake in the settings found once fitting began (model.pretrained, the corpus): nothing trained,
            # so the run folder this launch created goes again, as for mistakes found before it existed.
            if cli.new_run_dir and cli.run_dir is not None and trainer.global_step == 0:
                from experiments.launcher.cli import discard_fresh_run_dir

                discard_fresh_run_dir(cli.run_dir)
            raise
        trainer.ckpt_path = None
        report = RunReport.of(trainer) or RunReport(cli.run_dir)
        # The whole fit: data setup, validation, checkpoints and the fit-end ONNX export included.
        report.fit_seconds, report.epochs = time.perf_counter() - start, trainer.current_epoch
        report.best = _best_checkpoint(trainer)
        if cli.config.test_after_fit and not trainer.interrupted:
            best = str(report.best.path) if report.best is not None else None
            results = guarded(trainer, lambda: trainer.test(model, datamodule=dm, ckpt_path=best, verbose=False))
            report.test_metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
        _leave_process_group()
        if trainer.is_global_zero:
            finish_run(trainer, model, report)
        mark_completed(trainer, report)
    return RunResult(report, model, dm)


def _best_checkpoint(trainer: L.Trainer) -> BestCheckpoint | None:
    """The checkpoint callback's best checkpoint, if it saved one."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt = trainer.checkpoint_callback
    if not isinstance(ckpt, ModelCheckpoint) or not ckpt.best_model_path:
        return None
    score = ckpt.best_model_score
    return BestCheckpoint(Path(ckpt.best_model_path), str(ckpt.monitor), float(score) if score is not None else None)


def _leave_process_group() -> None:
    """End this process's part in DDP once fit and test are done.

    What follows (summary, status file) is rank 0's alone; without a process group, Lightning's collective calls
    in there (``trainer.log_dir`` broadcasts) return at once instead of waiting for ranks that already finished.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
