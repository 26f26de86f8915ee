"""Real-data mode of ``python -m experiments.bench``: time to accuracy against hand-written loops, image-folder start.

Time to accuracy: for each dataset given, the same network, recipe and data train three ways, each in a fresh
process, timed from process start until the test accuracy (measured after every epoch, with the clock stopped)
first reaches the target:

(a) the classic tutorial loop and (b) the best hand-written in-memory loop, both in
    :mod:`experiments.benchmarks.handloops` (plain PyTorch, no Lightning);
(c) zerotune: ``python -m experiments.run NAME`` with the experiment's own config and defaults (validation,
    checkpoints, dashboards, progress bar, TensorBoard) and :class:`TargetProbe` added.

MNIST (``--data_dir``, torchvision layout) uses ``mnist_fast`` to 99%; a CIFAR-10 JPEG folder (``--image_folder``)
uses ``cifar10_fast`` to 70%. The folder also gets the image-folder figures: ``setup()`` seconds and command to
first training step, with an empty cache and again with the cache filled, and the peak memory then.

Usage: ``python -m experiments.bench --data_dir ../shared/data/mnist-dev --image_folder /tmp/cifar10-train``
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from experiments.benchmarks.handloops import Clock

ROOT = Path(__file__).resolve().parents[2]
#: (experiment, target test accuracy) per kind of real data.
TASKS = {"mnist": ("mnist_fast", 0.99), "folder": ("cifar10_fast", 0.70)}
SECTION_START, SECTION_END = (
    "<!-- real-data: python -m experiments.bench --data_dir/--image_folder -->",
    "<!-- /real-data -->",
)


class TargetProbe(L.Callback):
    """Prints when the test accuracy first reaches ``target`` (checked after each validation, clock stopped).

    Marks, one per line: ``FIRST_STEP s``, ``EPOCH n s test_acc val_acc``, ``REACHED s`` and ``MAXRSS_MB m``, where
    ``s`` is wall time since the parent's ``ZEROTUNE_BENCH_T0`` less the time spent in these test evaluations.
    Training stops once the target is reached; ``target > 1`` only times the start.
    """

    def __init__(self, target: float = 0.99) -> None:
        self.target, self.clock = target, Clock()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        if trainer.global_step == 0 and idx == 0:
            print(f"\nFIRST_STEP {self.clock.now()}", flush=True)
            print(f"MAXRSS_MB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}", flush=True)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.target > 1:
            return
        start = time.time()
        elapsed = self.clock.now()
        acc = self.test_accuracy(trainer, pl_module)
        self.clock.paused += time.time() - start
        val = float(trainer.callback_metrics.get("val/acc", float("nan")))
        print(f"\nEPOCH {trainer.current_epoch + 1} {elapsed} {acc} {val}", flush=True)
        if acc >= self.target:
            print(f"REACHED {elapsed}", flush=True)
            trainer.should_stop = True

    @staticmethod
    def test_accuracy(trainer: L.Trainer, pl_module: L.LightningModule) -> float:
        was_training = pl_module.training
        pl_module.eval()
        right = total = 0
        with torch.no_grad(), trainer.strategy.precision_plugin.forward_context():
            for x, y in trainer.datamodule.test_dataloader():
                right += int((pl_module(x).argmax(1) == y).sum())
                total += len(y)
        pl_module.train(was_training)
        return right / max(total, 1)


# -- plans and processes ----------------------------------------------------------------------------------------------
def data_settings(kind: str, path: str) -> dict[str, Any]:
    """Launcher settings that point the experiment at the real data."""
    if kind == "mnist":
        return {"data.data_dir": path, "data.download": False}
    return {"data.root": path}


def make_plan(kind: str, path: str, device: str, workers: int) -> dict[str, Any]:
    """What the hand-written loops need to know of the experiment's config, read from its YAML and datamodule."""
    from experiments.launcher.recipes import read_recipe
    from lightning_models.checkpoints import import_class

    name, target = TASKS[kind]
    cfg = read_recipe(name)
    trainer = cfg["trainer"]
    init = dict(cfg["data"].get("init_args") or {})
    init.update({"data_dir": path, "download": False} if kind == "mnist" else {"root": path})
    dm = import_class(cfg["data"]["class_path"])(**init)
    data = {
        "kind": kind,
        "path": path,
        "seed": dm.seed,
        "batch_size": dm.batch_size,
        "eval_batch_size": dm.eval_batch_size,
        "mean": list(dm.mean),
        "std": list(dm.std),
        "augment": dm.augment,
        "crop_padding": dm.crop_padding,
        "hflip": dm.hflip,
    }
    if kind == "mnist":
        data["val_size"] = dm.val_size
    else:
        data.update(val_fraction=dm.val_fraction, test_fraction=dm.test_fraction)
    return {
        "experiment": name,
        "target": target,
        "device": device,
        "workers": workers,
        "seed_everything": cfg.get("seed_everything", 0),
        "max_epochs": trainer["max_epochs"],
        "precision": str(trainer.get("precision", "32-true")),
        "data": data,
        "model": {
            "class": cfg["model"]["class_path"].rpartition(".")[2],
            "args": dict(cfg["model"].get("init_args") or {}),
            "num_classes": dm.num_classes,
            "input_shape": list(dm.input_shape),
        },
    }


def _marks(out: str) -> dict[str, Any]:
    marks: dict[str, Any] = {"epochs": []}
    for key, rest in re.findall(r"(?m)^(FIRST_STEP|EPOCH|REACHED|MAXRSS_MB|SETUP) (.+)$", out):
        values = [float(v) for v in rest.split()]
        if key == "EPOCH":
            marks["epochs"].append(values)
        else:
            marks[key] = values[0] if len(values) == 1 else values
    return marks


def _spawn(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd`` from the project root with ``ZEROTUNE_BENCH_T0`` set to now; its marks, and wall seconds."""
    start = time.time()
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {}), "ZEROTUNE_BENCH_T0": str(start)},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    marks = _marks(proc.stdout)
    marks["wall"] = time.time() - start
    return marks


def time_hand_loop(loop: str, plan: dict[str, Any], work: str) -> dict[str, Any]:
    path = Path(work) / f"plan-{plan['experiment']}.json"
    path.write_text(json.dumps(plan))
    return _spawn([sys.executable, "-m", "experiments.benchmarks.handloops", loop, str(path)])


def time_zerotune(plan: dict[str, Any], work: str, target: float | None = None, cache_dir: str | None = None) -> dict:
    """The experiment through the launcher with its defaults; a fresh image cache unless ``cache_dir`` is given."""
    kind, path = plan["data"]["kind"], plan["data"]["path"]
    from experiments.launcher.launch import command_line

    settings = {
        **data_settings(kind, path),
        "runs_dir": f"{work}/runs",
        "test_after_fit": False,
        "trainer.accelerator": plan["device"],
    }
    if target is not None and target > 1:  # only the start is timed, with the defaults that act before it
        settings |= {"trainer.max_steps": 1, "onnx.enabled": False}  # the export comes after the first step
    # The command a user types, timed in a process of its own; the probe is appended to the default callbacks.
    args = [sys.executable, "-m", "experiments.run", *command_line(plan["experiment"], settings)]
    args += ["--trainer.callbacks+=experiments.benchmarks.real.TargetProbe"]
    args += [f"--trainer.callbacks.init_args.target={plan['target'] if target is None else target}"]
    cache = cache_dir or tempfile.mkdtemp(prefix="zerotune-cache-", dir=work)
    return _spawn(args, {"ZEROTUNE_CACHE_DIR": cache})


def setup_seconds(folder: str, cache_dir: str) -> dict[str, Any]:
    """``cifar10_fast``'s datamodule ``setup()`` on ``folder`` in a fresh process: seconds and peak RSS."""
    command = [sys.executable, "-m", "experiments.benchmarks.real", "setup", folder]
    return _spawn(command, {"ZEROTUNE_CACHE_DIR": cache_dir})


def _setup_main(folder: str) -> None:
    from experiments.launcher.recipes import read_recipe
    from lightning_models.checkpoints import import_class

    cfg = read_recipe("cifar10_fast")
    dm = import_class(cfg["data"]["class_path"])(**{**cfg["data"]["init_args"], "root": folder})
    start = time.perf_counter()
    dm.setup("fit")
    seconds = time.perf_counter() - start
    print(f"SETUP {seconds} {int(all(dm.cache_hits.values()))}")
    print(f"MAXRSS_MB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}")


# -- report -----------------------------------------------------------------------------------------------------------
def _fmt(marks: dict[str, Any]) -> tuple[str, str, str]:
    """(seconds to target, epochs, test accuracy then) or 'not reached' with the best accuracy."""
    if "REACHED" not in marks:
        best = max((e[2] for e in marks["epochs"]), default=float("nan"))
        return "not reached", str(len(marks["epochs"])), f"best {best:.4f}"
    epoch = next(e for e in marks["epochs"] if e[1] == marks["REACHED"])
    return f"{marks['REACHED']:.1f}", str(int(epoch[0])), f"{epoch[2]:.4f}"


def time_to_accuracy(kind: str, path: str, device: str, workers: int, work: str) -> list[str]:
    plan = make_plan(kind, path, device, workers)
    results = {
        "(a) tutorial loop": time_hand_loop("tutorial", plan, work),
        "(b) hand-written loop": time_hand_loop("hand", plan, work),
        "(c) zerotune": time_zerotune(plan, work),
    }
    reached = {k: m.get("REACHED") for k, m in results.items()}
    zt = reached["(c) zerotune"]
    lines = [
        f"**{plan['experiment']}** to {plan['target']:.0%} test accuracy ({path}):",
        "",
        "| loop | start to first step s | seconds to target | epochs | test acc then | time / zerotune's |",
        "|---|---|---|---|---|---|",
    ]
    for name, marks in results.items():
        seconds, epochs, acc = _fmt(marks)
        ratio = f"{reached[name] / zt:.2f}x" if reached[name] and zt else "-"
        lines.append(
            f"| {name} | {marks.get('FIRST_STEP', float('nan')):.1f} | {seconds} | {epochs} | {acc} | {ratio} |"
        )
    a, b = reached["(a) tutorial loop"], reached["(b) hand-written loop"]
    if zt and a and b:
        lines += [
            "",
            f"zerotune: {a / zt:.2f}x faster than the tutorial loop, {zt / b:.2f}x the hand-written loop's time.",
        ]
    return lines


def image_folder_figures(folder: str, work: str) -> list[str]:
    cache = tempfile.mkdtemp(prefix="zerotune-cache-", dir=work)
    first, second = setup_seconds(folder, cache), setup_seconds(folder, cache)
    plan = make_plan("folder", folder, "cpu", 0)
    start_cold = time_zerotune(plan, work, target=2.0)  # a fresh cache
    start_warm = time_zerotune(plan, work, target=2.0, cache_dir=cache)
    n = sum(1 for _ in Path(folder).glob("*/*"))
    return [
        f"Image folder {folder} ({n} files) at 32x32, `cifar10_fast`'s datamodule:",
        "",
        "| | empty cache (first run) | cache filled (second run) |",
        "|---|---|---|",
        f"| `setup()` s | {first['SETUP'][0]:.2f} | {second['SETUP'][0]:.2f} |",
        f"| peak RSS after `setup()` MB | {first['MAXRSS_MB']:.0f} | {second['MAXRSS_MB']:.0f} |",
        f"| command to first training step s | {start_cold['FIRST_STEP']:.2f} | {start_warm['FIRST_STEP']:.2f} |",
        f"| peak RSS at first training step MB | {start_cold['MAXRSS_MB']:.0f} | {start_warm['MAXRSS_MB']:.0f} |",
    ]


def write_section(path: Path, lines: list[str]) -> None:
    """Put ``lines`` between the real-data markers of ``path`` (appended when absent), keeping everything else."""
    text = path.read_text() if path.is_file() else "# Benchmark\n"
    block = f"{SECTION_START}\n" + "\n".join(lines) + f"\n{SECTION_END}"
    pattern = re.compile(re.escape(SECTION_START) + r".*?" + re.escape(SECTION_END), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
    path.write_text(text.rstrip("\n") + "\n")


def keep_section(path: Path, text: str) -> str:
    """``text`` (a freshly generated benchmark page) with the real-data section of the existing ``path`` kept."""
    old = path.read_text() if path.is_file() else ""
    match = re.search(re.escape(SECTION_START) + r".*?" + re.escape(SECTION_END), old, re.S)
    return text.rstrip("\n") + "\n\n" + match.group(0) + "\n" if match else text


def run(data_dir: str | None, image_folder: str | None, device: str, workers: int, out: str, machine: str) -> int:
    """The real-data mode: time-to-accuracy tables and image-folder figures, printed and written to ``out``."""
    work = tempfile.mkdtemp(prefix="zerotune-bench-real-")
    lines = ["## Real data", "", f"Measured on: {machine}, device `{device}`.", ""]
    print("\n".join(lines), flush=True)
    for kind, path in (("mnist", data_dir), ("folder", image_folder)):
        if path:
            lines += [*time_to_accuracy(kind, path, device, workers, work), ""]
            print("\n".join(lines[-8:]), flush=True)
    if image_folder:
        lines += image_folder_figures(image_folder, work)
        print("\n".join(lines[-8:]), flush=True)
    if out:
        write_section(Path(out), lines)
        print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "setup":
        _setup_main(sys.argv[2])
    else:
        print("usage: python -m experiments.benchmarks.real setup FOLDER (the benchmark: python -m experiments.bench)")
        sys.exit(2)
