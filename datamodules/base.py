"""In-memory datamodule base: each split is one tensor, batches are gathered by index on the training device.

Small datasets (digits, MNIST, CIFAR-10, tabular) fit in memory many times over. Decoding them once into one
tensor per split and gathering batches by index removes the per-sample Python work and worker processes that
dominate the run time of small models in the classic ``Dataset`` + ``DataLoader`` loop. Images stay ``uint8``
until a batch is gathered; normalization and augmentation then run on the whole batch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import lightning as L
import torch
from torch import Tensor

from datamodules.augment import random_affine, random_crop_flip
from fileio.atomic import atomic_write_text
from fileio.errors import DataError

if TYPE_CHECKING:
    from datamodules.tokenizer import Tokenizer

#: Key of the input description in a datamodule's ``state_dict`` (and so in every checkpoint Lightning writes).
INPUT_SPEC_KEY = "zerotune_input"


def image_affine(mean: Sequence[float], std: Sequence[float]) -> tuple[Tensor, Tensor]:
    """Per-channel float32 ``scale``/``shift`` ``(1, C, 1, 1)``: ``x * scale + shift == (x / 255 - mean) / std``.

    Computed in float64, then rounded once to float32: training batches, prediction and the exported ONNX graph
    use these same constants, so they normalize identically.
    """
    mean_t = torch.tensor(list(mean), dtype=torch.float64)
    std_t = torch.tensor(list(std), dtype=torch.float64)
    scale, shift = 1.0 / (255.0 * std_t), -mean_t / std_t
    return scale.float().view(1, -1, 1, 1), shift.float().view(1, -1, 1, 1)


@dataclass
class Split:
    """One split held in memory.

    Attributes:
        x: Samples, ``(N, *sample_shape)``; ``uint8`` for images (scaled to [0, 1] per batch), float otherwise.
        y: Targets, ``(N,)`` int64 class indices or ``(N,)`` float32 regression targets.
        lengths: For right-padded sequences, ``(N,)`` int64 real tokens of each; a batch is then cut to its longest
            sequence (dynamic padding), and training batches can be drawn by length (:class:`BatchLoader`).
    """

    x: Tensor
    y: Tensor
    lengths: Tensor | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def to(self, device: torch.device) -> Split:
        lengths = None if self.lengths is None else self.lengths.to(device, non_blocking=True)
        return Split(self.x.to(device, non_blocking=True), self.y.to(device, non_blocking=True), lengths)


class BatchLoader:
    """Iterates over a :class:`Split` in batches gathered by index; an iterable Lightning accepts as a dataloader.

    Each epoch's order is a permutation drawn from ``seed + epoch``, so a run is reproducible and a resumed run
    sees the same batches. Under DDP every rank takes a disjoint shard of that permutation: equally sized for
    training (padded by wrapping, as ``DistributedSampler``, so every rank takes the same number of steps), exact
    for evaluation (``pad_shards=False``: no sample is counted twice, so gathered metrics cover the split exactly).

    Args:
        split: The data, already on the target device.
        batch_size: Samples per batch.
        shuffle: Draw a new permutation each epoch (training) or keep file order (evaluation).
        drop_last: Drop the final short batch.
        transform: Called on each gathered ``x`` batch (normalization, augmentation); gets a generator for its
            randomness so augmentation is reproducible too.
        seed: Base seed of the permutations and augmentation.
        rank: This process's rank.
        world_size: Number of processes sharing the epoch.
        epoch_fn: Returns the current epoch (the trainer's), so permutations follow resumed runs.
        pad_shards: Under DDP, pad the shards to equal size by repeating samples; without it their sizes differ
            by at most one.
        bucket_batches: Length bucketing of a shuffled split with ``lengths``: each run of this many batches of
            the epoch's permutation is sorted by length and cut into batches, whose order is then shuffled, so a
            batch holds texts of similar length and little of it is padding (0 or 1: off). Every sample is still
            seen once per epoch, in an order drawn from the seed.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        transform=None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        epoch_fn=None,
        pad_shards: bool = True,
        bucket_batches: int = 0,
    ) -> None:
        self.split = split
        self.bucket_batches = bucket_batches
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.transform = transform
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch_fn = epoch_fn or (lambda: 0)
        self.pad_shards = pad_shards
        # Position in the current epoch, saved in checkpoints so a run resumed mid-epoch continues the same order.
        self._epoch = 0
        self._yielded = 0
        self._resume_from: dict[str, int] | None = None

    def _num_samples(self) -> int:
        n = len(self.split)
        if self.world_size == 1:
            return n
        if not self.pad_shards:
            return len(range(self.rank, n, self.world_size))
        # Every rank gets the same count so collective ops stay in step: pad by wrapping (as DistributedSampler).
        return -(-n // self.world_size)

    def __len__(self) -> int:
        n = self._num_samples()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def indices(self, epoch: int) -> Tensor:
        """This rank's sample indices for ``epoch``, on the split's device, shape ``(num_samples,)``."""
        n = len(self.split)
        device = self.split.x.device
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        if self.world_size > 1 and not self.pad_shards:
            order = order[self.rank :: self.world_size]
        elif self.world_size > 1:
            total = self._num_samples() * self.world_size
            if total > n:
                order = torch.cat([order, order[: total - n]])
            order = order[self.rank : total : self.world_size]
        return order.to(device)

    def _bucketed(self, order: Tensor, stop: int, lengths: Tensor, epoch: int) -> tuple[Tensor, list[int]]:
        """``order`` with each run of ``bucket_batches`` batches sorted by length, and the batch starts shuffled."""
        chunk = self.batch_size * self.bucket_batches
        kept = order[:stop]
        pieces = []
        for start in range(0, stop, chunk):
            piece = kept[start : start + chunk]
            pieces.append(piece[torch.argsort(lengths.index_select(0, piece), stable=True)])
        starts = torch.arange(0, stop, self.batch_size)
        g = torch.Generator().manual_seed(self.seed + 7919 * (epoch + 1) + self.rank)
        return torch.cat(pieces), starts[torch.randperm(len(starts), generator=g)].tolist()

    def state_dict(self) -> dict[str, int]:
        """Epoch and batches served so far; Lightning stores it in checkpoints (mid-epoch resume)."""
        return {"epoch": self._epoch, "batches": self._yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue the saved epoch where it stopped on the next iteration."""
        self._resume_from = dict(state)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch = self.epoch_fn()
        order = self.indices(epoch)
        gen = None
        if self.transform is not None:
            gen = torch.Generator(device=self.split.x.device)
            gen.manual_seed((self.seed + 1) * 1_000_003 + epoch * 97 + self.rank)
        skip = 0
        if self._resume_from is not None and self._resume_from.get("epoch") == epoch:
            skip = int(self._resume_from.get("batches", 0))
        self._resume_from = None
        self._epoch, self._yielded = epoch, 0
        stop = len(self) * self.batch_size if self.drop_last else len(order)
        starts = list(range(0, stop, self.batch_size))
        lengths = self.split.lengths
        if lengths is not None and self.shuffle and self.bucket_batches > 1:
            order, starts = self._bucketed(order, stop, lengths, epoch)
        for i, start in enumerate(starts):
            idx = order[start : start + self.batch_size]
            x = self.split.x.index_select(0, idx)
            y = self.split.y.index_select(0, idx)
            if lengths is not None:  # dynamic padding: the batch's columns past its longest sequence are all padding
                x = x[:, : max(1, int(lengths.index_select(0, idx).max()))]
            if self.transform is not None:
                # Skipped batches still draw their augmentation, so the generator is where it was.
                x = self.transform(x, gen)
            self._yielded = i + 1
            if i >= skip:
                yield x, y


class DataModule(L.LightningDataModule):
    """What every zerotune datamodule declares, with defaults, so that models, the launcher and the callbacks read
    it instead of probing for it.

    :class:`InMemoryDataModule` (images, tables, labelled texts) and :class:`~datamodules.text.TextDataModule`
    (corpora for language models) override what applies to their data.
    """

    #: Per-channel mean/std of uint8 image data scaled to [0, 1] (its normalization); ``None`` for other data.
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    #: Human-readable class names (class ``i`` is ``class_names[i]``), for dashboards and predictions; ``None`` when
    #: the targets are not classes or have no names.
    class_names: list[str] | None = None
    #: Size of the dataset's official training set (before validation is carved out), where it has one; ``None``
    #: for data without one.
    official_train_size: ClassVar[int | None] = None
    #: The tokenizer that turns the text into the model's token ids; ``None`` for data that is not text. A model
    #: reads it in ``setup``, checks it against pre-trained weights and keeps it in its checkpoints.
    tokenizer: Tokenizer | None = None

    def check_data(self) -> None:
        """Refuse data no run can learn from before the launcher creates a run folder (it calls this up front).

        The default checks nothing up front: the data is checked when it is set up.

        Raises:
            DataError: in subclasses, naming the file or setting at fault.
        """

    def save_tokenizer(self) -> None:
        """Save :attr:`tokenizer` as ``tokenizer.json`` in the run folder, beside the checkpoints (rank 0; nothing for
        data that is not text, or without a trainer)."""
        trainer = self.trainer
        if self.tokenizer is None or trainer is None or not trainer.is_global_zero or trainer.fast_dev_run:
            return
        logger = trainer.loggers[0] if trainer.loggers else None
        folder = logger.log_dir if logger is not None else trainer.default_root_dir
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            atomic_write_text(Path(folder) / "tokenizer.json", json.dumps(self.tokenizer.to_dict()))

    def input_spec(self) -> dict[str, Any] | None:
        """What one raw input is and how it becomes the model's input, as plain data (JSON-able), or ``None`` when
        the data has no such description (a text corpus: language models generate rather than predict).

        Written to the run folder and into the ONNX metadata; ``experiments.predict`` reads inputs by its ``kind``.
        """
        return None

    def use_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Continue with ``tokenizer``, the one of a checkpoint being restored (a resumed run keeps its token ids).

        Called by the model when the trainer restores a checkpoint; data that fits no tokenizer of its own to the
        checkpoint's ignores it (the default).
        """


class InMemoryDataModule(DataModule):
    """Base for datasets that fit in memory; subclasses fill ``self.splits`` in :meth:`setup`.

    Subclasses implement :meth:`load_splits` returning ``{"train": Split, "val": Split, "test": Split}`` and set
    ``num_classes`` and ``input_shape`` (read by the launcher to configure the model). Image subclasses store
    ``uint8`` tensors and pass ``mean``/``std`` for per-channel normalization.

    Args:
        batch_size: Training batch size.
        eval_batch_size: Validation/test batch size (defaults to 4x ``batch_size``; no gradients are kept).
        seed: Seed of the split, the epoch permutations and the augmentation.
        on_device: Move each split once to the training device (GPU included) when it fits; otherwise batches
            are gathered on the CPU and Lightning transfers them.
        augment: Augment training batches of images with the transforms below (evaluation batches never are).
        crop_padding: Padding of the random crop, in pixels; 0 disables the crop.
        hflip: Random horizontal flip (off for digits, where mirroring changes the class).
        rotation: Random rotation of up to this many degrees either way; 0 disables it.
        scale: Random zoom by a factor in ``[1 - scale, 1 + scale]``; 0 disables it.
        translate: Random sub-pixel shift of up to this many pixels along each axis; 0 disables it.
        drop_last: Drop each epoch's last training batch when it is short (evaluation keeps every sample). Keeps
            BatchNorm away from a batch of one; the training split must then hold at least one full batch.
        sanity_batch_size: Samples per batch of Lightning's sanity check (``trainer.num_sanity_val_steps``
            validation batches run before training); ``null`` keeps whole evaluation batches.
    """

    #: Classes (or regression targets) and the shape of one sample: linked into the model by the launcher.
    num_classes: int = 0
    input_shape: tuple[int, ...] = ()
    #: Length bucketing of training batches (see :class:`BatchLoader`); for splits with ``lengths`` only.
    bucket_batches: int = 0

    def __init__(
        self,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        seed: int = 0,
        on_device: bool = True,
        augment: bool = False,
        crop_padding: int = 0,
        hflip: bool = False,
        rotation: float = 0.0,
        scale: float = 0.0,
        translate: float = 0.0,
        drop_last: bool = False,
        sanity_batch_size: int | None = 8,
    ) -> None:
        super().__init__()
        # Collects the arguments of every __init__ in the subclass chain (shown in TensorBoard's HParams tab).
        self.save_hyperparameters()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 4 * batch_size
        self.seed = seed
        self.on_device = on_device
        self.augment = augment
        self.crop_padding = crop_padding
        self.hflip = hflip
        if rotation < 0 or translate < 0 or not 0 <= scale < 1:
            raise ValueError(
                f"data.rotation and data.translate must be >= 0 and data.scale in [0, 1), got rotation={rotation}, "
                f"scale={scale}, translate={translate}"
            )
        self.rotation = rotation
        self.scale = scale
        self.translate = translate
        self.drop_last = drop_last
        if sanity_batch_size is not None and sanity_batch_size < 1:
            raise ValueError(f"data.sanity_batch_size must be >= 1 or null, got {sanity_batch_size}")
        self.sanity_batch_size = sanity_batch_size
        self.splits: dict[str, Split] = {}
        self._device_splits: dict[str, Split] = {}
        self._affine_cache: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def __str__(self) -> str:
        # Lightning's own __str__ builds every dataloader (loading the data) to report their sizes; the launcher's
        # config links format datamodules into their notes, long before the data should be read.
        return f"{type(self).__name__}(batch_size={self.batch_size})"

    def load_splits(self) -> dict[str, Split]:
        """Read the data and return the three splits (called once, in :meth:`setup`)."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            splits = self.load_splits()
            self.check_splits({name: len(split) for name, split in splits.items()}, splits["train"].y)
            self.splits = splits

    @property
    def source(self) -> str:
        """What the data is read from, for messages (a file or folder where there is one)."""
        return type(self).__name__.removesuffix("DataModule")

    def check_data(self) -> None:
        """Fetch (where allowed) and set up the data once, so that data no run can learn from is refused up front.

        The launcher calls it before it creates a run folder; :meth:`setup` makes the same checks in any Trainer.

        Raises:
            DataError: see :meth:`check_splits`.
        """
        self.prepare_data()
        self.setup("fit")

    def check_splits(self, sizes: dict[str, int], train_targets: Tensor | None = None) -> None:
        """Refuse splits no run can learn from or be measured on.

        Args:
            sizes: Samples per split (``train``, ``val``, ``test``).
            train_targets: The training split's targets, when known; integer targets are class labels.

        Raises:
            DataError: a classifier's data with fewer than two classes (in all or in the training split), an
                empty split, or (with ``drop_last``) a training split smaller than one batch.
        """
        classify = train_targets is None or not train_targets.is_floating_point()
        if classify and 0 < self.num_classes < 2:
            names = self.class_names or ["0"]
            raise DataError(
                f"{self.source} has a single class ('{names[0]}', {sum(sizes.values())} samples): a classifier "
                "needs at least two classes"
            )
        for name, size in sizes.items():
            if size == 0:
                what = {"train": "training", "val": "validation"}.get(name, name)
                raise DataError(
                    f"the {what} split of {self.source} is empty after the split fractions; give it a larger share "
                    "(data.val_fraction / data.test_fraction / data.val_size) or use more data"
                )
        if classify and train_targets is not None and self.num_classes >= 2:
            present = train_targets.unique()
            if present.numel() < 2:
                names = self.class_names or []
                index = int(present[0]) if present.numel() else 0
                label = names[index] if index < len(names) else str(index)
                raise DataError(
                    f"the training split of {self.source} holds a single class ('{label}', {sizes['train']} "
                    "samples): a classifier needs examples of at least two classes; add data or change data.seed"
                )
        world = self.trainer.world_size if self.trainer is not None else 1
        per_rank = -(-sizes.get("train", 0) // world)  # training shards are padded to equal sizes
        if self.drop_last and per_rank < self.batch_size:
            on = f" on each of {world} processes" if world > 1 else ""
            raise DataError(
                f"the training split of {self.source} has {per_rank} samples{on}, fewer than one batch "
                f"(data.batch_size {self.batch_size}) with data.drop_last true, so no training step would run; "
                "lower data.batch_size or set data.drop_last false"
            )

    # -- batch transforms ------------------------------------------------------------------------------------------
    def normalize(self, x: Tensor) -> Tensor:
        """``uint8`` images ``(N, C, H, W)`` -> standardized float32; float data passes through.

        ``(x / 255 - mean) / std`` is folded into one multiply-add with per-channel constants cached per device.
        """
        if x.dtype != torch.uint8:
            return x
        scale, shift = self._affine(x.device)
        return torch.addcmul(shift, x.to(torch.float32), scale)

    def _affine(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """Per-channel ``scale``/``shift``, shape ``(1, C, 1, 1)``, such that ``x * scale + shift`` normalizes."""
        cached = self._affine_cache.get(device)
        if cached is None:
            mean = self.mean if self.mean is not None else (0.0,)
            cached = tuple(t.to(device) for t in image_affine(mean, self.std if self.std is not None else (1.0,)))
            self._affine_cache[device] = cached
        return cached

    def train_transform(self, x: Tensor, gen: torch.Generator) -> Tensor:
        if not (self.augment and x.dim() == 4):
            return self.normalize(x)
        return self.affine_augment(self.normalize(random_crop_flip(x, self.crop_padding, self.hflip, gen)), gen)

    def affine_augment(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """The ``rotation``/``scale``/``translate`` augmentation of a normalized batch (unchanged when all are 0)."""
        if not (self.rotation or self.scale or self.translate):
            return x
        # Uncovered pixels get the normalized value of a zero (black) pixel.
        return random_affine(x, self.rotation, self.scale, self.translate, self._affine(x.device)[1], gen)

    def eval_transform(self, x: Tensor, gen: torch.Generator | None = None) -> Tensor:
        return self.normalize(x)

    # -- what a raw input is, for prediction and export -------------------------------------------------------------
    def input_spec(self) -> dict[str, Any]:
        """What one raw input is and how it becomes the model's input, as plain data (JSON-able).

        Saved in every checkpoint (see :meth:`state_dict`) and in the ONNX metadata; ``experiments.predict``
        chooses its input reader by ``kind``. Images (``uint8`` data with ``mean``/``std``): ``kind: image``
        with the shape, the PIL mode and the normalization; anything else: ``kind: tensor`` with the shape.
        Subclasses with other inputs (tables, text) return their own kind.
        """
        shape = [int(s) for s in self.input_shape]
        if self.mean is not None and self.std is not None and len(shape) == 3:
            spec: dict[str, Any] = {
                "kind": "image",
                "shape": shape,
                "mode": "L" if shape[0] == 1 else "RGB",
                # Training saw exactly this channel count; images of another are refused, not converted.
                "convert_any_mode": False,
                "dtype": "uint8",
                "mean": [float(m) for m in self.mean],
                "std": [float(s) for s in self.std],
            }
        else:
            spec = {"kind": "tensor", "shape": shape}
        spec["class_names"] = [str(c) for c in self.class_names] if self.class_names else None
        return spec

    def state_dict(self) -> dict[str, Any]:
        """Lightning stores this in every checkpoint: the input description, so a checkpoint alone can predict."""
        return {INPUT_SPEC_KEY: self.input_spec()}

    # -- loaders ---------------------------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        trainer = self.trainer
        if self.on_device and trainer is not None:
            return trainer.strategy.root_device
        return torch.device("cpu")

    def _split_on_device(self, name: str) -> Split:
        if name not in self.splits:
            self.setup()
        device = self._device()
        cached = self._device_splits.get(name)
        if cached is None or cached.x.device != device:
            cached = self.splits[name].to(device)
            self._device_splits[name] = cached
        return cached

    def _loader(self, name: str, train: bool) -> BatchLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return BatchLoader(
            self._split_on_device(name),
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=train and self.drop_last,
            transform=self.train_transform if train else self.eval_transform,
            seed=self.seed,
            rank=rank,
            world_size=world,
            epoch_fn=(lambda: trainer.current_epoch) if trainer is not None else None,
            # Validation/test shards are not padded: a repeated sample would count twice in the DDP-synced metrics.
            pad_shards=train,
            bucket_batches=self.bucket_batches if train else 0,
        )

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Cut the batches of Lightning's sanity check to ``sanity_batch_size`` samples.

        The sanity check runs ``validation_step`` end to end before training so that a bug there shows at once,
        not after the first epoch; a few samples do that. A whole evaluation batch (``eval_batch_size``, 4x the
        training batch by default) costs seconds on a CPU: 4.3 s of ``cifar10_fast``'s 9.4 s from command to first
        training step on 2 cores, against under a second for 8 samples.
        """
        trainer = self.trainer
        cut = self.sanity_batch_size
        if cut and trainer is not None and trainer.sanity_checking and isinstance(batch, list | tuple):
            return type(batch)(t[:cut] if isinstance(t, Tensor) else t for t in batch)
        return batch

    def train_dataloader(self) -> BatchLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> BatchLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> BatchLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> BatchLoader:
        return self._loader("test", train=False)

    def teardown(self, stage: str) -> None:
        self._device_splits.clear()


def split_indices(n: int, fractions: Sequence[float], seed: int) -> list[Tensor]:
    """Deterministic random partition of ``range(n)`` into parts with the given fractions (the last takes the rest).

    Raises:
        ValueError: if a part would be empty.
    """
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g)
    parts, start = [], 0
    for i, frac in enumerate(fractions):
        size = n - start if i == len(fractions) - 1 else int(round(frac * n))
        parts.append(order[start : start + size])
        start += size
    if any(len(p) == 0 for p in parts):
        raise ValueError(f"{n} rows are too few for split fractions {list(fractions)}: a split would be empty")
    return parts
