"""Resuming on another number of processes: the global batch kept, the position within the epoch carried over.

:class:`GlobalBatch`, a callback every launcher run has, records the run's batch geometry in each checkpoint and
carries a restored checkpoint's position within the epoch over to the geometry the launcher chose
(:func:`plan_resize`).

A checkpoint records its run's batch geometry: the batch of one process, the number of processes and the batches
accumulated per optimizer step (their product is the *global batch*, the samples of one step). A run resumed on
another number of processes (2 GPUs -> 1, 1 node -> 4) keeps that global batch: it changes the gradient
accumulation where it can, else the batch of each process, and says so in one line. Because zerotune's loaders
share each global batch out among the processes (rank ``r`` takes every ``W``-th sample of it), the resumed run's
steps take exactly the samples the interrupted run's would have; the position within the epoch is carried over
by samples, or, when the samples done cannot be cut into whole batches of the new geometry, the epoch starts again
and the run says so.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

import lightning as L

#: Key of the geometry in a checkpoint.
GEOMETRY_KEY = "zerotune_batch_geometry"


@runtime_checkable
class BatchSized(Protocol):
    """A datamodule whose training batches hold ``batch_size`` samples per process (every zerotune datamodule)."""

    batch_size: int


@dataclass(frozen=True)
class BatchGeometry:
    """How many samples one optimizer step takes.

    Attributes:
        batch_size: Samples per batch of one process (``data.batch_size``).
        world_size: Processes (``trainer.num_nodes`` x ``trainer.devices``).
        accumulate: Batches accumulated per optimizer step (``trainer.accumulate_grad_batches``).
    """

    batch_size: int
    world_size: int
    accumulate: int

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size * self.accumulate

    @property
    def per_batch(self) -> int:
        """Samples all processes take together in one batch (one micro-step of an accumulated step)."""
        return self.batch_size * self.world_size

    def describe(self) -> str:
        processes = f"{self.world_size} process{'es' if self.world_size != 1 else ''}"
        batches = f" x {self.accumulate} batches" if self.accumulate != 1 else ""
        return f"{self.global_batch} samples ({self.batch_size} per process x {processes}{batches})"

    def as_dict(self) -> dict[str, int]:
        return {"batch_size": self.batch_size, "world_size": self.world_size, "accumulate": self.accumulate}

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping[str, Any]) -> BatchGeometry | None:
        """The geometry a checkpoint recorded (``None`` for checkpoints written before it was recorded)."""
        saved = checkpoint.get(GEOMETRY_KEY) if isinstance(checkpoint, Mapping) else None
        if not isinstance(saved, Mapping):
            return None
        try:
            return cls(int(saved["batch_size"]), int(saved["world_size"]), int(saved["accumulate"]))
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class Resize:
    """How a resumed run's geometry differs from its checkpoint's, and what it does about it.

    Attributes:
        saved: The checkpoint's geometry.
        new: The geometry the resumed run trains with.
        note: The one line that says so.
    """

    saved: BatchGeometry
    new: BatchGeometry
    note: str

    @property
    def changed(self) -> bool:
        return self.saved != self.new

    def batches_done(self, saved_batches: int) -> int | None:
        """This process's batches of the epoch already done, in the new geometry, for ``saved_batches`` in the old;
        ``None`` when the samples done are no whole number of the new batches (the epoch then starts again)."""
        samples = saved_batches * self.saved.per_batch
        if samples % self.new.per_batch:
            return None
        done = samples // self.new.per_batch
        # A checkpoint between two optimizer steps maps onto the same step boundary in the new geometry.
        steps_old, partial_old = divmod(saved_batches, self.saved.accumulate)
        if partial_old == 0 and done % self.new.accumulate:
            return None
        return done

    def count_scale(self, count: int) -> int | None:
        """A count of batches (``val_check_interval``, ``limit_train_batches``) in the new geometry's batches, so it
        means the same samples; ``None`` when it is no whole number of them."""
        samples = count * self.saved.per_batch
        return samples // self.new.per_batch if samples % self.new.per_batch == 0 else None


def plan_resize(saved: BatchGeometry, now: BatchGeometry, can_set_batch_size: bool = True) -> Resize:
    """The geometry to resume a run of ``saved`` with, when this run's settings give ``now``.

    Same number of processes: ``now`` as it is (a batch or accumulation changed on the command line is said).
    Another number: the global batch is kept by the accumulation (each process's batch, and memory, stay), else by
    each process's batch (``can_set_batch_size``), else it changes, and the note says to what. Settings given anew on
    the command line (a batch or an accumulation other than the checkpoint's) are kept as given.
    """
    if now == saved:
        return Resize(saved, now, "")
    moved = now.world_size != saved.world_size
    given = now.batch_size != saved.batch_size or now.accumulate != saved.accumulate
    new = now
    if moved and not given:
        if saved.global_batch % (saved.batch_size * now.world_size) == 0:
            new = replace(now, accumulate=saved.global_batch // (saved.batch_size * now.world_size))
        elif can_set_batch_size and saved.global_batch % (now.world_size * saved.accumulate) == 0:
            new = replace(now, batch_size=saved.global_batch // (now.world_size * saved.accumulate))
    was = f"a run of {saved.world_size} process{'es' if saved.world_size != 1 else ''}"
    if new.global_batch == saved.global_batch:
        what = []
        if new.accumulate != saved.accumulate:
            what.append(f"gradient accumulation {saved.accumulate} -> {new.accumulate}")
        if new.batch_size != saved.batch_size:
            what.append(f"batch per process {saved.batch_size} -> {new.batch_size}")
        keeps = f"{' and '.join(what)} keeps" if what else "keeps"
        note = f"resuming {was} on {new.world_size}: {keeps} the global batch at {new.describe()}"
    else:
        note = (
            f"resuming {was} on {new.world_size}: the global batch changes from {saved.describe()} to "
            f"{new.describe()}; the learning-rate schedule, counted in steps, now sees other steps"
        )
        if not moved:
            note = note.replace(f"{was} on {new.world_size}", f"{was} with other batch settings")
    return Resize(saved, new, note)


def remap_progress(loops: dict[str, Any], resize: Resize) -> str:
    """Carry a checkpoint's position within the epoch over to the new geometry, in place; returns what it did.

    ``loops`` is a Lightning checkpoint's ``loops``: the fit loop's batch counters and the train loader's state
    (``{"epoch", "batches"}``, see :class:`datamodules.base.BatchLoader`) are rescaled to the new batches; the
    optimizer-step counters, the epoch and the global step stay.
    """
    fit = loops.get("fit_loop", {})
    progress = fit.get("epoch_loop.batch_progress")
    loaders = fit.get("state_dict", {}).get("combined_loader") or []
    if not isinstance(progress, dict) or not loaders:
        return ""
    current, total = progress["current"], progress["total"]
    done = resize.batches_done(int(current["ready"]))
    restart = done is None
    if restart:
        done = 0
    # Batches of earlier epochs, in new batches too (Lightning counts validation intervals over them).
    earlier = int(total["ready"]) - int(current["ready"])
    earlier = resize.count_scale(earlier) if resize.count_scale(earlier) is not None else earlier
    for counts, base in ((current, 0), (total, earlier)):
        lag = {k: int(counts["ready"]) - int(v) for k, v in counts.items()}  # completed trails ready mid-step
        for key in counts:
            counts[key] = base + (max(0, done - lag[key]) if not restart else 0)
    for state in loaders:
        if isinstance(state, dict) and "batches" in state:
            state["batches"] = done
    if restart:
        progress["is_last_batch"] = False
        return "the samples done in this epoch are no whole number of the new batches: the epoch starts again"
    return ""


class GlobalBatch(L.Callback):
    """Records the run's batch geometry in every checkpoint; maps a restored checkpoint's position within the epoch
    onto the geometry of a run resumed on another number of processes.

    Attributes:
        resize: Set by the launcher when the checkpoint it restores has another geometry than this run.
    """

    def __init__(self) -> None:
        self.resize: Resize | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        dm = trainer.datamodule
        if isinstance(dm, BatchSized):
            geometry = BatchGeometry(dm.batch_size, trainer.world_size, trainer.accumulate_grad_batches)
            checkpoint[GEOMETRY_KEY] = geometry.as_dict()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Carry the position within the epoch over (Lightning restores its loops from ``checkpoint`` after this)."""
        if self.resize is None or not self.resize.changed or not isinstance(checkpoint.get("loops"), dict):
            return
        note = remap_progress(checkpoint["loops"], self.resize)
        if note and trainer.is_global_zero:
            print(f"note: {note}", file=sys.stderr)
