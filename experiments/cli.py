"""zerotune's LightningCLI: model, datamodule, trainer and callbacks all configurable from YAML and the command line.

Configs name classes (``class_path``/``init_args``); shapes and class counts are linked from the datamodule to the
model; every run gets its own ``RUNS_DIR/NAME/version_N`` folder, allocated atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger

from experiments.files import atomic_write_text

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULTS_FILE = CONFIG_DIR / "_defaults.yaml"
# Set by rank 0 before DDP launches its worker processes, so every rank logs into the same run folder.
RUN_VERSION_ENV = "ZEROTUNE_RUN_VERSION"

#: Callbacks every run has, each configurable as ``--KEY.ARG value`` or under ``KEY:`` in YAML.
FORCED_CALLBACKS: dict[str, type] = {
    "checkpoint": ModelCheckpoint,
    "lr_monitor": LearningRateMonitor,
    "progress_bar": TQDMProgressBar,
}


class AtomicSaveConfig(SaveConfigCallback):
    """Writes the fully resolved ``config.yaml`` into the run folder atomically (temporary file, then rename)."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.already_saved:
            return
        log_dir = trainer.log_dir  # a collective call under DDP: every rank must make it
        if trainer.is_global_zero and log_dir is not None:
            path = Path(log_dir) / self.config_filename
            # A resumed run keeps the config it was started with.
            if self.overwrite or not path.exists():
                atomic_write_text(path, self.parser.dump(self.config, skip_unset=False))
        self.already_saved = trainer.strategy.broadcast(True)


def allocate_run_dir(root: Path, name: str) -> tuple[Path, int]:
    """Create and return a fresh ``root/name/version_N`` folder (``N`` one past the highest existing).

    ``mkdir`` without ``exist_ok`` is atomic, so two runs started at the same moment still get distinct
    folders, and an existing run folder is never reused.
    """
    base = root / name
    base.mkdir(parents=True, exist_ok=True)
    existing = [int(p.name.split("_", 1)[1]) for p in base.glob("version_*") if p.name.split("_", 1)[1].isdigit()]
    version = max(existing, default=-1) + 1
    while True:
        try:
            (base / f"version_{version}").mkdir()
            return base / f"version_{version}", version
        except FileExistsError:
            version += 1


class ZeroTuneCLI(LightningCLI):
    """LightningCLI with zerotune's defaults, forced callbacks, data-to-model links and run folders."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("model_class", None)
        kwargs.setdefault("datamodule_class", None)
        kwargs.setdefault("save_config_callback", AtomicSaveConfig)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("seed_everything_default", 0)
        parser_kwargs = kwargs.setdefault("parser_kwargs", {})
        parser_kwargs.setdefault("default_config_files", [str(DEFAULTS_FILE)])
        parser_kwargs.setdefault("prog", "python -m experiments.run")
        self.run_dir: Path | None = None
        super().__init__(*args, **kwargs)

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
            "--test_after_fit",
            type=bool,
            default=True,
            help="Test the best checkpoint on the test split after fitting.",
        )
        for key, cls in FORCED_CALLBACKS.items():
            parser.add_lightning_class_args(cls, key)
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.input_shape", "model.init_args.input_shape", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        cfg = self.config
        ckpt = cfg.checkpoint
        if ckpt.monitor == "auto":
            # The task class states which metric defines "best" (val/acc for classifiers, val/loss for regressors).
            model_cls = _import(cfg.model.class_path)
            ckpt.monitor = getattr(model_cls, "monitor", "val/loss")
            ckpt.mode = getattr(model_cls, "monitor_mode", "min")

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        cfg = self.config
        if cfg.trainer.logger in (None, True) and not cfg.trainer.fast_dev_run:
            kwargs["logger"] = self.make_logger(cfg)
        elif cfg.trainer.fast_dev_run:
            kwargs["logger"] = False
        return super().instantiate_trainer(**kwargs)

    def make_logger(self, cfg: Namespace) -> TensorBoardLogger:
        """TensorBoard logger writing into this run's own folder.

        Only global rank 0 allocates a folder. Worker ranks started by Lightning's DDP launcher inherit the version
        through the environment; elsewhere (torchrun, SLURM) they never write logs, and checkpoint folders are
        broadcast from rank 0 by Lightning.
        """
        root = Path(cfg.runs_dir)
        if _is_global_zero():
            self.run_dir, version = allocate_run_dir(root, cfg.name)
            os.environ[RUN_VERSION_ENV] = str(version)
        else:
            version = int(os.environ.get(RUN_VERSION_ENV, 0))
            self.run_dir = root / cfg.name / f"version_{version}"
        return TensorBoardLogger(save_dir=str(root), name=cfg.name, version=version, default_hp_metric=False)


def _is_global_zero() -> bool:
    """Whether this process is global rank 0, from the launcher's environment (torchrun, SLURM, Lightning's DDP)."""
    for var in ("RANK", "SLURM_PROCID"):
        if var in os.environ:
            return int(os.environ[var]) == 0
    return int(os.environ.get("NODE_RANK", 0)) == 0 and int(os.environ.get("LOCAL_RANK", 0)) == 0


def _import(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(__import__(module, fromlist=[name]), name)
