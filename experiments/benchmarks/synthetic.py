"""Throughput benchmark: zerotune against the plain PyTorch loops it replaces, in one process.

For each benchmarked experiment the same model trains on the same (synthetic, correctly shaped) data for the same
number of steps in three ways, plus a fourth that splits zerotune's cost from Lightning's:

(a) ``tutorial``: the classic loop, a ``Dataset`` that turns each sample into a PIL image, per-sample torchvision
    transforms (``ToTensor``, ``Normalize``, and ``RandomCrop``/``RandomHorizontalFlip`` where the recipe augments) and
    a ``DataLoader`` with worker processes;
(b) ``hand``: the best hand-written loop, the whole split as one ``uint8`` tensor on the device, batches gathered by
    index, normalized and augmented as a batch, the loss written to TensorBoard every ``log_every_n_steps`` steps;
(c) ``zerotune``: the experiment's own config through :class:`~experiments.launcher.cli.ZeroTuneCLI` and the Lightning
    Trainer, with its default logging, progress bar and callbacks;
(L) ``bare Lightning``: the same LightningModule and datamodule in a plain ``lightning.Trainer`` with no logger,
    progress bar, checkpoints or callbacks: (c)/(L) is what zerotune adds on top of Lightning's own loop.

All four follow the recipe's precision (bf16 autocast for ``bf16-mixed``) and memory format (``channels_last``).
Steady-state samples/s are timed after warm-up steps. It also times the launcher's startup (command to first
training step), the default experiment's time to accuracy, and ONNX Runtime against PyTorch eager inference.

Usage: ``python -m experiments.bench [--models mnist_mlp cifar10_lenet] [--seconds 4] [--out docs/benchmark.md]``

Real-data mode (``--data_dir`` MNIST, ``--image_folder`` CIFAR-10 JPEGs): time to a target test accuracy against
hand-written loops, and the image folder's start-up figures; see :mod:`experiments.benchmarks.real`.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import resource
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

from experiments.launcher.launch import command_line
from experiments.launcher.recipes import DEFAULT_EXPERIMENT

BENCH_EXPERIMENTS = ["mnist_mlp", "mnist_cnn", "cifar10_lenet", "cifar10_resnet18"]
WARMUP = 5


@dataclass
class Case:
    """What one experiment config says about the model and the data, read from its YAML."""

    name: str
    model_cls: type
    model_args: dict
    data_cls: type
    data_args: dict
    #: The recipe's ``trainer.precision`` (``_defaults.yaml``, then the experiment's YAML).
    precision: str = "32-true"

    @classmethod
    def from_config(cls, name: str) -> Case:
        from experiments.launcher.recipes import read_recipe
        from lightning_models.checkpoints import import_class

        cfg = read_recipe(name)
        m, d = cfg["model"], cfg["data"]
        return cls(
            name,
            import_class(m["class_path"]),
            dict(m.get("init_args") or {}),
            import_class(d["class_path"]),
            dict(d.get("init_args") or {}),
            str(cfg["trainer"].get("precision", "32-true")),
        )

    def datamodule(self):
        return self.data_cls(**self.data_args)

    def model(self, dm) -> torch.nn.Module:
        return self.model_cls(num_classes=dm.num_classes, input_shape=dm.input_shape, **self.model_args)

    def training_model(self, dm, device: torch.device) -> torch.nn.Module:
        """The model on ``device`` in training mode and in the recipe's memory format, as zerotune's setup leaves it."""
        model = self.model(dm).to(device).train()
        if model.hparams.get("channels_last"):
            model = model.to(memory_format=torch.channels_last)
        return model

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """The recipe's mixed precision for a hand-written loop: bf16 autocast for ``bf16-mixed``, else none.

        ``16-mixed`` would also need a gradient scaler; no benchmarked recipe uses it, so it is refused rather than
        timed without one.
        """
        if self.precision == "bf16-mixed":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        if self.precision in ("32-true", "32", "64-true", "64"):
            return contextlib.nullcontext()
        raise ValueError(f"{self.name}: the hand-written loops time precision 32 and bf16-mixed, not {self.precision}")


def synthetic_split(dm, n: int, seed: int = 0):
    """``n`` random uint8 images of the datamodule's shape with random labels."""
    from datamodules.base import Split

    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *dm.input_shape), dtype=torch.uint8, generator=g)
    return Split(x, torch.randint(0, dm.num_classes, (n,), generator=g))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class _Timer:
    """Wall time of steps ``WARMUP .. WARMUP + steps`` (device synchronized at both ends)."""

    def __init__(self, steps: int, device: torch.device) -> None:
        self.steps, self.device, self.start, self.seconds = steps, device, 0.0, float("nan")

    def tick(self, step: int) -> bool:
        """Call before each step; returns False once the timed steps are done."""
        if step == WARMUP:
            _sync(self.device)
            self.start = time.perf_counter()
        elif step == WARMUP + self.steps:
            _sync(self.device)
            self.seconds = time.perf_counter() - self.start
            return False
        return True


def run_tutorial(case: Case, split, steps: int, device: torch.device, workers: int) -> float:
    """(a) per-sample PIL + torchvision transforms + DataLoader; returns seconds for ``steps`` steps."""
    from PIL import Image
    from torchvision import transforms

    dm = case.datamodule()
    tf = []
    if dm.augment and dm.crop_padding:
        tf.append(transforms.RandomCrop(dm.input_shape[-1], padding=dm.crop_padding))
    if dm.augment and dm.hflip:
        tf.append(transforms.RandomHorizontalFlip())
    tf += [transforms.ToTensor(), transforms.Normalize(dm.mean, dm.std)]
    transform = transforms.Compose(tf)
    # Channels-last numpy arrays, as torchvision's MNIST/CIFAR datasets hold them.
    images = split.x.permute(0, 2, 3, 1).squeeze(-1).numpy()
    labels = split.y.tolist()

    class TutorialDataset(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(labels)

        def __getitem__(self, i: int):
            return transform(Image.fromarray(images[i])), labels[i]

    loader = torch.utils.data.DataLoader(
        TutorialDataset(),
        batch_size=dm.batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    model = case.training_model(dm, device)
    opt = model.build_optimizer()
    timer, step = _Timer(steps, device), 0
    while True:
        for x, y in loader:
            if not timer.tick(step):
                return timer.seconds
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with case.autocast(device):
                loss = model.compute_loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1


def run_hand(case: Case, split, steps: int, device: torch.device, logdir: str) -> float:
    """(b) the best hand-written loop over in-memory batches; returns seconds for ``steps`` steps."""
    from torch.utils.tensorboard import SummaryWriter

    from datamodules.base import BatchLoader

    dm = case.datamodule()
    model = case.training_model(dm, device)
    opt = model.build_optimizer()
    loader = BatchLoader(split.to(device), dm.batch_size, shuffle=True, transform=dm.train_transform)
    writer = SummaryWriter(logdir)
    timer, step = _Timer(steps, device), 0
    while True:
        for x, y in loader:
            if not timer.tick(step):
                writer.close()
                return timer.seconds
            with case.autocast(device):
                loss = model.compute_loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % 10 == 0:
                writer.add_scalar("train/loss", loss.item(), step)
            step += 1


class StepTimer(L.Callback):
    """Times training steps ``WARMUP .. WARMUP + steps`` of a Lightning fit, then stops it."""

    def __init__(self, steps: int, device: torch.device) -> None:
        self.timer = _Timer(steps, device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self.timer.tick(trainer.global_step):
            trainer.should_stop = True


def _with_split(dm, split):
    # Synthetic data stands in for the files: nothing to download or read.
    dm.prepare_data = lambda: None
    dm.splits = {"train": split, "val": split, "test": split}
    return dm


def run_lightning(case: Case, split, steps: int, device: torch.device) -> float:
    """(L) the same LightningModule and datamodule in a bare Lightning ``Trainer``; returns seconds.

    No logger, progress bar, checkpoints or callbacks beyond the step timer: Lightning's own share of (c).
    """
    dm = _with_split(case.datamodule(), split)
    timer = StepTimer(steps, device)
    trainer = L.Trainer(
        accelerator=device.type,
        devices=1,
        precision=case.precision,
        max_steps=WARMUP + steps + 1,
        max_epochs=-1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(validation_step|smaller than the logging interval).*")
        trainer.fit(case.model(dm), datamodule=dm)
    return timer.timer.seconds


def run_zerotune(case: Case, split, steps: int, device: torch.device, runs_dir: str) -> float:
    """(c) the experiment through zerotune's CLI and Trainer with default callbacks; returns seconds."""
    from experiments.api import build

    timer = StepTimer(steps, device)
    settings = {
        "trainer.max_steps": WARMUP + steps + 1,
        "trainer.max_epochs": -1,
        "trainer.limit_val_batches": 0,
        "trainer.num_sanity_val_steps": 0,
        "trainer.accelerator": device.type,
    }
    # The synthetic split replaces the files: their check is skipped.
    run = build(case.name, settings, runs_dir=runs_dir, callbacks=[timer], check_data=False)
    _with_split(run.datamodule, split)
    # The progress bar renders as usual, into the void: the benchmark's own table is the output worth reading.
    with open(os.devnull, "w") as void, contextlib.redirect_stdout(void), warnings.catch_warnings():
        # No validation in a throughput run, so the best-checkpoint metric never appears.
        warnings.filterwarnings("ignore", message=r".*could not find the monitored key.*")
        run.trainer.fit(run.model, datamodule=run.datamodule)
    return timer.timer.seconds


class FirstStepProbe(L.Callback):
    """Prints the wall-clock time of the first training step (read by :func:`time_startup`)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 0:
            print(f"\nFIRST_STEP {time.time()}", flush=True)


class AccuracyProbe(L.Callback):
    """Prints seconds from fit start until ``val/acc`` first reaches ``target``, and the whole fit's seconds."""

    def __init__(self, target: float = 0.97) -> None:
        self.target, self.start, self.reached = target, 0.0, False

    def on_fit_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        # After the epoch's metrics are computed and published to callback_metrics.
        acc = trainer.callback_metrics.get("val/acc")
        if not trainer.sanity_checking and not self.reached and acc is not None and float(acc) >= self.target:
            self.reached = True
            print(f"\nREACHED {time.perf_counter() - self.start}", flush=True)

    def on_fit_end(self, trainer, pl_module) -> None:
        print(f"\nFIT {time.perf_counter() - self.start}", flush=True)


def _launch(settings: dict[str, Any], probe: list[str]) -> tuple[float, str]:
    """Run the default experiment with ``settings`` in a process of its own, as a user types it, with ``probe`` (its
    callback appended to the default ones); returns (start time, stdout)."""
    args = [*command_line(DEFAULT_EXPERIMENT, settings), *probe]
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.run", *args],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    if proc.returncode != 0:
        raise RuntimeError(f"experiments.run {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return start, proc.stdout


def _marks(out: str) -> dict[str, float]:
    # Progress-bar output shares stdout: each mark is printed at the start of a line of its own.
    marks = {key: float(value) for key, value in re.findall(r"(?m)^(FIRST_STEP|REACHED|FIT) ([0-9.eE+-]+)", out)}
    test_acc = re.findall(r"test/acc=([0-9.]+)", out)
    if test_acc:
        marks["test_acc"] = float(test_acc[-1])
    return marks


def time_startup(runs_dir: str) -> float:
    """Seconds from starting ``python -m experiments.run`` to its first training step (default experiment)."""
    settings = {"runs_dir": runs_dir, "trainer.max_steps": 1, "test_after_fit": False}
    start, out = _launch(settings, ["--trainer.callbacks+=experiments.benchmarks.synthetic.FirstStepProbe"])
    return _marks(out)["FIRST_STEP"] - start


def time_to_accuracy(runs_dir: str, target: float = 0.97) -> dict[str, float]:
    """The default experiment, whole: seconds to ``target`` val accuracy, fit seconds, test accuracy, wall seconds."""
    probe = [
        "--trainer.callbacks+=experiments.benchmarks.synthetic.AccuracyProbe",
        f"--trainer.callbacks.init_args.target={target}",
    ]
    start, out = _launch({"runs_dir": runs_dir}, probe)
    marks = _marks(out)
    marks["wall"] = time.time() - start
    return marks


def onnx_inference(case: Case, workdir: str, seconds: float) -> dict[int, tuple[float, float]]:
    """Samples/s of PyTorch eager and ONNX Runtime inference at batch 1 and 256: ``{batch: (torch, ort)}``."""
    import onnxruntime as ort

    from lightning_models.export import export_onnx

    dm = case.datamodule()
    model = case.model(dm).eval()
    path = Path(workdir) / f"{case.name}.onnx"
    export_onnx(model, torch.zeros(2, *dm.input_shape), path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    results = {}
    for batch in (1, 256):
        x = torch.randn(batch, *dm.input_shape)
        with torch.inference_mode():
            eager = _rate(lambda x=x: model(x), batch, seconds / 4)
        feed = {name: x.numpy()}
        results[batch] = (eager, _rate(lambda feed=feed: session.run(None, feed), batch, seconds / 4))
    return results


def _rate(fn, batch: int, seconds: float) -> float:
    """Samples/s of ``fn`` called repeatedly for about ``seconds`` after two warm-up calls."""
    fn(), fn()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or calls < 3:
        fn()
        calls += 1
    return calls * batch / elapsed


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _calibrate(case: Case, split, device: torch.device, seconds: float, work: str) -> int:
    """Steps that take about ``seconds`` in the hand loop (at least 20); its files go under ``work``."""
    probe = 5
    elapsed = run_hand(case, split, probe, device, f"{work}/calibrate-{case.name}")
    return max(20, int(seconds / max(elapsed / probe, 1e-6)))


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:  # not Linux: keep platform's answer
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
