"""Pre-train -> fine-tune demo: a GPT pre-trained on the standard library, fine-tuned on a package it never saw.

    python -m experiments.finetune_demo [--seeds 0 1 2] [--pretrained CKPT] [--steps 150] [--runs_dir runs]

1. Pre-training (once, seed 0; skipped with ``--pretrained``): ``stdlib_gpt``, the standard library's source with
   the ``email`` package held out, ``--pretrain_steps`` optimizer steps.
2. Language-model transfer, per seed: ``email_gpt_finetune`` on the email package alone (split by file by the
   seed), the same number of steps four ways: ``full`` fine-tuning, ``partial`` (embeddings and the first 2 of 4
   blocks frozen), ``lora`` (rank 8 adapters on every attention and MLP layer) from the pre-trained weights, and
   from ``scratch`` (same model, the pre-trained tokenizer, random weights). Each method has its own learning rate
   (:data:`METHODS`, chosen on seed 0 from short sweeps). Reported: best validation loss and perplexity, the test
   loss, trainable parameters, peak memory (GPU: allocated; CPU: resident memory above the process's level before
   the run) and wall time of each run.
3. Classification transfer, per seed: ``stdlib_classifier`` (which of 8 packages a 12-line snippet comes from) from
   ``--per_class`` training snippets per class, fine-tuned from the pre-trained GPT against the same classifier from
   scratch, plus a linear probe (logistic regression on the frozen pre-trained features).

Why this size: the demo model is ``stdlib_gpt`` itself (4 layers, 128 wide, BPE of 4,096 tokens, 128-token context,
1.3M parameters), so pre-training takes minutes on two CPU cores; the email package is about 100,000 tokens, so
150 steps of 32 x 128 tokens are about six passes over it: enough for the from-scratch model to learn its vocabulary
and for every method to settle, and far too little data for a model from scratch to catch up with one that has
already read ~3 million tokens of Python.

ONNX export, dashboards, text samples and progress bars are off to keep the runs short; every run folder is printed.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import statistics
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from experiments.demos.common import launch_shown
from experiments.rundir import console

if TYPE_CHECKING:
    from experiments.launcher.launch import RunResult


#: Fine-tuning methods of the language-model transfer: launcher settings (learning rates chosen on seed 0).
METHODS: dict[str, dict[str, Any]] = {
    "full": {"model.finetune": "full", "model.lr": 0.001},
    "partial": {"model.finetune": "partial", "model.freeze_blocks": 2, "model.lr": 0.001},
    "lora": {"model.finetune": "lora", "model.lora_targets": ["attn.qkv", "attn.proj", "mlp"], "model.lr": 0.003},
    "scratch": {"model.lr": 0.002},
}
#: Settings every demo run shares: no export, figures or progress bars.
QUIET: dict[str, Any] = {
    "progress_bar.refresh_rate": 0,
    "onnx.enabled": False,
    "dashboards.enabled": False,
    "samples.enabled": False,
    "attention.enabled": False,
}


@dataclass
class MethodResult:
    """One fine-tuning run of the language-model transfer."""

    seed: int
    method: str
    val_loss: float
    test_loss: float
    trainable: int
    total: int
    peak_mb: float
    seconds: float
    run_dir: str


@dataclass
class ClassifyResult:
    """One seed of the classification transfer (test accuracies)."""

    seed: int
    pretrained: float
    scratch: float
    probe: float
    classes: int
    run_dirs: list[str] = field(default_factory=list)


class PeakMemory:
    """Peak memory while the block runs: on a GPU the peak allocated by torch; on the CPU the peak resident set of
    the process (sampled every 5 ms) above its level at the start, after returning freed memory to the system."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.bytes = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.cuda:
            import torch

            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed memory otherwise; elsewhere a no-op
        self._base = self._peak = _rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, _rss())

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            import torch

            self.bytes = torch.cuda.max_memory_allocated() - self._base
            return
        self._stop.set()
        self._thread.join()
        self.bytes = max(self._peak, _rss()) - self._base


def _rss() -> int:
    """Resident set size of this process in bytes (Linux ``/proc``; the peak so far elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def pretrain(steps: int, runs_dir: str, extra: Mapping[str, Any]) -> Path:
    """Pre-train ``stdlib_gpt`` (the held-out package left out by its data settings); returns its last checkpoint."""
    settings = {"trainer.max_steps": steps, "data.exclude": ["email"], **QUIET, **extra}
    result = launch_shown("stdlib_gpt", settings, runs_dir)
    ckpt = result.run_dir / "checkpoints" / "last.ckpt" if result.run_dir is not None else None
    if ckpt is None or not ckpt.is_file():
        raise console.UsageError("the pre-training run saved no last.ckpt to fine-tune from")
    return ckpt


def finetune(
    method: str, seed: int, weights: Path, steps: int, runs_dir: str, extra: Mapping[str, Any]
) -> MethodResult:
    """One ``email_gpt_finetune`` run: ``method`` from ``weights`` (``scratch``: random weights, same tokenizer)."""
    from lightning_models.peft import count_parameters

    settings = {
        "seed_everything": seed,
        "data.seed": seed,
        "trainer.max_steps": steps,
        "data.tokenizer_path": str(weights),
        **METHODS[method],
        **({} if method == "scratch" else {"model.pretrained": str(weights)}),
        **QUIET,
        **extra,
    }
    start = time.perf_counter()
    with PeakMemory(_cuda()) as memory:
        result = launch_shown("email_gpt_finetune", settings, runs_dir, name=f"email_gpt_{method}")
    seconds = time.perf_counter() - start
    trainable, total = count_parameters(result.model)
    best = result.report.best
    return MethodResult(
        seed=seed,
        method=method,
        val_loss=best.score if best is not None and best.score is not None else float("nan"),
        test_loss=result.test_metrics.get("test/loss", float("nan")),
        trainable=trainable,
        total=total,
        peak_mb=memory.bytes / 2**20,
        seconds=seconds,
        run_dir=str(result.run_dir),
    )


def classify(seed: int, weights: Path, per_class: int, runs_dir: str, extra: Mapping[str, Any]) -> ClassifyResult:
    """``stdlib_classifier`` from ``per_class`` snippets per class: pre-trained, from scratch, and a linear probe."""
    common = {
        "seed_everything": seed,
        "data.seed": seed,
        "data.train_per_class": per_class,
        "data.tokenizer_path": str(weights),
        **QUIET,
        **extra,
    }
    tuned = launch_shown(
        "stdlib_classifier", {**common, "model.pretrained": str(weights)}, runs_dir, "stdlib_classifier_pretrained"
    )
    scratch = launch_shown("stdlib_classifier", common, runs_dir, "stdlib_classifier_scratch")
    return ClassifyResult(
        seed=seed,
        pretrained=tuned.test_metrics["test/acc"],
        scratch=scratch.test_metrics["test/acc"],
        probe=linear_probe(weights, scratch, seed),
        classes=scratch.model.num_classes,
        run_dirs=[str(tuned.run_dir), str(scratch.run_dir)],
    )


def linear_probe(weights: Path, target: RunResult, seed: int) -> float:
    """Test accuracy of a standardized logistic regression on the frozen pre-trained body's pooled features of the
    target run's training snippets: what the features alone know about the packages."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from lightning_models.finetune import load_pretrained

    cls = type(target.model)
    args = {k: v for k, v in target.model.hparams.items() if not k.startswith("_")}
    torch.manual_seed(seed)
    net = cls(**args)
    load_pretrained(net, weights, renames=cls.pretrained_key_map)
    net.eval()
    splits = target.datamodule.splits

    def features(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([net.features(b) for b in x.cpu().split(256)]).numpy()

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    clf.fit(features(splits["train"].x), splits["train"].y.numpy())
    return float(clf.score(features(splits["test"].x), splits["test"].y.numpy()))


def lm_report(results: list[MethodResult], steps: int) -> str:
    """The language-model table: one row per seed and method, then the mean per method and the per-seed margins."""
    import math

    lines = [
        "",
        f"language-model transfer: email package, {steps} fine-tuning steps (validation = held-out email files)",
        f"{'seed':>4}  {'method':<8} {'trainable':>10} {'share':>7}  {'val loss':>8} {'val ppl':>8} {'test loss':>9}"
        f"  {'vs scratch':>10}  {'peak MB':>7} {'time':>6}",
    ]
    scratch = {r.seed: r.val_loss for r in results if r.method == "scratch"}
    for r in results:
        gain = f"{scratch[r.seed] - r.val_loss:+.3f}" if r.method != "scratch" and r.seed in scratch else ""
        lines.append(
            f"{r.seed:>4}  {r.method:<8} {r.trainable:>10,} {100 * r.trainable / r.total:>6.2f}%  {r.val_loss:>8.3f} "
            f"{math.exp(r.val_loss):>8.1f} {r.test_loss:>9.3f}  {gain:>10}  {r.peak_mb:>7.0f} {r.seconds:>5.0f}s"
        )
    methods = list(dict.fromkeys(r.method for r in results))
    seeds = sorted({r.seed for r in results})
    if len(seeds) > 1:
        for m in methods:
            rs = [r for r in results if r.method == m]
            loss = statistics.mean(r.val_loss for r in rs)
            lines.append(
                f"{'mean':>4}  {m:<8} {rs[0].trainable:>10,} {100 * rs[0].trainable / rs[0].total:>6.2f}%  "
                f"{loss:>8.3f} {math.exp(loss):>8.1f} {statistics.mean(r.test_loss for r in rs):>9.3f}  {'':>10}  "
                f"{statistics.mean(r.peak_mb for r in rs):>7.0f} {statistics.mean(r.seconds for r in rs):>5.0f}s"
            )
    for m in methods:
        if m == "scratch" or not scratch:
            continue
        margins = [scratch[r.seed] - r.val_loss for r in results if r.method == m and r.seed in scratch]
        wins = sum(g > 0 for g in margins)
        lines.append(
            f"{m}: pre-trained beats scratch on {wins} of {len(margins)} seeds, validation loss lower by "
            f"{min(margins):.3f} to {max(margins):.3f} nats/token"
        )
    return "\n".join(lines)


def classify_report(results: list[ClassifyResult], per_class: int) -> str:
    """The classification table: test accuracy per seed, then the mean and how often fine-tuning won."""
    lines = [
        "",
        f"classification transfer: which of {results[0].classes} packages a snippet comes from, {per_class} training "
        "snippets per class (test accuracy)",
        f"{'seed':>4}  {'fine-tuned':>10}  {'from scratch':>12}  {'linear probe':>12}",
    ]
    for r in results:
        lines.append(f"{r.seed:>4}  {r.pretrained:>10.4f}  {r.scratch:>12.4f}  {r.probe:>12.4f}")
    if len(results) > 1:
        mean = [statistics.mean(getattr(r, k) for r in results) for k in ("pretrained", "scratch", "probe")]
        lines.append(f"{'mean':>4}  {mean[0]:>10.4f}  {mean[1]:>12.4f}  {mean[2]:>12.4f}")
        wins = sum(r.pretrained > r.scratch for r in results)
        lines.append(f"fine-tuned ahead of scratch on {wins} of {len(results)} seeds")
    return "\n".join(lines)


def run(
    seeds: list[int],
    runs_dir: str,
    steps: int,
    pretrained: Path | None = None,
    pretrain_steps: int = 1500,
    methods: list[str] | None = None,
    per_class: int = 64,
    parts: tuple[str, ...] = ("lm", "classify"),
    extra_lm: Mapping[str, Any] | None = None,
    extra_cls: Mapping[str, Any] | None = None,
) -> str:
    """The whole demo; returns the report. ``parts`` picks the language-model and/or classification transfer;
    ``extra_lm``/``extra_cls`` are launcher settings added to the language model runs (pre-training included) and
    to the classifier runs (tests make everything tiny with them)."""
    extra_lm, extra_cls = extra_lm or {}, extra_cls or {}
    weights = pretrained or pretrain(pretrain_steps, runs_dir, extra_lm)
    report = [f"pre-trained weights: {weights}"]
    if "lm" in parts:
        lm = [finetune(m, s, weights, steps, runs_dir, extra_lm) for s in seeds for m in methods or list(METHODS)]
        report.append(lm_report(lm, steps))
    if "classify" in parts:
        report.append(classify_report([classify(s, weights, per_class, runs_dir, extra_cls) for s in seeds], per_class))
    return "\n".join(report)
