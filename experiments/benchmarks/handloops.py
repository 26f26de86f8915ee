"""The two loops zerotune is timed against on real data, written as a user would write them: plain PyTorch only.

``python -m experiments.bench`` (real-data mode, :mod:`experiments.benchmarks.real`) starts each loop in a fresh
process with a plan (JSON: data, network, recipe, target) and times it from process start to a target test
accuracy. This module imports neither Lightning nor zerotune's packages, so a loop's startup is what a script of
its own would pay:

* ``tutorial``: the classic loop. torchvision's ``MNIST``/``ImageFolder`` dataset, per-sample PIL transforms
  (``RandomCrop``/``RandomHorizontalFlip`` where the recipe augments, ``ToTensor``, ``Normalize``) and a
  ``DataLoader`` with worker processes.
* ``hand``: the best hand-written loop. Every image decoded once into one ``uint8`` tensor on the device, batches
  gathered by index and normalized (and shifted/flipped) as whole batches. It draws the same epoch orders and
  augmentation as zerotune's :class:`~datamodules.base.BatchLoader` and builds its network in the same order from
  the same seed, so it follows zerotune's run step for step: the two differ only in speed.

Both use the recipe's network, optimizer, one-cycle schedule, label smoothing, precision and memory format, and
validate once per epoch as zerotune does. After each epoch the test split is evaluated with the clock stopped;
the loop prints ``REACHED`` with the wall time (minus those pauses) when test accuracy first reaches the target.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


# -- networks: the same modules, in the same order, as zerotune's classes ----------------------------------------
class MNISTCNNNet(nn.Module):
    """:class:`lightning_models.MNISTCNN`'s network: conv-[BN]-ReLU-pool stages, flatten, MLP head."""

    def __init__(
        self,
        num_classes: int,
        input_shape: list[int],
        channels: list[int],
        kernel_size: int = 5,
        hidden: list[int] = (),
        batch_norm: bool = False,
        dropout: float = 0.0,
        padding: int | None = None,
    ) -> None:
        super().__init__()
        c, h, w = input_shape
        pad = kernel_size // 2 if padding is None else padding
        layers: list[nn.Module] = []
        for c_out in channels:
            layers.append(nn.Conv2d(c, c_out, kernel_size, padding=pad, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c, h, w = c_out, (h + 2 * pad - kernel_size + 1) // 2, (w + 2 * pad - kernel_size + 1) // 2
        self.backbone = nn.Sequential(nn.Sequential(*layers), nn.Flatten())
        head: list[nn.Module] = []
        width = c * h * w
        for size in hidden:
            head += [nn.Linear(width, size), nn.ReLU(inplace=True)] + ([nn.Dropout(dropout)] if dropout else [])
            width = size
        self.head = nn.Sequential(*head, nn.Linear(width, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


def _conv_bn(c_in: int, c_out: int, pool: bool = False, momentum: float = 0.1) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
    layers += [nn.MaxPool2d(2)] if pool else []
    return nn.Sequential(*layers, nn.BatchNorm2d(c_out, momentum=momentum), nn.ReLU(inplace=True))


class _Residual(nn.Module):
    def __init__(self, width: int, momentum: float) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(width, width, momentum=momentum), _conv_bn(width, width, momentum=momentum))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResNet9Net(nn.Module):
    """:class:`lightning_models.ResNet9`'s network, with its scaled head and flip test-time augmentation."""

    def __init__(
        self,
        num_classes: int,
        input_shape: list[int],
        widths: list[int] = (64, 128, 256, 512),
        head_scale: float = 0.125,
        bn_momentum: float = 0.1,
        tta_flip: bool = False,
    ) -> None:
        super().__init__()
        w0, w1, w2, w3 = widths
        m = bn_momentum
        self.backbone = nn.Sequential(
            _conv_bn(input_shape[0], w0, momentum=m),
            _conv_bn(w0, w1, pool=True, momentum=m),
            _Residual(w1, m),
            _conv_bn(w1, w2, pool=True, momentum=m),
            _conv_bn(w2, w3, pool=True, momentum=m),
            _Residual(w3, m),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(w3, num_classes, bias=False)
        self.head_scale, self.tta_flip = head_scale, tta_flip

    def logits(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x)) * self.head_scale

    def forward(self, x: Tensor) -> Tensor:
        if self.tta_flip and not self.training:
            return 0.5 * (self.logits(x) + self.logits(x.flip(-1)))
        return self.logits(x)


NETWORKS = {"MNISTCNN": MNISTCNNNet, "ResNet9": ResNet9Net}
#: Recipe arguments of zerotune's model classes that belong to the training, not to the network.
RECIPE_KEYS = {
    "optimizer",
    "lr",
    "weight_decay",
    "momentum",
    "nesterov",
    "scheduler",
    "warmup_epochs",
    "label_smoothing",
    "channels_last",
    "compile",
    "step_size",
    "gamma",
}


def build_network(plan: dict[str, Any]) -> nn.Module:
    """The plan's network, built after seeding as zerotune's launcher seeds (``seed_everything``)."""
    model = plan["model"]
    args = {k: v for k, v in model["args"].items() if k not in RECIPE_KEYS}
    torch.manual_seed(plan["seed_everything"])
    return NETWORKS[model["class"]](model["num_classes"], model["input_shape"], **args)


# -- data -------------------------------------------------------------------------------------------------------------
def split_order(n: int, sizes: list[int], seed: int) -> list[Tensor]:
    """Consecutive parts of one seeded permutation of ``range(n)``, each sorted (zerotune's split)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts, start = [], 0
    for size in sizes:
        parts.append(order[start : start + size].sort().values)
        start += size
    return parts


def splits_of(plan: dict[str, Any], n: int) -> dict[str, Tensor]:
    """Indices of train/val/test into the dataset's file (MNIST: official train file; folder: sorted files)."""
    data = plan["data"]
    if data["kind"] == "mnist":
        n_val = int(round(data["val_size"] * n)) if data["val_size"] < 1 else int(data["val_size"])
        val, train = split_order(n, [n_val, n - n_val], data["seed"])
        return {"train": train, "val": val}
    n_train = int(round((1 - data["val_fraction"] - data["test_fraction"]) * n))
    n_val = int(round(data["val_fraction"] * n))
    train, val, test = split_order(n, [n_train, n_val, n - n_train - n_val], data["seed"])
    return {"train": train, "val": val, "test": test}


def folder_files(root: str) -> list[tuple[str, int]]:
    """``(path, class index)`` for ``root/CLASS/FILE``, classes and files sorted by name."""
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    files = []
    for k, name in enumerate(classes):
        names = sorted(e.name for e in os.scandir(os.path.join(root, name)) if e.name.lower().endswith(IMAGE_SUFFIXES))
        files += [(os.path.join(root, name, f), k) for f in names if not f.startswith(".")]
    return files


def load_tensors(plan: dict[str, Any]) -> dict[str, tuple[Tensor, Tensor]]:
    """Every split as ``(uint8 images (N, C, H, W), int64 labels)``, decoded once."""
    data = plan["data"]
    if data["kind"] == "mnist":
        from torchvision.datasets import MNIST

        train, test = MNIST(data["path"], train=True), MNIST(data["path"], train=False)
        x, y = train.data.unsqueeze(1), train.targets
        parts = splits_of(plan, len(y))
        out = {name: (x[idx], y[idx]) for name, idx in parts.items()}
        out["test"] = (test.data.unsqueeze(1), test.targets)
        return out
    from torchvision.io import ImageReadMode, decode_jpeg

    files = folder_files(data["path"])
    blobs = []
    for path, _ in files:
        with open(path, "rb") as f:
            blobs.append(torch.frombuffer(bytearray(f.read()), dtype=torch.uint8))
    x = torch.stack(decode_jpeg(blobs, mode=ImageReadMode.RGB))
    y = torch.tensor([label for _, label in files])
    return {name: (x[idx], y[idx]) for name, idx in splits_of(plan, len(y)).items()}


def normalizer(plan: dict[str, Any], device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-channel ``scale``, ``shift`` with ``x * scale + shift == (x / 255 - mean) / std``."""
    mean = torch.tensor(plan["data"]["mean"], dtype=torch.float64)
    std = torch.tensor(plan["data"]["std"], dtype=torch.float64)
    return tuple(t.to(device, torch.float32).view(1, -1, 1, 1) for t in (1 / (255 * std), -mean / std))


def crop_flip(x: Tensor, padding: int, hflip: bool, gen: torch.Generator) -> Tensor:
    """Random shift by up to ``padding`` pixels (zero padding) and left-right flip, per sample, of a uint8 batch."""
    n, c, h, w = x.shape
    dev = x.device
    if padding:
        padded = F.pad(x, (padding,) * 4)
        off = torch.randint(0, 2 * padding + 1, (2, n), device=dev, generator=gen)
        rows = (off[0].view(n, 1) + torch.arange(h, device=dev)).view(n, 1, h, 1)
        cols = (off[1].view(n, 1) + torch.arange(w, device=dev)).view(n, 1, 1, w)
        x = padded[
            torch.arange(n, device=dev).view(n, 1, 1, 1), torch.arange(c, device=dev).view(1, c, 1, 1), rows, cols
        ]
    if hflip:
        flip = torch.rand(n, device=dev, generator=gen) < 0.5
        x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    return x


# -- training ---------------------------------------------------------------------------------------------------------
class Clock:
    """Wall time since the parent started this process, less the time spent in test probes."""

    def __init__(self) -> None:
        self.t0 = float(os.environ.get("ZEROTUNE_BENCH_T0", time.time()))
        self.paused = 0.0

    def now(self) -> float:
        return time.time() - self.t0 - self.paused


def optimizer_and_schedule(net: nn.Module, plan: dict[str, Any], steps_per_epoch: int) -> tuple[Any, Any]:
    """The recipe's optimizer and per-step one-cycle schedule, as zerotune's ``configure_optimizers`` builds them."""
    hp = plan["model"]["args"]
    params = [p for p in net.parameters() if p.requires_grad]
    lr, wd = hp.get("lr", 1e-3), hp.get("weight_decay", 0.0)
    name = hp.get("optimizer", "adam")
    if name == "sgd":
        opt = torch.optim.SGD(
            params, lr=lr, momentum=hp.get("momentum", 0.9), nesterov=hp.get("nesterov", False), weight_decay=wd
        )
    else:
        opt = (torch.optim.AdamW if name == "adamw" else torch.optim.Adam)(params, lr=lr, weight_decay=wd)
    if hp.get("scheduler", "none") not in ("none", "onecycle"):
        raise ValueError(f"the hand-written loops implement the one-cycle schedule only, not {hp['scheduler']!r}")
    total = plan["max_epochs"] * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[lr], total_steps=total) if hp.get("scheduler") else None
    return opt, sched


def evaluate(net: nn.Module, batches: Any, autocast: Any) -> float:
    """Accuracy of ``net`` over ``(x, y)`` batches, in eval mode and the recipe's precision."""
    net.eval()
    right = total = 0
    with torch.no_grad(), autocast():
        for x, y in batches:
            right += int((net(x).argmax(1) == y).sum())
            total += len(y)
    net.train()
    return right / max(total, 1)


def run(plan: dict[str, Any], loop: str) -> None:
    """Train per ``plan`` with the ``tutorial`` or ``hand`` loop, printing ``EPOCH``/``REACHED`` marks."""
    clock = Clock()
    torch.set_flush_denormal(True)  # zerotune's launcher default, so all loops compute alike
    device = torch.device(plan["device"])
    bf16 = plan["precision"] == "bf16-mixed"

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    if loop == "hand":
        train, val, test = _memory_batches(plan, device)
    else:
        train, val, test = _tutorial_batches(plan, device)
    net = build_network(plan).to(device)
    if plan["model"]["args"].get("channels_last"):
        net = net.to(memory_format=torch.channels_last)
    opt, sched = optimizer_and_schedule(net, plan, len(train))
    smoothing = plan["model"]["args"].get("label_smoothing", 0.0)
    net.train()
    for epoch in range(plan["max_epochs"]):
        train.epoch = epoch
        for step, (x, y) in enumerate(train):
            if epoch == 0 and step == 0:
                print(f"FIRST_STEP {clock.now()}", flush=True)
            with autocast():
                loss = F.cross_entropy(net(x), y, label_smoothing=smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
        val_acc = evaluate(net, val, autocast)
        start = time.time()
        acc = evaluate(net, test, autocast)
        elapsed = clock.now()
        clock.paused += time.time() - start
        print(f"EPOCH {epoch + 1} {elapsed} {acc} {val_acc}", flush=True)
        if acc >= plan["target"]:
            print(f"REACHED {elapsed}", flush=True)
            return


class _MemoryLoader:
    """In-memory batches: zerotune's ``BatchLoader`` order and augmentation, written out by hand."""

    def __init__(self, x: Tensor, y: Tensor, batch: int, norm: tuple[Tensor, Tensor], aug: Any = None) -> None:
        self.x, self.y, self.batch, self.norm, self.aug, self.epoch, self.seed = x, y, batch, norm, aug, 0, 0

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch)

    def __iter__(self):
        shuffle = self.aug is not None
        n, dev = len(self.y), self.x.device
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch)) if shuffle else None
        order = (order if shuffle else torch.arange(n)).to(dev)
        gen = torch.Generator(device=dev).manual_seed((self.seed + 1) * 1_000_003 + self.epoch * 97)
        scale, shift = self.norm
        for start in range(0, n, self.batch):
            idx = order[start : start + self.batch]
            x = self.x.index_select(0, idx)
            if shuffle and self.aug:
                x = crop_flip(x, *self.aug, gen)
            yield torch.addcmul(shift, x.float(), scale), self.y.index_select(0, idx)


def _memory_batches(plan: dict[str, Any], device: torch.device) -> tuple[Any, Any, Any]:
    data = plan["data"]
    tensors = {k: (x.to(device), y.to(device)) for k, (x, y) in load_tensors(plan).items()}
    norm = normalizer(plan, device)
    aug = (data["crop_padding"], data["hflip"]) if data["augment"] else ()
    train = _MemoryLoader(*tensors["train"], data["batch_size"], norm, aug)
    train.seed = data["seed"]
    val = _MemoryLoader(*tensors["val"], data["eval_batch_size"], norm)
    test = _MemoryLoader(*tensors["test"], data["eval_batch_size"], norm)
    return train, val, test


class _ToDevice:
    """A ``DataLoader`` whose batches are moved to the device (``epoch`` is ignored: it shuffles on its own)."""

    def __init__(self, loader: Any, device: torch.device) -> None:
        self.loader, self.device, self.epoch = loader, device, 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def _tutorial_batches(plan: dict[str, Any], device: torch.device) -> tuple[Any, Any, Any]:
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    data = plan["data"]
    size = plan["model"]["input_shape"][-1]
    plain = [transforms.ToTensor(), transforms.Normalize(data["mean"], data["std"])]
    augment: list[Any] = []
    if data["augment"] and data["crop_padding"]:
        augment.append(transforms.RandomCrop(size, padding=data["crop_padding"]))
    if data["augment"] and data["hflip"]:
        augment.append(transforms.RandomHorizontalFlip())
    train_tf, eval_tf = transforms.Compose(augment + plain), transforms.Compose(plain)
    if data["kind"] == "mnist":
        train_set = datasets.MNIST(data["path"], train=True, transform=train_tf)
        eval_set = datasets.MNIST(data["path"], train=True, transform=eval_tf)
        parts = splits_of(plan, len(train_set))
        sets = {"train": Subset(train_set, parts["train"]), "val": Subset(eval_set, parts["val"])}
        sets["test"] = datasets.MNIST(data["path"], train=False, transform=eval_tf)
    else:
        train_set = datasets.ImageFolder(data["path"], transform=train_tf)
        eval_set = datasets.ImageFolder(data["path"], transform=eval_tf)
        parts = splits_of(plan, len(train_set))
        sets = {"train": Subset(train_set, parts["train"])}
        sets.update({k: Subset(eval_set, parts[k]) for k in ("val", "test")})
    workers, pin = plan["workers"], device.type == "cuda"
    loaders = [
        DataLoader(
            sets[name],
            batch_size=data["batch_size"] if name == "train" else data["eval_batch_size"],
            shuffle=name == "train",
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=pin,
        )
        for name in ("train", "val", "test")
    ]
    return tuple(_ToDevice(loader, device) for loader in loaders)


def main(argv: list[str] | None = None) -> int:
    """``python -m experiments.benchmarks.handloops {tutorial,hand} PLAN.json``."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in ("tutorial", "hand"):
        print("usage: python -m experiments.benchmarks.handloops {tutorial,hand} PLAN.json", file=sys.stderr)
        return 2
    run(json.loads(Path(argv[1]).read_text()), argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
