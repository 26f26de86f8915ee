"""Where a Vision Transformer looks: the attention of a fixed validation image in TensorBoard's Images tab.

:class:`AttentionMaps` asks the model for its attention weights (``attention_maps(x)``: ``(layers, B, heads, T, T)``,
see :meth:`lightning_models.ViT.attention_maps`) on the first validation image, every few epochs, and draws one
figure, ``val/attention``: the image; the attention rollout over all layers (Abnar & Zuidema, 2020: each layer's
head-averaged attention plus the residual identity, multiplied through the layers); and the last layer's attention
of each head. With a class token the maps are what the class token reads from each patch; with mean pooling, what
the patches read on average.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from experiments.rundir.plots import displayable, figure, mean_std, render, tensorboard_writer
from lightning_models.base import ExposesAttention


def attention_rollout(maps: Tensor) -> Tensor:
    """``(layers, heads, T, T)`` attention of one image -> ``(T, T)``: how much each token's final state draws on
    each input token through all layers, counting the residual path as half of every layer."""
    tokens = maps.shape[-1]
    eye = torch.eye(tokens, dtype=maps.dtype, device=maps.device)
    rollout = eye
    for layer in maps.mean(dim=1):
        mixed = 0.5 * layer + 0.5 * eye
        rollout = (mixed / mixed.sum(dim=-1, keepdim=True)) @ rollout
    return rollout


def patch_weights(maps: Tensor, prefix: int) -> Tensor:
    """Rows of a ``(..., T, T)`` attention read out for the image: the class token's row (``prefix`` 1) or the mean
    of the patch rows (``prefix`` 0), restricted to the patch columns: ``(..., patches)``."""
    rows = maps[..., 0, :] if prefix else maps.mean(dim=-2)
    return rows[..., prefix:]


class AttentionMaps(Callback):
    """Logs ``val/attention`` for models with ``attention_maps`` (ViT): a fixed validation image, its attention
    rollout and the last layer's heads, every ``every_n_epochs`` epochs and after the last one. Rank 0 only; nothing
    without a TensorBoard logger or during the sanity check.

    Args:
        enabled: Draw at all.
        every_n_epochs: Draw every N-th validation epoch (the last epoch is always drawn).
        index: Which validation image (of the first validation batch).
    """

    def __init__(self, enabled: bool = True, every_n_epochs: int = 5, index: int = 0) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"attention.every_n_epochs must be >= 1, got {every_n_epochs}")
        if index < 0:
            raise ValueError(f"attention.index must be >= 0, got {index}")
        self.enabled = enabled
        self.every_n_epochs = every_n_epochs
        self.index = index
        self._image: Tensor | None = None
        #: The latest figure, ``(H, W, 3)`` uint8 (for tests).
        self.last: Any = None

    def _due(self, trainer: L.Trainer) -> bool:
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and trainer.max_epochs > 0 and epoch >= trainer.max_epochs
        return epoch % self.every_n_epochs == 0 or last

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if not isinstance(pl_module, ExposesAttention) or not self._due(trainer):
            return
        writer = tensorboard_writer(trainer)
        image = self._fixed_image(trainer)
        if writer is None or image is None:
            return
        try:
            maps = pl_module.attention_maps(image.to(pl_module.device, pl_module.dtype)[None])[:, 0].float().cpu()
            grid, prefix = pl_module.backbone.grid, pl_module.backbone.prefix
            self.last = attention_figure(image, maps, grid, prefix, mean_std(trainer), trainer.current_epoch)
        except Exception as err:  # a figure must never cost the run
            rank_zero_warn(f"attention map not drawn ({type(err).__name__}: {err}); pass --attention.enabled false")
            self.enabled = False
            return
        writer.add_image("val/attention", self.last, trainer.global_step, dataformats="HWC")

    def _fixed_image(self, trainer: L.Trainer) -> Tensor | None:
        """The chosen validation image, normalized as the model sees it, kept on the CPU after the first read."""
        if self._image is None:
            dm = trainer.datamodule
            loader = dm.val_dataloader() if dm is not None else None
            batch = next(iter(loader), None) if loader is not None else None
            x = batch[0] if isinstance(batch, list | tuple) else batch
            if not isinstance(x, Tensor) or x.dim() != 4:
                return None
            self._image = x[min(self.index, len(x) - 1)].detach().float().cpu()
        return self._image


def attention_figure(
    image: Tensor,
    maps: Tensor,
    grid: tuple[int, int],
    prefix: int,
    mean_std: tuple[Tensor, Tensor] | None = None,
    epoch: int = 0,
    max_heads: int = 8,
) -> Any:
    """The figure: image, rollout over it, and the last layer's heads; returns ``(H, W, 3)`` uint8.

    Args:
        image: ``(C, H, W)`` normalized image.
        maps: ``(layers, heads, T, T)`` attention of that image.
        grid: Patches along height and width.
        prefix: Tokens before the patches (1: class token).
        mean_std: The datamodule's normalization, undone for display.
        epoch: Shown in the title.
        max_heads: Heads drawn at most.
    """
    from torch.nn import functional as F

    shown = displayable(image, mean_std)
    height, width = image.shape[1:]

    def upsample(weights: Tensor) -> Any:
        w = weights.reshape(1, 1, *grid)
        w = F.interpolate(w, size=(height, width), mode="nearest")[0, 0]
        return ((w - w.min()) / (w.max() - w.min()).clamp(min=1e-12)).numpy()  # each map stretched to [0, 1]

    rollout = patch_weights(attention_rollout(maps), prefix)
    heads = patch_weights(maps[-1], prefix)[:max_heads]
    cols = 2 + len(heads)
    fig, grid_axes = figure(1.8 * cols, 2.2, 1, cols)
    axes = list(grid_axes.flat)
    for ax in axes:
        ax.axis("off")
    cmap = "gray" if image.shape[0] == 1 else None
    axes[0].imshow(shown, cmap=cmap, vmin=0, vmax=1)
    axes[0].set_title("image", fontsize=8)
    axes[1].imshow(shown, cmap=cmap, vmin=0, vmax=1)
    axes[1].imshow(upsample(rollout), cmap="inferno", alpha=0.6, vmin=0, vmax=1)
    axes[1].set_title("rollout, all layers", fontsize=8)
    for i, weights in enumerate(heads):
        axes[2 + i].imshow(upsample(weights), cmap="inferno", vmin=0, vmax=1)
        axes[2 + i].set_title(f"last layer, head {i}", fontsize=8)
    reader = "class token" if prefix else "mean of patches"
    fig.suptitle(f"attention of a validation image ({reader}), epoch {epoch}", fontsize=9)
    return render(fig)
