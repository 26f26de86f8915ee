"""Batch augmentation on whole tensors (any device), with no per-sample Python work."""

from __future__ import annotations

import torch
from torch import Tensor


def random_crop_flip(x: Tensor, padding: int, hflip: bool, gen: torch.Generator | None = None) -> Tensor:
    """Random crop with zero padding and optional horizontal flip, drawn independently per sample.

    Args:
        x: Images ``(N, C, H, W)``, any dtype (``uint8`` keeps the gather cheap).
        padding: Pixels of zero padding on each side before cropping back to ``H x W``; 0 disables the crop.
        hflip: Flip each image left-right with probability 0.5.
        gen: Generator on ``x``'s device, for reproducible draws.

    Returns:
        Augmented images, same shape and dtype as ``x``.
    """
    n, c, h, w = x.shape
    dev = x.device
    if padding > 0:
        padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
        # Offsets in [0, 2 * padding]; each sample's crop window starts there in the padded image.
        off = torch.randint(0, 2 * padding + 1, (2, n), device=dev, generator=gen)
        rows = (off[0].view(n, 1) + torch.arange(h, device=dev)).view(n, 1, h, 1)  # (N, 1, H, 1)
        cols = (off[1].view(n, 1) + torch.arange(w, device=dev)).view(n, 1, 1, w)  # (N, 1, 1, W)
        batch = torch.arange(n, device=dev).view(n, 1, 1, 1)
        chan = torch.arange(c, device=dev).view(1, c, 1, 1)
        x = padded[batch, chan, rows, cols]
    if hflip:
        flip = torch.rand(n, device=dev, generator=gen) < 0.5
        x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    return x
