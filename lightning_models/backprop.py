"""An MLP trained with gradients derived by hand with the chain rule: no autograd in its training step.

For ``logits = f_L(... f_1(x))`` and mean softmax cross-entropy over a batch of ``N``:

* softmax-CE:  ``dL/dlogits = (softmax(logits) - q) / N``, with ``q`` the (label-smoothed) one-hot target;
* Linear ``z = a W^T + b``:  ``dL/dW = g^T a``, ``dL/db = sum_n g``, ``dL/da = g W``;
* ReLU ``r = max(z, 0)``:  ``dL/dz = g * [z > 0]``.

The forward pass keeps each layer's input; the backward pass walks the layers in reverse, applying the rules
above. The update is SGD (momentum, Nesterov and weight decay as in :class:`torch.optim.SGD`) applied to the
parameters under :func:`torch.no_grad`. Validation, test and prediction use the ordinary forward.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_models.base import ClassifierModule
from lightning_models.mlp import mlp


class HandBackpropMLP(ClassifierModule):
    """``flatten -> [Linear -> ReLU] x len(hidden) -> Linear`` classifier whose gradients are computed by hand.

    ``automatic_optimization`` is off: :meth:`training_step` runs the base class's shared step (forward, loss,
    metrics, logging) without autograd while the forward records every layer's input, then
    :meth:`backward_by_hand` and :meth:`sgd_update` do the rest.

    The optimizer built from the config is a plain :class:`torch.optim.SGD`: it holds the learning rate (which
    the schedulers and the LR monitor act on), the momentum buffers and the step count, and its ``step()`` is
    called once per batch so Lightning counts steps; it finds no ``.grad`` on any parameter, so it never changes
    them itself.

    Args:
        hidden: Widths of the hidden layers.
        optimizer: Only ``sgd``: the update rule implemented by hand.
        **kwargs: Learning rate, momentum, schedulers, shapes: see :class:`~lightning_models.base.TaskModule`.
    """

    def __init__(
        self,
        hidden: list[int] = [128],  # noqa: B006
        optimizer: Literal["sgd"] = "sgd",
        **kwargs: Any,
    ) -> None:
        if optimizer != "sgd":
            raise ValueError(f"HandBackpropMLP implements only the sgd update, got model.optimizer {optimizer!r}")
        super().__init__(optimizer=optimizer, **kwargs)
        self.automatic_optimization = False
        self.net = mlp(math.prod(self.input_shape), hidden, self.num_classes)
        # Set to a list during a training step: forward appends every layer's input, then the logits.
        self._activations: list[Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        if self._activations is None:
            return self.net(x)
        for layer in self.net:
            self._activations.append(x)
            x = layer(x)
        self._activations.append(x)
        return x

    def forward_cached(self, x: Tensor) -> list[Tensor]:
        """Forward pass keeping each layer's input: ``[input of layer 0, ..., input of layer L-1, logits]``."""
        self._activations = []
        try:
            self(x)
            return self._activations
        finally:
            self._activations = None

    def backward_by_hand(self, activations: list[Tensor], target: Tensor) -> dict[str, Tensor]:
        """Gradients of the mean (label-smoothed) cross-entropy w.r.t. every parameter, by the chain rule.

        Args:
            activations: From :meth:`forward_cached`: the ``(N, F_i)`` input of each layer, then ``(N, K)`` logits.
            target: ``(N,)`` class indices.

        Returns:
            ``{parameter name: gradient}`` with the names and shapes of :meth:`named_parameters`.
        """
        logits = activations[-1]
        n, k = logits.shape
        eps = self.hparams.label_smoothing
        # Cross-entropy with label smoothing eps is CE against q = (1 - eps) * one_hot + eps / K.
        q = torch.full_like(logits, eps / k)
        q.scatter_(1, target.view(-1, 1), 1.0 - eps + eps / k)
        grad = (torch.softmax(logits, dim=1) - q) / n  # dL/dlogits, (N, K)
        grads: dict[str, Tensor] = {}
        for i in reversed(range(len(self.net))):
            layer, inp = self.net[i], activations[i]
            if isinstance(layer, nn.Linear):
                grads[f"net.{i}.weight"] = grad.T @ inp  # (out, in)
                if layer.bias is not None:
                    grads[f"net.{i}.bias"] = grad.sum(0)  # (out,)
                if i > 0:
                    grad = grad @ layer.weight  # dL/d(layer input), (N, in)
            elif isinstance(layer, nn.ReLU):
                # The in-place ReLU overwrote its input with its output; both are > 0 at the same places.
                grad = grad * (inp > 0)
            else:
                raise TypeError(f"no hand-written backward for {type(layer).__name__}")
        return grads

    def hand_gradients(self, x: Tensor, target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss and hand-derived gradients for one batch, without autograd (for checks against autograd)."""
        with torch.no_grad():
            activations = self.forward_cached(x)
            loss = self.compute_loss(activations[-1], target)
            return loss, self.backward_by_hand(activations, target)

    @torch.no_grad()
    def sgd_update(self, grads: dict[str, Tensor], optimizer: torch.optim.Optimizer) -> None:
        """``p -= lr * d`` with ``d`` the SGD direction, reading lr/momentum/decay from the optimizer's group.

        Same rule as :class:`torch.optim.SGD` (no dampening); the momentum buffers live in the optimizer's state,
        so checkpoints save and resume them.
        """
        group = optimizer.param_groups[0]
        lr, momentum, decay, nesterov = group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]
        for name, p in self.named_parameters():
            d = grads[name]
            if decay:
                d = d + decay * p
            if momentum:
                state = optimizer.state[p]
                buf = state.get("momentum_buffer")
                buf = d.clone() if buf is None else buf.mul_(momentum).add_(d)
                state["momentum_buffer"] = buf
                d = d + momentum * buf if nesterov else buf
            p.sub_(lr * d)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        _, y = batch
        opt = self.optimizers()
        self._activations = []
        try:
            with torch.no_grad():
                loss = self.shared_step(batch, "train")  # forward records activations; loss, metrics, logs
                grads = self.backward_by_hand(self._activations, y)
        finally:
            self._activations = None
        # Under DDP each rank saw its own shard: average the gradients, as DDP's autograd hooks would (no-op alone).
        grads = {name: self.trainer.strategy.reduce(g, reduce_op="mean") for name, g in grads.items()}
        self.sgd_update(grads, opt.optimizer)
        opt.step()  # counts the step for Lightning; no parameter has .grad, so nothing else changes
        self._step_schedulers("step")
        return loss

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        self._step_schedulers("epoch")

    def _step_schedulers(self, interval: str) -> None:
        """Step the configured schedulers due at this ``interval`` (Lightning leaves that to manual optimization)."""
        for config in self.trainer.lr_scheduler_configs:
            if config.interval == interval:
                config.scheduler.step()
