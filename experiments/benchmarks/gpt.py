"""GPT benchmarks: zerotune's tokens/s against a hand-written nanoGPT-style loop, and the race to validation loss 1.88
on Tiny Shakespeare against nanoGPT's CPU recipe. Part of ``python -m experiments.bench``; runs alone too:

    python -m experiments.bench_gpt [--shakespeare FILE] [--seconds 8] [--skip speed race] [--out FILE]

**Speed.** The same GPT (each language-model config's model and batch) trains on the same data two ways:
(b) ``hand``: nanoGPT's training loop written out: the token array in memory, random windows gathered by
index, forward, loss, backward, clipping at 1.0, AdamW, the learning rate set by hand each step, the loss read every
``log_every_n_steps`` steps; (c) ``zerotune``: the experiment's config through the launcher's CLI and Trainer with
its default callbacks (validation off). Steady-state tokens/s after warm-up steps.

**Race.** Two commands, each timed from its start to each validation and to its exit, one after the other:

1. ``python -m experiments.benchmarks.nanogpt``: nanoGPT's published CPU recipe for Tiny Shakespeare, re-implemented
   line by line in plain PyTorch (see that module); nanoGPT itself cannot be fetched without a network.
2. ``python -m experiments.run shakespeare_char_gpt``: zerotune's recipe, exact validation loss over the whole
   validation split every 250 steps, with every default feature (checkpoints, TensorBoard, samples, ONNX export
   and test at the end).

Run the benchmark alone on the machine (``flock -x``): the figures are wall-clock times.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from experiments.launcher.launch import command_line

SPEED_EXPERIMENTS = ["shakespeare_char_gpt", "stdlib_gpt"]
TARGET = 1.88
WARMUP = 5
SHAKESPEARE = "data/tinyshakespeare/input.txt"


# -- tokens/s: the hand-written loop and zerotune ---------------------------------------------------------------
def _config(name: str) -> dict:
    from experiments.launcher.recipes import read_recipe

    return read_recipe(name)


def _datamodule(name: str, data_path: str | None, data_dir: str):
    from datamodules import TextDataModule

    args = dict(_config(name)["data"]["init_args"])
    args.pop("url", None)
    if data_path:
        args["path"] = data_path
    dm = TextDataModule(**args, data_dir=data_dir)
    dm.setup()
    return dm


def _model(name: str, dm):
    from lightning_models import GPT

    args = dict(_config(name)["model"]["init_args"])
    return GPT(vocab_size=dm.vocab_size, block_size=dm.block_size, **args)


def run_hand(name: str, data_path: str | None, steps: int, data_dir: str) -> float:
    """(b) nanoGPT's loop on the config's model and batch; returns seconds for ``steps`` steps after warm-up."""
    from lightning_models.language_model import warmup_cosine

    dm = _datamodule(name, data_path, data_dir)
    model = _model(name, dm).train()
    hp = model.hparams
    opt = model.build_optimizer()
    factor = warmup_cosine(hp.warmup_steps, WARMUP + steps, hp.min_lr_ratio)
    data = torch.from_numpy(dm.tokens["train"].astype(np.int32))
    span = torch.arange(dm.block_size + 1)
    log_every = 10
    for step in range(WARMUP + steps):
        if step == WARMUP:
            start = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = hp.lr * factor(step)
        windows = data[torch.randint(len(data) - dm.block_size, (dm.batch_size,))[:, None] + span].long()
        loss = model.compute_loss(model(windows[:, :-1]), windows[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % log_every == 0:
            loss.item()
    return time.perf_counter() - start


class StepTimer(L.Callback):
    """Times training steps ``WARMUP .. WARMUP + steps`` of a Lightning fit."""

    def __init__(self, steps: int) -> None:
        self.steps, self.start, self.seconds = steps, 0.0, float("nan")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == WARMUP:
            self.start = time.perf_counter()
        elif trainer.global_step == WARMUP + self.steps:
            self.seconds = time.perf_counter() - self.start
            trainer.should_stop = True


def run_zerotune(name: str, data_path: str | None, steps: int, data_dir: str, runs_dir: str) -> float:
    """(c) the experiment through zerotune's CLI and Trainer, default callbacks, validation off; returns seconds."""
    from experiments.api import build

    timer = StepTimer(steps)
    settings = {
        "data.data_dir": data_dir,
        "trainer.max_steps": WARMUP + steps + 1,
        "trainer.limit_val_batches": 0,
        "trainer.num_sanity_val_steps": 0,
        **({"data.path": data_path} if data_path else {}),
    }
    run = build(name, settings, runs_dir=runs_dir, callbacks=[timer])
    with open(os.devnull, "w") as void, contextlib.redirect_stdout(void), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*could not find the monitored key.*")
        run.trainer.fit(run.model, datamodule=run.datamodule)
    return timer.seconds


def speed(name: str, data_path: str | None, seconds: float, work: str) -> str:
    """A table row: tokens/s of the hand loop and of zerotune, and their ratio."""
    data_dir = f"{work}/data"
    probe = run_hand(name, data_path, 3, data_dir) / 3
    steps = max(20, int(seconds / probe))
    hand = run_hand(name, data_path, steps, data_dir)
    zero = run_zerotune(name, data_path, steps, data_dir, f"{work}/runs")
    dm = _datamodule(name, data_path, data_dir)
    tokens = steps * dm.batch_size * dm.block_size
    return (
        f"| {name} | {dm.batch_size} x {dm.block_size} | {steps} | {1000 * hand / steps:.1f} | {tokens / hand:.0f} "
        f"| {tokens / zero:.0f} | {hand / zero:.3f}x |"
    )


# -- the race ------------------------------------------------------------------------------------------------------
class ValLossProbe(L.Callback):
    """Prints ``EVAL step val/loss wall-clock`` after every validation (read by :func:`race`)."""

    def on_validation_end(self, trainer, pl_module) -> None:
        loss = trainer.callback_metrics.get("val/loss")
        if not trainer.sanity_checking and loss is not None:
            print(f"\nEVAL {trainer.global_step} {float(loss):.4f} {time.time()}", flush=True)


def _timed(cmd: list[str]) -> tuple[float, list[tuple[int, float, float]], str]:
    """Run ``cmd``; returns its wall seconds, ``(step, val loss, seconds since the start)`` per evaluation it
    printed (``EVAL step loss time``), and its output."""
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    wall = time.time() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    found = re.findall(r"(?m)^EVAL (\d+) (\S+) (\S+)$", proc.stdout)
    return wall, [(int(s), float(v), float(t) - start) for s, v, t in found], proc.stdout


#: The zerotune side of the race: a label and launcher settings added to ``shakespeare_char_gpt``'s own.
RACE_RECIPES: list[tuple[str, dict[str, Any]]] = [
    ("zerotune, nanoGPT's recipe (lr 1e-3, 2,000 steps)", {"model.lr": 0.001, "trainer.max_steps": 2000}),
    ("zerotune, `shakespeare_char_gpt` (lr 3e-3, 1,500 steps)", {}),
]


def race(
    data: str, work: str, recipes: list[tuple[str, dict[str, Any]]] | None = None, nano_iters: int = 2000
) -> list[str]:
    """nanoGPT's recipe (re-implemented), then each zerotune recipe, one after the other; Markdown rows.

    Time to the target is read on each side's own validation loss (nanoGPT's 20-batch estimate, zerotune's exact
    loss over the whole split); the final column is the exact loss of the last model on the whole split for both.
    """
    py = sys.executable
    nano = [py, "-m", "experiments.benchmarks.nanogpt", "--data", data, "--out_dir", f"{work}/nanogpt", "--max_iters",
            str(nano_iters)]  # fmt: skip
    wall, evals, out = _timed(nano)
    results = [("nanoGPT CPU recipe, re-implemented", wall, evals, float(re.findall(r"(?m)^EXACT (\S+)$", out)[-1]))]
    for i, (label, extra) in enumerate(RACE_RECIPES if recipes is None else recipes):
        settings = {"data.path": data, "runs_dir": f"{work}/runs{i}", "data.data_dir": f"{work}/data", **extra}
        # The command a user types, timed in a process of its own; the probe is appended to the default callbacks.
        cmd = [py, "-m", "experiments.run", *command_line("shakespeare_char_gpt", settings),
               "--trainer.callbacks+=experiments.benchmarks.gpt.ValLossProbe"]  # fmt: skip
        wall, evals, _ = _timed(cmd)
        results.append((label, wall, evals, evals[-1][1]))
    rows = []
    for label, wall, evals, final in results:
        reached = next(((s, t) for s, v, t in evals if v <= TARGET), None)
        at = f"{reached[1]:.1f} s (step {reached[0]})" if reached else "not reached"
        curve = ", ".join(f"{s}: {v:.3f}" for s, v, _ in evals)
        rows.append(f"| {label} | {wall:.1f} | {at} | {final:.4f} | {curve} |")
    return rows


def section(seconds: float, work: str, shakespeare: str | None, skip: list[str]) -> list[str]:
    """The GPT part of ``experiments.bench``'s report (Markdown lines)."""
    lines: list[str] = []
    data = shakespeare if shakespeare and Path(shakespeare).is_file() else None
    if "speed" not in skip:
        lines += [
            "",
            "| GPT experiment | batch x block | steps | (b) hand loop ms/step | (b) tokens/s | (c) zerotune tokens/s "
            "| (c)/(b) |",
            "|---|---|---|---|---|---|---|",
        ]
        print("\n".join(lines[-3:]), flush=True)
        for name in SPEED_EXPERIMENTS:
            if name == "shakespeare_char_gpt" and data is None:
                continue
            lines.append(speed(name, data if name == "shakespeare_char_gpt" else None, seconds, work))
            print(lines[-1], flush=True)
    if "race" not in skip:
        if data is None:
            lines += ["", f"Race to validation loss {TARGET}: skipped, no Tiny Shakespeare file (--shakespeare)."]
        else:
            lines += [
                "",
                f"| Tiny Shakespeare, to validation loss {TARGET} | wall s (whole command) | time to {TARGET} "
                "| final val loss (exact) | val loss by step |",
                "|---|---|---|---|---|",
            ]
            print("\n".join(lines[-3:]), flush=True)
            for row in race(data, work):
                lines.append(row)
                print(row, flush=True)
    return lines
