"""zerotune's LightningCLI: model, datamodule, trainer and callbacks all configurable from YAML and the command line.

Configs name classes (``class_path``/``init_args``); shapes and class counts are linked from the datamodule to the
model; every run gets its own ``RUNS_DIR/NAME/version_N`` folder, allocated atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import warnings
from argparse import ArgumentError
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins import CheckpointIO

from datamodules.base import DataModule
from experiments.callbacks import AttentionMaps, Dashboards, ONNXExport, TextSamples, Throughput
from experiments.callbacks.checkpoint import ModelCheckpoint
from experiments.callbacks.early_stopping import EarlyStopping
from experiments.callbacks.geometry import BatchGeometry, BatchSized, GlobalBatch, plan_resize
from experiments.callbacks.progress import AdaptiveProgressBar
from experiments.callbacks.report import RunReport
from experiments.callbacks.safety import FaultGuard
from experiments.launcher.loggers import SafeTensorBoardLogger
from experiments.launcher.recipes import DEFAULTS_FILE
from experiments.rundir.checkpoint_io import AtomicCheckpointIO
from experiments.rundir.console import UsageError, explain_config_error, parser_options
from experiments.rundir.finder import newest_run, next_version, run_checkpoint, version_number
from experiments.rundir.status import STATUS_FILE, write_status
from fileio.atomic import atomic_write_text
from fileio.checkpoints import TRUST_ENV, load_checkpoint, readable_checkpoint
from fileio.hub import is_model_folder, resolve_source
from lightning_models.base import TaskModule
from lightning_models.checkpoints import import_class
from lightning_models.finetune import FreezeSchedule
from lightning_models.hf_encoders import read_config

# Set by rank 0 before DDP launches its worker processes, so every rank logs into the same run folder.
RUN_VERSION_ENV = "ZEROTUNE_RUN_VERSION"
#: The datamodule's input description (``input_spec()``: normalization, fitted table preprocessing) in a run folder.
INPUT_SPEC_FILE = "preprocessing.json"

#: Callbacks every run has, each configurable as ``--KEY.ARG value`` or under ``KEY:`` in YAML.
FORCED_CALLBACKS: dict[str, type] = {
    "checkpoint": ModelCheckpoint,
    "lr_monitor": LearningRateMonitor,
    # tqdm bars on a terminal; one plain line per epoch in a log file (CI, nohup).
    "progress_bar": AdaptiveProgressBar,
    "onnx": ONNXExport,
    "dashboards": Dashboards,
    # Off by default (unfreeze_at_epoch 0); --freeze.unfreeze_at_epoch N trains the head alone for N epochs.
    "freeze": FreezeSchedule,
    # Off by default; --early_stopping.enabled true stops once the checkpoint's metric stops improving.
    "early_stopping": EarlyStopping,
    # NaN/inf loss stops the run; SIGINT/SIGTERM and errors save a resumable checkpoint; status.json in the run.
    "safety": FaultGuard,
    # Language models: tokens/s and MFU in the progress bar and TensorBoard; a generated sample per validation.
    "throughput": Throughput,
    "samples": TextSamples,
    # Vision Transformers: a validation image's attention (rollout and last layer's heads) every few epochs.
    "attention": AttentionMaps,
}


class AtomicSaveConfig(SaveConfigCallback):
    """Writes the fully resolved ``config.yaml`` into the run folder atomically (temporary file, then rename)."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.already_saved:
            return
        log_dir = trainer.log_dir  # a collective call under DDP: every rank must make it
        if trainer.is_global_zero and log_dir is not None:
            path = Path(log_dir) / self.config_filename
            # A resumed run saves its effective config (the saved one plus the overrides given with --resume), so
            # resuming again continues with the same settings; the file itself never asks to resume.
            resuming = bool(self.config.get("resume"))
            if self.overwrite or resuming or not path.exists():
                config = self.config.clone()
                config.resume = None
                config.version = None  # the folder this run got; a run started from this file gets its own
                atomic_write_text(path, self.parser.dump(config, skip_unset=False))
            dm = trainer.datamodule
            if isinstance(dm, DataModule) and (spec := dm.input_spec()) is not None:
                atomic_write_text(Path(log_dir) / INPUT_SPEC_FILE, json.dumps(spec, indent=1) + "\n")
        self.already_saved = trainer.strategy.broadcast(True)


def allocate_run_dir(root: Path, name: str) -> tuple[Path, int]:
    """Create and return a fresh ``root/name/version_N`` folder (``N`` one past the highest existing).

    ``mkdir`` without ``exist_ok`` is atomic, so two runs started at the same moment still get distinct
    folders, and an existing run folder is never reused.
    """
    base = root / name
    base.mkdir(parents=True, exist_ok=True)
    version = next_version(base)
    while True:
        try:
            (base / f"version_{version}").mkdir()
            return base / f"version_{version}", version
        except FileExistsError:
            version += 1


def link_model_tokenizer(cfg: Namespace) -> None:
    """A Hugging Face model given as ``model.pretrained`` brings its tokenizer: it becomes ``data.tokenizer_path``
    when the data takes a tokenizer and none was given (the config saved with the run then names it).

    The model's ``config.json`` is read first (a Hub name fetched), so a model zerotune cannot convert is named as
    such before the data looks for its tokenizer.

    Raises:
        DataError: a Hub name that cannot be fetched, a folder without a readable ``config.json`` of a supported
            ``model_type``.
    """
    pretrained = cfg.model.init_args.get("pretrained") if cfg.get("model") else None
    if not is_model_folder(pretrained):
        return
    read_config(resolve_source(pretrained))
    data = cfg.data.init_args if cfg.get("data") else None
    if data is not None and "tokenizer_path" in data and not data.tokenizer_path:
        data.tokenizer_path = pretrained


class ZeroTuneCLI(LightningCLI):
    """LightningCLI with zerotune's defaults, forced callbacks, data-to-model links and run folders."""

    def __init__(self, *args: Any, check_data: bool = True, **kwargs: Any) -> None:
        """Same arguments as ``LightningCLI``, and:

        Args:
            check_data: Set up the data before the run folder is created, so data no run can learn from is refused
                without leaving a folder behind (``False`` when the caller supplies the data itself).
        """
        self.check_data = check_data
        kwargs.setdefault("model_class", None)
        kwargs.setdefault("datamodule_class", None)
        kwargs.setdefault("save_config_callback", AtomicSaveConfig)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("seed_everything_default", 0)
        parser_kwargs = kwargs.setdefault("parser_kwargs", {})
        parser_kwargs.setdefault("default_config_files", [str(DEFAULTS_FILE)])
        parser_kwargs.setdefault("prog", "python -m experiments.run")
        # Parse errors are raised, not printed with the full usage, so the launcher can condense them to one line.
        parser_kwargs.setdefault("exit_on_error", False)
        self.run_dir: Path | None = None
        #: Whether this process created ``run_dir`` (a new ``version_N``), so a mistake found later may remove it.
        self.new_run_dir = False
        #: Checkpoint the fit restores (from ``--resume`` or ``--ckpt_path``), resolved before the run folder exists.
        self.ckpt_path: str | None = None
        #: The batch geometry that checkpoint recorded (see :mod:`experiments.callbacks.geometry`).
        self.ckpt_geometry: BatchGeometry | None = None
        super().__init__(*args, **kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            given = args if isinstance(args, list) else []
            configs = [str(a) for flag, a in zip(given, given[1:], strict=False) if flag in ("--config", "-c")]
            raise UsageError(explain_config_error(str(err), parser_options(parser), configs)) from None

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--name", type=str, default="experiment", help="Experiment name: runs go to RUNS_DIR/NAME/version_N."
        )
        parser.add_argument(
            "--runs_dir",
            type=str,
            default="runs",
            help="Root folder of all runs (TensorBoard logs, checkpoints, config, ONNX).",
        )
        parser.add_argument(
            "--version",
            type=str | None,
            default=None,
            help="Name of this run's folder under RUNS_DIR/NAME (default: the next free version_N). An existing "
            "folder is used only while it holds no run (no config.yaml).",
        )
        parser.add_argument(
            "--auto_lr",
            type=bool,
            default=False,
            help="Run the learning-rate range test first (python -m experiments.lr_find) and train at the rate "
            "it suggests: the optimizer, the scheduler, config.yaml and the checkpoints all hold that rate.",
        )
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="Test the best checkpoint on the test split after fitting.",
        )
        parser.add_argument(
            "--resume",
            type=str | None,
            default=None,
            help="Continue the interrupted run in this folder (RUNS_DIR/NAME/version_N) from its "
            "checkpoints/last.ckpt, in the same folder and TensorBoard run, with the config saved there; options "
            "after it override that config (e.g. --trainer.max_epochs 20 to train longer).",
        )
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help="Start a new run from a checkpoint's full training state (weights, optimizer, scheduler, epoch): "
            "a .ckpt file, or 'last' for the last.ckpt of the newest earlier run of this experiment. For weights "
            "only, use --model.pretrained.",
        )
        parser.add_argument(
            "--trust_checkpoint",
            type=bool,
            default=False,
            help="Allow checkpoint/weights files that need arbitrary Python code to load (pickled objects beyond "
            "tensors). Loading such a file runs whatever code its author put in it: only for files you trust.",
        )
        parser.add_argument(
            "--flush_denormal",
            type=bool,
            default=True,
            help="Flush denormal floats to zero on the CPU (torch.set_flush_denormal). Adam's tiny second moments "
            "otherwise turn into denormals that make CPU training of small nets up to a third slower; values below "
            "1.2e-38 become 0. No effect on GPUs.",
        )
        for key, cls in FORCED_CALLBACKS.items():
            parser.add_lightning_class_args(cls, key)
        # Lightning annotates the batch limits as ``float | int``, so "--trainer.limit_val_batches 1" would parse as
        # 1.0, the whole split; integers are batch counts, as Lightning means them ("0.25" stays a fraction).
        for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches"):
            action = parser._option_string_actions.get(f"--trainer.{key}")
            if action is not None and hasattr(action, "_typehint"):
                action._typehint = int | float | None
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.input_shape", "model.init_args.input_shape", apply_on="instantiate")
        # Language models: the tokenizer's vocabulary and the context length.
        parser.link_arguments("data.vocab_size", "model.init_args.vocab_size", apply_on="instantiate")
        parser.link_arguments("data.block_size", "model.init_args.block_size", apply_on="instantiate")

    def complete_config(self) -> None:
        """Fill in what the config leaves to the classes it names: the checkpoint's metric (``monitor: auto``)."""
        ckpt = self.config.checkpoint
        if ckpt.monitor == "auto":
            # The task class states which metric defines "best" (val/acc for classifiers, val/loss for regressors).
            model_cls = import_class(self.config.model.class_path)
            task = issubclass(model_cls, TaskModule)
            ckpt.monitor = model_cls.monitor if task else "val/loss"
            ckpt.mode = model_cls.monitor_mode if task else "min"

    def before_instantiate_classes(self) -> None:
        cfg = self.config
        if not cfg.get("resume"):
            check_run_location(Path(cfg.runs_dir), cfg.name)
        # Read by every checkpoint/weights load (resume, pretrained weights), which are weights-only unless trusted.
        os.environ[TRUST_ENV] = "1" if cfg.get("trust_checkpoint") else "0"
        torch.set_flush_denormal(bool(cfg.get("flush_denormal", True)))
        self.complete_config()
        link_model_tokenizer(cfg)
        self.ckpt_path = resolve_ckpt_path(cfg)
        if self.ckpt_path is not None:
            self.ckpt_geometry = BatchGeometry.from_checkpoint(load_checkpoint(self.ckpt_path))

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        cfg = self.config
        # Bad data (a single class, an empty split, files missing) is found before a run folder exists.
        if self.check_data and isinstance(self.datamodule, DataModule) and is_global_zero():
            self.datamodule.check_data()
        if cfg.trainer.fast_dev_run:
            kwargs["logger"] = False
        elif cfg.trainer.logger in (None, True):
            kwargs["logger"] = self.make_logger(cfg)
        elif cfg.trainer.logger is False:
            # No TensorBoard, but checkpoints and config still go to the run's own folder, not the working directory.
            self.make_logger(cfg)
            kwargs.setdefault("default_root_dir", str(self.run_dir))
        plugins = self._get(self.config_init, "trainer", default={}).get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            # Checkpoints are written to a temporary file and renamed: a crash or full disk never truncates one.
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        with warnings.catch_warnings():
            # Said once, plainly, by _precision_note.
            warnings.filterwarnings("ignore", message=r".*AMP with fp16 is not supported on CPU.*")
            try:
                trainer = super().instantiate_trainer(**kwargs)
            except BaseException:
                # A rejected trainer setting, or an interrupt, leaves no run folder behind that holds nothing but
                # its status (a resumed run's folder stays).
                if self.run_dir is not None and not cfg.get("resume"):
                    discard_fresh_run_dir(self.run_dir)
                raise
        _precision_note(cfg, trainer)
        self._keep_global_batch(trainer)
        return trainer

    def _keep_global_batch(self, trainer: Any) -> None:
        """Resumed (or started from a checkpoint) on another number of processes: keep the checkpoint's global batch.

        The accumulation (else each process's batch) is set on the trainer and datamodule and in the config saved
        with the run; batch counts (``val_check_interval``, ``limit_train_batches``) follow, so they mean the same
        samples; the fault guard carries the position within the epoch over when the checkpoint is restored.
        """
        saved = self.ckpt_geometry
        if saved is None:
            return
        cfg, dm = self.config, self.datamodule
        sized = isinstance(dm, BatchSized)
        now = BatchGeometry(
            dm.batch_size if sized else saved.batch_size,
            trainer.num_nodes * trainer.num_devices,
            trainer.accumulate_grad_batches,
        )
        resize = plan_resize(saved, now, can_set_batch_size=sized)
        if not resize.changed:
            return
        trainer.accumulate_grad_batches = cfg.trainer.accumulate_grad_batches = resize.new.accumulate
        if sized and dm.batch_size != resize.new.batch_size:
            dm.batch_size = cfg.data.init_args.batch_size = resize.new.batch_size
        for key in ("val_check_interval", "limit_train_batches"):
            count = getattr(trainer, key)
            if isinstance(count, int) and not isinstance(count, bool) and resize.count_scale(count):
                setattr(trainer, key, resize.count_scale(count))
                setattr(cfg.trainer, key, resize.count_scale(count))
        keeper = next((cb for cb in trainer.callbacks if isinstance(cb, GlobalBatch)), None)
        if keeper is not None:
            keeper.resize = resize
        if is_global_zero():
            print(f"note: {resize.note}", file=sys.stderr)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        # Switching a feature off in the trainer drops its always-on callback too (Lightning refuses the pair).
        unwanted: tuple[type, ...] = ()
        if config.get("enable_progress_bar") is False:
            unwanted += (ProgressBar,)
        if config.get("enable_checkpointing") is False:
            unwanted += (ModelCheckpoint,)
        if config.get("logger") is False:
            unwanted += (LearningRateMonitor,)
        callbacks = [c for c in callbacks if not isinstance(c, unwanted)]
        # Not settings: every run records its batch geometry and can resume on another number of processes, and
        # reports what it did (where status.json lives, with or without a logger).
        callbacks += [GlobalBatch(), RunReport(self.run_dir)]
        return super()._instantiate_trainer(config, callbacks)

    def make_logger(self, cfg: Namespace) -> TensorBoardLogger:
        """TensorBoard logger writing into this run's own folder.

        Only global rank 0 allocates a folder. Worker ranks started by Lightning's DDP launcher inherit the version
        through the environment; elsewhere (torchrun, SLURM) they never write logs, and checkpoint folders are
        broadcast from rank 0 by Lightning.
        """
        root = Path(cfg.runs_dir)
        if cfg.get("resume"):
            # The resumed run's own folder and TensorBoard run (its event files are appended to), on every rank.
            self.run_dir = Path(cfg.resume)
            root, version = self.run_dir.parent.parent, self.run_dir.name
            # version_N as the number N, as for a new run (the progress bar shows it as v_num).
            number = version_number(self.run_dir)
            version = number if number is not None else version
            cfg.name = self.run_dir.parent.name
            if is_global_zero():
                write_status(self.run_dir, "starting")
        elif cfg.get("version"):
            # A folder named by the caller (e.g. a sweep's trial_N), the same on every rank.
            version = str(cfg.version)
            if version in (".", "..") or any(sep and sep in version for sep in ("/", os.sep, os.altsep, "\0")):
                raise UsageError(f"--version {version!r} must be one folder name, such as trial_3 (no '/' or '..')")
            self.run_dir = root / cfg.name / version
            if is_global_zero():
                if (self.run_dir / "config.yaml").exists():
                    raise UsageError(
                        f"--version {version}: {self.run_dir} already holds a run; pass another --version, or "
                        f"--resume {self.run_dir} to continue it"
                    )
                self.run_dir.mkdir(parents=True, exist_ok=True)
                write_status(self.run_dir, "starting")
        elif is_global_zero():
            try:
                self.run_dir, version = allocate_run_dir(root, cfg.name)
            except OSError as err:
                raise UsageError(_unusable_root(root, err)) from None
            self.new_run_dir = True
            os.environ[RUN_VERSION_ENV] = str(version)
            # From here on the folder says who works on it: a process that dies shows as crashed, not running.
            write_status(self.run_dir, "starting")
        else:
            version = int(os.environ.get(RUN_VERSION_ENV, 0))
            self.run_dir = root / cfg.name / f"version_{version}"
        # log_graph draws the model from example_input_array; a model the tracer rejects only loses its graph.
        return SafeTensorBoardLogger(
            save_dir=str(root), name=cfg.name, version=version, default_hp_metric=False, log_graph=True
        )


def check_run_location(root: Path, name: str) -> None:
    """Refuse a run name that is not one plain folder name, and a runs root that cannot hold runs.

    Checked before anything is created, so a mistake leaves nothing behind.

    Raises:
        UsageError: naming the value and what to pass instead.
    """
    shown = _printable(name)
    if not name or name in (".", "..") or any(sep and sep in name for sep in ("/", os.sep, os.altsep, "\0")):
        raise UsageError(
            f"--name '{shown}' is not a plain folder name: a run name is one path component (no '/', not '.' or "
            "'..', not empty), so every run stays inside --runs_dir; pass e.g. --name my_experiment"
        )
    for what, text in (("--name", name), ("--runs_dir", str(root))):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(
                f"{what} '{_printable(text)}' is not valid UTF-8, which TensorBoard's event files need; choose a "
                "name of UTF-8 characters"
            ) from None
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise UsageError(f"--runs_dir '{root}': '{existing}' is a file, not a folder; pass a folder for the runs")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(
            f"--runs_dir '{root}' is not writable ('{existing}': permission denied); pass --runs_dir a folder you "
            "can write"
        )


def _unusable_root(root: Path, err: OSError) -> str:
    """One line for a runs root whose folder could not be created (read-only file system, permissions, full disk)."""
    reason = err.strerror or str(err)
    where = err.filename or root
    return f"--runs_dir '{root}' cannot hold runs: {reason} ('{where}'); pass --runs_dir a folder you can write"


def _printable(text: str) -> str:
    """``text`` with bytes that are not UTF-8 (kept by Python as surrogates) shown as ``\\xNN`` escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


#: What a run writes into its folder before its first training step.
_BEFORE_TRAINING = {STATUS_FILE, "config.yaml", "hparams.yaml", INPUT_SPEC_FILE, "tokenizer.json"}


def discard_fresh_run_dir(run_dir: Path) -> None:
    """Remove a run folder that holds nothing but what a run writes before it trains (its status, config,
    hyperparameters, input description, tokenizer, first TensorBoard events; no checkpoint): the run ended on a
    mistake before its first training step, and a folder of its own is all that would be lost."""
    with contextlib.suppress(OSError):
        if not run_dir.is_dir():
            return
        for entry in run_dir.iterdir():
            empty_folder = entry.name == "checkpoints" and entry.is_dir() and not any(entry.iterdir())
            if not (empty_folder or entry.name in _BEFORE_TRAINING or entry.name.startswith("events.out.tfevents.")):
                return
        shutil.rmtree(run_dir)


def resolve_ckpt_path(cfg: Namespace) -> str | None:
    """The checkpoint to restore: ``RUN/checkpoints/last.ckpt`` for ``--resume RUN``, or ``--ckpt_path``.

    Raises:
        FileNotFoundError: naming the missing checkpoint and what to pass instead.
    """
    if cfg.get("resume"):
        path = Path(cfg.resume) / "checkpoints" / "last.ckpt"
        if not path.is_file():
            raise FileNotFoundError(
                f"--resume {cfg.resume}: no checkpoints/last.ckpt in that run folder (it stopped before its first "
                "checkpoint, or ran with checkpoint.save_last false); start it again instead"
            )
        # A damaged last.ckpt falls back to the newest readable checkpoint (the best one) rather than failing.
        path, warning = readable_checkpoint(path, trust=bool(cfg.get("trust_checkpoint")))
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        return str(path)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path == "last":
        base = Path(cfg.runs_dir) / cfg.name
        run = newest_run(base, has=lambda folder: run_checkpoint(folder, "last") is not None)
        last = run_checkpoint(run, "last") if run is not None else None
        if last is None:
            raise FileNotFoundError(f"--ckpt_path last: no earlier run in {base} has checkpoints/last.ckpt")
        return str(last)
    if ckpt_path and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"--ckpt_path: no such checkpoint file '{ckpt_path}'")
    return ckpt_path


def _precision_note(cfg: Namespace, trainer: Any) -> None:
    """Say up front when fp16 mixed precision was asked for on the CPU, where Lightning uses bf16 instead."""
    fp16 = str(cfg.trainer.precision) in ("16-mixed", "16")
    if fp16 and isinstance(trainer.accelerator, CPUAccelerator) and trainer.is_global_zero:
        print(
            "note: precision 16-mixed (float16 autocast) needs a GPU; on the CPU this run uses bf16-mixed "
            "(bfloat16 autocast) instead. Pass --trainer.precision bf16-mixed to say so, or 32-true for full "
            "precision."
        )


def is_global_zero() -> bool:
    """Whether this process is global rank 0, from the launcher's environment (torchrun, SLURM, Lightning's DDP)."""
    # Worker processes started by Lightning inherit SLURM_PROCID from an interactive SLURM shell; their local rank
    # says they are not rank 0.
    if int(os.environ.get("LOCAL_RANK", 0)) != 0:
        return False
    for var in ("RANK", "SLURM_PROCID"):
        if var in os.environ:
            return int(os.environ[var]) == 0
    return int(os.environ.get("NODE_RANK", 0)) == 0 and int(os.environ.get("LOCAL_RANK", 0)) == 0


class ParseOnlyCLI(ZeroTuneCLI):
    """Parses a run's settings like the launcher and builds nothing: no classes, no trainer, no run folder."""

    def before_instantiate_classes(self) -> None:
        self.complete_config()

    def instantiate_classes(self) -> None:
        pass
