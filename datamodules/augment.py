"""Batch augmentation on whole tensors (any device), with no per-sample Python work."""

from __future__ import annotations

import math

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


def random_affine(
    x: Tensor,
    degrees: float,
    scale: float,
    translate: float,
    fill: Tensor | float = 0.0,
    gen: torch.Generator | None = None,
) -> Tensor:
    """Random rotation, zoom and shift, drawn independently per sample, resampled bilinearly.

    Args:
        x: Float images ``(N, C, H, W)``.
        degrees: Rotation angle drawn uniformly from ``[-degrees, degrees]``.
        scale: Zoom factor drawn uniformly from ``[1 - scale, 1 + scale]``.
        translate: Shift in pixels along each axis, drawn uniformly from ``[-translate, translate]``.
        fill: Value of the area uncovered by the transform, a scalar or per channel ``(1, C, 1, 1)`` (e.g. the
            normalized value of a black pixel).
        gen: Generator on ``x``'s device, for reproducible draws.

    Returns:
        Augmented images, same shape and dtype as ``x``.
    """
    n, _, h, w = x.shape
    dev = x.device
    u = torch.rand(4, n, device=dev, generator=gen) * 2 - 1  # (4, N) uniform in [-1, 1]
    angle = u[0] * math.radians(degrees)
    zoom = 1 + u[1] * scale
    # affine_grid maps output to input coordinates in [-1, 1]: one pixel is 2 / size wide there.
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    tx, ty = u[2] * (2 * translate / w), u[3] * (2 * translate / h)
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)  # (N, 2, 3)
    grid = torch.nn.functional.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    # grid_sample pads with zeros: shift so that zero is the fill value, then shift back.
    moved = torch.nn.functional.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return moved + fill
