"""The fine-tuning race: a plain Hugging Face transformers loop against zerotune's recipe, same model and work.

Both sides fine-tune the same pre-trained encoder folder (``BertForSequenceClassification``: the encoder, its
pooler and a fresh linear head) on the same GLUE-layout data (SST-2), with the same batch size, token cap, optimizer
(AdamW, weight decay 0.01), learning rate, schedule (6% linear warmup, then linear decay to 0), gradient clipping
(1.0) and number of optimizer steps, and measure dev accuracy every ``eval_every`` steps against wall time from the
side's first line (model, tokenizer and data loading included; evaluation included, the same for both).

(a) :func:`transformers_loop` is the loop the Hugging Face course teaches: ``AutoTokenizer`` and
``AutoModelForSequenceClassification`` from the folder, a shuffled ``DataLoader`` whose collate function calls
``tokenizer(texts, padding=True, truncation=True, max_length=...)`` (dynamic padding to the batch's longest text),
cross-entropy from the model, ``clip_grad_norm_``, AdamW and ``get_linear_schedule_with_warmup``.

(b) :func:`zerotune_recipe` launches the ``sst2_minilm`` experiment through :mod:`experiments.api` with those
settings: the same computation per token, but batches drawn by length (little padding to compute on) and cut to
their longest text.

transformers is not a dependency of zerotune; the race needs it installed (``pip install transformers``).
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch

from experiments.api import launch


@dataclass
class RaceSettings:
    """What both sides share.

    Attributes:
        model: The pre-trained model folder (or ``hf:ORG/NAME``).
        data_dir: A folder with ``train.tsv`` and ``dev.tsv`` (GLUE's layout: ``sentence<TAB>label``).
        steps: Optimizer steps.
        batch_size: Texts per step.
        max_length: Token cap per text (special tokens included).
        lr: Peak learning rate.
        eval_every: Steps between dev evaluations (and one at the end).
        seed: Seed of the head's initialization and of the data order.
    """

    model: str
    data_dir: str
    steps: int = 600
    batch_size: int = 32
    max_length: int = 64
    lr: float = 1e-4
    eval_every: int = 100
    seed: int = 0


@dataclass
class Curve:
    """One side's dev accuracy against wall time: ``points`` of ``(step, seconds, accuracy)``."""

    name: str
    points: list[tuple[int, float, float]] = field(default_factory=list)

    @property
    def final(self) -> tuple[int, float, float]:
        """The last evaluation: ``(step, seconds, accuracy)``."""
        return self.points[-1]

    def time_to(self, accuracy: float) -> float | None:
        """Seconds until dev accuracy first reached ``accuracy``; ``None`` if it never did."""
        return next((s for _, s, a in self.points if a >= accuracy - 1e-9), None)


def read_glue(path: Path) -> tuple[list[str], list[int]]:
    """Sentences and 0/1 labels of a GLUE ``.tsv`` (``sentence<TAB>label`` with a header)."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["sentence"] for r in rows], [int(r["label"]) for r in rows]


def transformers_loop(settings: RaceSettings) -> Curve:
    """(a): the plain transformers fine-tuning loop; its dev accuracy every ``eval_every`` steps."""
    start = time.perf_counter()
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    transformers.logging.set_verbosity_error()
    torch.manual_seed(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(settings.model)
    model = AutoModelForSequenceClassification.from_pretrained(settings.model, num_labels=2)
    texts, labels = read_glue(Path(settings.data_dir) / "train.tsv")
    dev_texts, dev_labels = read_glue(Path(settings.data_dir) / "dev.tsv")

    def collate(rows: list[tuple[str, int]]) -> dict[str, torch.Tensor]:
        batch = tokenizer([t for t, _ in rows], padding=True, truncation=True, max_length=settings.max_length,
                          return_tensors="pt")  # fmt: skip
        batch["labels"] = torch.tensor([y for _, y in rows])
        return batch

    generator = torch.Generator().manual_seed(settings.seed)
    loader = torch.utils.data.DataLoader(
        list(zip(texts, labels, strict=True)), batch_size=settings.batch_size, shuffle=True, collate_fn=collate,
        generator=generator,
    )  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.06 * settings.steps), settings.steps)

    def evaluate() -> float:
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(dev_texts), 128):
                batch = collate(list(zip(dev_texts[i : i + 128], dev_labels[i : i + 128], strict=True)))
                correct += int((model(**batch).logits.argmax(-1) == batch["labels"]).sum())
        model.train()
        return correct / len(dev_texts)

    curve = Curve("transformers loop")
    model.train()
    step = 0
    while step < settings.steps:
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            if step % settings.eval_every == 0 or step == settings.steps:
                curve.points.append((step, time.perf_counter() - start, evaluate()))
                print(f"  transformers loop: step {step}, dev acc {curve.final[2]:.4f}, {curve.final[1]:.0f} s")
            if step == settings.steps:
                break
    return curve


class DevCurve(L.Callback):
    """Records ``val/acc`` with the wall time since ``start`` at every validation (the sanity check left out)."""

    def __init__(self, curve: Curve, start: float, clock: Callable[[], float] = time.perf_counter) -> None:
        self.curve, self.start, self.clock = curve, start, clock

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        acc = trainer.callback_metrics.get("val/acc")
        if trainer.sanity_checking or acc is None or trainer.global_step == 0:
            return
        self.curve.points.append((trainer.global_step, self.clock() - self.start, float(acc)))
        print(f"  zerotune: step {trainer.global_step}, dev acc {float(acc):.4f}, {self.curve.final[1]:.0f} s")


def zerotune_recipe(settings: RaceSettings, runs_dir: str | Path, experiment: str = "sst2_minilm") -> Curve:
    """(b): zerotune's recipe with the race's settings; its dev accuracy every ``eval_every`` steps."""
    start = time.perf_counter()
    curve = Curve("zerotune")
    launch(
        experiment,
        {
            "model.pretrained": settings.model,
            "data.data_dir": settings.data_dir,
            "model.lr": settings.lr,
            "data.batch_size": settings.batch_size,
            "data.block_size": settings.max_length,
            "trainer.max_steps": settings.steps,
            # The schedule's 6% warmup: warmup_epochs counts epochs of steps / max_epochs steps.
            "trainer.max_epochs": 1,
            "model.warmup_epochs": 0.06,
            "trainer.val_check_interval": settings.eval_every,
            "seed_everything": settings.seed,
            "test_after_fit": False,
            "onnx.enabled": False,
        },
        runs_dir=runs_dir,
        name="race",
        callbacks=[DevCurve(curve, start)],
    )
    return curve


def table(curves: list[Curve], target: float | None = None) -> str:
    """Markdown: per side, final step, wall time and dev accuracy, time to 90% and to ``target`` (default: the
    first side's final accuracy)."""
    target = curves[0].final[2] if target is None else target
    lines = [
        f"| side | steps | wall time (s) | final dev acc | time to 90% (s) | time to {target:.2%} (s) |",
        "|---|---|---|---|---|---|",
    ]
    for c in curves:
        step, seconds, acc = c.final
        t90, tt = c.time_to(0.90), c.time_to(target)
        show = lambda t: "not reached" if t is None else f"{t:.0f}"  # noqa: E731
        lines.append(f"| {c.name} | {step} | {seconds:.0f} | {acc:.2%} | {show(t90)} | {show(tt)} |")
    return "\n".join(lines)


def plot(curves: list[Curve], path: Path) -> None:
    """Dev accuracy against wall time, one line per side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c in curves:
        ax.plot([s for _, s, _ in c.points], [a for _, _, a in c.points], marker="o", label=c.name)
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("SST-2 dev accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_points(curves: list[Curve], path: Path) -> None:
    """Every evaluation of both sides as CSV: ``side,step,seconds,dev_acc``."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["side", "step", "seconds", "dev_acc"])
        for c in curves:
            writer.writerows([c.name, step, f"{s:.2f}", f"{a:.4f}"] for step, s, a in c.points)


def ratio(loop: Curve, ours: Curve) -> float:
    """zerotune's time to the loop's final accuracy over the loop's wall time (``inf`` if never reached)."""
    reached = ours.time_to(loop.final[2])
    return math.inf if reached is None else reached / loop.final[1]
