"""Shared LightningModule bases: one training/validation/test step, metrics per stage, optimizers by name.

Every architecture in this package subclasses one of the task bases below and only builds ``self.net``:

* :class:`ClassifierModule` - multi-class, cross-entropy, accuracy and macro-F1.
* :class:`BinaryClassifierModule` - one logit, binary cross-entropy, accuracy, F1 and AUROC.
* :class:`RegressorModule` - MSE loss, MSE / MAE / R2.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

import lightning as L
import numpy as np
import torch
import torchmetrics
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor, nn

from datamodules.base import DataModule
from datamodules.tokenizer import CHECKPOINT_KEY as TOKENIZER_KEY
from datamodules.tokenizer import checkpoint_tokenizer
from lightning_models.schedules import warmup_cosine_scheduler, warmup_linear_scheduler

if TYPE_CHECKING:
    from datamodules.tokenizer import Tokenizer
    from lightning_models.finetune import LoadReport

OptimizerName = Literal["adam", "adamw", "sgd"]
SchedulerName = Literal["none", "cosine", "linear", "onecycle", "step"]
Stage = Literal["train", "val", "test"]


@runtime_checkable
class CountsFlops(Protocol):
    """A model that counts its training FLOPs, for the throughput and MFU report (the language models).

    A protocol rather than a default on :class:`TaskModule`: a model either counts them or is left out of the
    report, and ``isinstance(model, CountsFlops)`` says which.
    """

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs (forward and backward) per token at context ``seq_len`` (default: the model's own)."""
        ...


@runtime_checkable
class ExposesAttention(Protocol):
    """A model whose attention weights the dashboards draw (the ViT)."""

    def attention_maps(self, x: Tensor) -> Tensor:
        """Attention weights of every layer for inputs ``x``: ``(n_layer, B, n_head, T, T)``, rows summing to 1."""
        ...


class TaskModule(L.LightningModule):
    """Base for every zerotune model: optimizer/scheduler by name, one shared step, metrics per stage.

    Subclasses set ``self.net`` (or override :meth:`forward`) and implement :meth:`compute_loss`,
    :meth:`make_metrics` and :meth:`metric_inputs`.

    Args:
        num_classes: Number of outputs the head produces (classes, or targets for regression). Linked from the
            datamodule by the launcher.
        input_shape: Shape of one sample without the batch axis, e.g. ``(1, 28, 28)``. Linked from the datamodule.
        optimizer: ``adam``, ``adamw`` or ``sgd``.
        lr: Peak learning rate.
        weight_decay: L2 penalty (decoupled for ``adamw``).
        fused: Adam's and AdamW's fused kernel (one kernel for the whole update: a third of the time of the
            per-tensor one for a 22M-parameter encoder on the CPU); ``None`` picks it where the device has one
            (CUDA, and the CPU) unless float16's loss scaling must unscale before clipping.
        momentum: Momentum for ``sgd`` (``beta1`` is not changed for Adam).
        nesterov: Nesterov momentum for ``sgd``.
        scheduler: ``none``, ``cosine`` (per-step cosine decay after warmup), ``linear`` (BERT's: linear decay to 0
            after warmup), ``onecycle`` or ``step``.
        warmup_epochs: Linear warmup length for ``cosine``.
        step_size: Epochs between decays for ``step``.
        gamma: Decay factor for ``step``.
        pretrained: Weights file to start from: a zerotune checkpoint or a plain PyTorch state_dict (e.g.
            torchvision's). Loaded once, before the first fit/validate/test, never over a checkpoint being
            resumed; keys are matched by :func:`~lightning_models.finetune.match_keys` and a report is printed.
        pretrained_skip: Model key prefixes not taken from ``pretrained``, e.g. ``[head.]`` to start a new head
            even when its shape matches.
        backbone_lr_factor: Learning rate of ``self.backbone`` relative to ``lr`` (e.g. 0.1 when fine-tuning);
            the backbone and the rest become separate optimizer parameter groups named ``backbone`` and ``head``.
        compile: ``torch.compile`` the network's submodules in place when training starts (state_dict keys,
            checkpoints and ONNX export are unaffected).
        channels_last: Store 4-D weights channels-last (NHWC) from setup on: oneDNN on the CPU and cuDNN's tensor
            cores run convolutions faster in that layout (conv nets: about 2x on an AVX-512 CPU with bf16-mixed).
    """

    #: Leading parts of pre-trained file keys renamed before matching, e.g. ``{"fc.": "head."}`` for torchvision.
    pretrained_key_map: dict[str, str] = {}

    #: Metric the launcher's checkpoint callback monitors unless the config says otherwise, and its mode.
    monitor: str = "val/acc"
    monitor_mode: Literal["min", "max"] = "max"

    #: What ``forward`` returns, for prediction and the ONNX metadata: ``logits`` (softmax gives the class
    #: probabilities), ``logit`` (one per sample: sigmoid gives the positive class's probability) or ``value``.
    output_kind: Literal["logits", "logit", "value"] = "value"

    #: What the model predicts; callbacks that draw per-task figures read it (``classification``, ``regression``,
    #: ``language_modeling``).
    task: str = "classification"

    #: ``__init__`` arguments a subclass fills from its own (a language model's ``vocab_size`` is its
    #: ``num_classes``): not saved as hyperparameters, so ``load_from_checkpoint`` passes them once.
    derived_hparams: tuple[str, ...] = ()

    #: Axes of the input that the ONNX export keeps dynamic, ``{axis: name}``: any batch size by default; a model
    #: of token sequences adds ``{1: "sequence"}``.
    onnx_dynamic_axes: ClassVar[dict[int, str]] = {0: "batch"}

    #: The tokenizer of a model of text (token ids in), taken from the datamodule in :meth:`setup` and kept in every
    #: checkpoint (``checkpoint["tokenizer"]``), so prediction and fine-tuning read text the way training did;
    #: ``None`` for other models.
    tokenizer: Tokenizer | None = None

    #: Outputs of the head (classes, regression targets, a language model's vocabulary) and the shape of one
    #: sample without the batch axis; set from the ``__init__`` arguments.
    num_classes: int
    input_shape: tuple[int, ...]

    def __init__(
        self,
        num_classes: int = 10,
        input_shape: Sequence[int] = (1, 28, 28),
        optimizer: OptimizerName = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        fused: bool | None = None,
        momentum: float = 0.9,
        nesterov: bool = False,
        scheduler: SchedulerName = "none",
        warmup_epochs: float = 0.0,
        step_size: int = 10,
        gamma: float = 0.1,
        pretrained: str | None = None,
        pretrained_skip: list[str] | None = None,
        backbone_lr_factor: float = 1.0,
        compile: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"model.lr must be positive, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"model.weight_decay must be >= 0, got {weight_decay}")
        if num_classes < 1:
            raise ValueError(f"model.num_classes must be >= 1, got {num_classes}")
        if backbone_lr_factor <= 0:
            raise ValueError(f"model.backbone_lr_factor must be positive, got {backbone_lr_factor}")
        # Collects the arguments of every __init__ in the subclass chain.
        self.save_hyperparameters(ignore=list(self.derived_hparams))
        self.num_classes = int(num_classes)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.example_input_array = torch.zeros(2, *self.input_shape)
        metrics = self.make_metrics()
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        # Set once pre-trained weights were applied or a checkpoint was loaded: either way they are not re-applied.
        self._weights_initialized = False
        #: What ``pretrained`` loaded (:class:`~lightning_models.finetune.LoadReport`), once :meth:`setup` loaded it.
        self.pretrained_report: LoadReport | None = None
        self._compiled = False

    # -- to be provided by task subclasses -------------------------------------------------------------------------
    def make_metrics(self) -> torchmetrics.MetricCollection:
        """Metrics computed at every stage (keys without the stage prefix, e.g. ``acc``)."""
        raise NotImplementedError

    def compute_loss(self, output: Tensor, target: Tensor) -> Tensor:
        """Scalar loss from the network output and the target batch."""
        raise NotImplementedError

    def metric_inputs(self, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Turn the raw output into what the metrics expect (probabilities, flattened predictions...)."""
        return output, target

    def predict_output(self, output: Tensor) -> Tensor:
        """Prediction from raw output: class index for classifiers, value for regressors."""
        return output

    # -- forward and the shared step -------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Run the network: ``(N, *input_shape) -> (N, num_outputs)``."""
        return self.net(x)

    def shared_step(self, batch: tuple[Tensor, Tensor], stage: Stage) -> Tensor | dict[str, Tensor]:
        """One step for any stage: forward, loss, metric update, logging.

        Returns:
            The loss for training; ``{"loss": loss, "output": raw output}`` for validation and test, so callbacks
            (the dashboards) read this batch's output without a second forward pass.
        """
        x, y = batch
        output = self(x)
        loss = self.compute_loss(output, y)
        if stage == "train" and not self._is_logging_step():
            return loss
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(*self.metric_inputs(output.detach(), y))
        if stage == "train":
            # The per-step loss for the curves; the train metrics are logged once, in on_train_epoch_end.
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=x.shape[0])
            return loss
        # Epoch values, reduced across DDP ranks once per epoch.
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=x.shape[0])
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=True)
        return {"loss": loss, "output": output.detach()}

    def _is_logging_step(self) -> bool:
        """Whether the trainer writes logs after this training step (every ``trainer.log_every_n_steps``).

        Training steps are the hot loop: the loss is logged and the train metrics are updated only on the steps
        whose values reach the logger, so the loop carries no per-step logging cost. The epoch's ``train/*``
        metrics are therefore computed over every ``log_every_n_steps``-th batch, an unbiased sample.
        """
        trainer = self._trainer
        if trainer is None:
            return True
        connector = getattr(trainer, "_logger_connector", None)
        return connector is None or bool(connector.should_update_logs)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.shared_step(batch, "train")

    def on_train_epoch_end(self) -> None:
        """Log the epoch's ``train/*`` metrics (computed, synced across DDP ranks by torchmetrics) and reset them.

        Logged as values once per epoch rather than as metric objects on every logging step: handing Lightning a
        metric object costs a device move of its whole state per call, a large share of a small model's step.
        """
        if any(m.update_called for m in self.train_metrics.values()):
            # compute() already synced the metric states across DDP ranks, so every rank holds the same values;
            # sync_dist averages those identical values (one small reduce per epoch) and says so to Lightning.
            self.log_dict(self.train_metrics.compute(), on_step=False, on_epoch=True, sync_dist=True)
        self.train_metrics.reset()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self.shared_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self.shared_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, list | tuple) else batch
        return self.predict_output(self(x))

    # -- pre-trained weights, compilation, checkpoints ---------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Switch to channels-last weights when asked; take the datamodule's tokenizer (text data); load
        ``pretrained`` weights once, before the first fit/validate/test of a model built from scratch.

        Pre-trained weights are skipped when the trainer restores a checkpoint set through ``trainer.ckpt_path`` (the
        launcher's ``--resume`` and ``--ckpt_path``) and for models made by ``load_from_checkpoint``. With
        ``trainer.fit(ckpt_path=...)`` the weights are loaded here and then replaced by the checkpoint's. A weights
        file that holds another tokenizer than the data's is refused before anything is loaded
        (:func:`~lightning_models.finetune.check_pretrained_tokenizer`).

        Raises:
            DataError: the pre-trained file cannot be read, fits no tensor of the model, or holds another tokenizer.
        """
        if self.hparams.get("channels_last"):
            # Convolutions given channels-last weights produce channels-last outputs: the whole net follows.
            self.to(memory_format=torch.channels_last)
        data = self.trainer.datamodule
        tokenizer = data.tokenizer if isinstance(data, DataModule) else None
        pretrained = self.hparams.get("pretrained")
        if pretrained and not self._weights_initialized and self.trainer.ckpt_path is None:
            from lightning_models.finetune import check_pretrained_tokenizer, load_pretrained

            if tokenizer is not None:
                check_pretrained_tokenizer(pretrained, tokenizer)
            report = load_pretrained(
                self, pretrained, skip=self.hparams.get("pretrained_skip") or (), renames=self.pretrained_key_map
            )
            self.pretrained_report = report
            rank_zero_only(print)(str(report))
        self._weights_initialized = True
        if tokenizer is not None:
            self.set_tokenizer(tokenizer)

    def set_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Use ``tokenizer`` from now on (the datamodule's, or a checkpoint's); kept in every checkpoint."""
        self.tokenizer = tokenizer

    def on_train_start(self) -> None:
        """Compile each submodule in place with ``compile: true`` (keys keep their names: no ``_orig_mod.``).

        Done when training starts, after Lightning traced the model for TensorBoard's graph (tracing cannot go
        through compiled code); validation and testing in the same fit then run compiled too. Models made by
        ``load_from_checkpoint`` are eager: quick to export to ONNX or to run once.
        """
        if not self.hparams.get("compile") or self._compiled:
            return
        for child in self.children():
            if not isinstance(child, torchmetrics.Metric | torchmetrics.MetricCollection):
                child.compile()
        self._compiled = True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add the random streams and the tokenizer (``checkpoint["tokenizer"]``, its one place) to the checkpoint."""
        # Lightning restores model, optimizer, scheduler and loops; the random streams (dropout) are added here
        # so that a resumed run draws exactly what the uninterrupted run would have drawn.
        checkpoint["rng_states"] = _rng_states()
        if self.tokenizer is not None:
            checkpoint[TOKENIZER_KEY] = self.tokenizer.to_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Take the checkpoint's tokenizer and, when a trainer restores the checkpoint, hand it to the datamodule
        too (:meth:`~datamodules.base.DataModule.use_tokenizer`: a resumed run keeps its token ids); restore the
        random streams when training resumes."""
        self._weights_initialized = True
        trainer = self._trainer
        tokenizer = checkpoint_tokenizer(checkpoint)
        if tokenizer is not None:
            self.set_tokenizer(tokenizer)
            data = trainer.datamodule if trainer is not None else None
            if isinstance(data, DataModule):
                data.use_tokenizer(tokenizer)
        if trainer is not None and trainer.training and "rng_states" in checkpoint:
            _set_rng_states(checkpoint["rng_states"])

    def optional_checkpoint_keys(self) -> set[str]:
        """``state_dict`` keys a checkpoint of this model may leave out (a LoRA model's frozen base weights, which
        adapters-only checkpoints name instead of holding); none by default."""
        return set()

    def convert_pretrained(self, state: dict[str, Tensor], source: str) -> dict[str, Tensor]:
        """Map the tensors of the pre-trained file ``source`` onto this model's keys before they are matched
        (:func:`~lightning_models.finetune.load_pretrained`); unchanged by default."""
        return state

    def export_module(self) -> nn.Module:
        """What the ONNX export writes: this model by default; a simplified equivalent where there is one (a LoRA
        model's copy with the adapters merged)."""
        return self

    # -- optimization ----------------------------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups: one, or ``backbone`` at ``lr * backbone_lr_factor`` and ``head`` at ``lr``.

        All trainable parameters are included, also those a :class:`~lightning_models.finetune.FreezeSchedule`
        freezes for the first epochs (they get no gradient, so the optimizer skips them until unfrozen).
        """
        factor = self.hparams.get("backbone_lr_factor", 1.0)
        backbone = self.backbone_module()
        if factor == 1.0 or backbone is None:
            return [{"params": [p for p in self.parameters() if p.requires_grad]}]
        in_backbone = {id(p) for p in backbone.parameters()}
        body = [p for p in backbone.parameters() if p.requires_grad]
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in in_backbone]
        groups = [
            {"name": "backbone", "params": body, "lr": self.hparams.lr * factor},
            {"name": "head", "params": rest},
        ]
        return [g for g in groups if g["params"]]

    def backbone_module(self) -> nn.Module | None:
        """The body of a model that splits into a body and a head (the submodule registered as ``self.backbone``),
        which ``backbone_lr_factor`` and :class:`~lightning_models.finetune.FreezeSchedule` act on; ``None`` for a
        model without one."""
        return self._modules.get("backbone")

    def build_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer the hyperparameters name, over :meth:`param_groups` (no trainer needed)."""
        hp = self.hparams
        groups = self.param_groups()
        if hp.optimizer == "sgd":
            return torch.optim.SGD(
                groups, lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov, weight_decay=hp.weight_decay
            )
        cls = torch.optim.AdamW if hp.optimizer == "adamw" else torch.optim.Adam
        fused = self.use_fused([p for g in groups for p in g["params"]]) or None
        return cls(groups, lr=hp.lr, betas=self.adam_betas, weight_decay=hp.weight_decay, fused=fused)

    @property
    def adam_betas(self) -> tuple[float, float]:
        """Adam's ``(beta1, beta2)``: PyTorch's defaults; a model with a ``betas`` setting returns it."""
        return (0.9, 0.999)

    def use_fused(self, params: list[nn.Parameter]) -> bool:
        """Whether Adam/AdamW over ``params`` uses the fused kernel (``fused``; ``None``: where the device has one)."""
        fused = self.hparams.get("fused")
        if fused is not None:
            return bool(fused)
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        supported = _get_fused_kernels_supported_devices()
        trainer = self._trainer
        if trainer is not None and trainer.precision == "16-mixed" and trainer.gradient_clip_val:
            return False  # float16's loss scaling must unscale before clipping, outside the optimizer
        return bool(params) and all(p.device.type in supported and p.is_floating_point() for p in params)

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm=None
    ) -> None:
        """Clip as configured. Under ``bf16-mixed`` the gradients are clipped directly: Lightning's mixed-precision
        plugin refuses any optimizer that unscales inside its step (fused Adam), a check for float16's loss
        scaling, which bfloat16 does not use."""
        if gradient_clip_val and self.trainer.precision == "bf16-mixed":
            params = [p for group in optimizer.param_groups for p in group["params"]]
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        opt = self.build_optimizer()
        if hp.scheduler == "none":
            return opt
        if hp.scheduler == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=hp.step_size, gamma=hp.gamma)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        total = max(1, int(self.trainer.estimated_stepping_batches))
        if hp.scheduler == "onecycle":
            max_lr = [g.get("lr", hp.lr) for g in opt.param_groups]
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=total)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        steps_per_epoch = total / max(1, self.trainer.max_epochs or 1)
        warmup = int(hp.warmup_epochs * steps_per_epoch)
        if hp.scheduler == "linear":
            return {"optimizer": opt, "lr_scheduler": warmup_linear_scheduler(opt, warmup, total)}
        return {"optimizer": opt, "lr_scheduler": warmup_cosine_scheduler(opt, warmup, total, peak_in_warmup=True)}


def _rng_states() -> dict[str, Any]:
    """Global random states (torch CPU and CUDA, Python, NumPy) as types a ``weights_only`` load accepts."""
    np_state = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    version, *rest = states["python"]
    random.setstate((version, tuple(rest[0]), rest[1]))
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


class ClassifierModule(TaskModule):
    """Multi-class classifier: cross-entropy with optional label smoothing, accuracy and macro-F1.

    Args:
        label_smoothing: Cross-entropy label smoothing in ``[0, 1)``.
        **kwargs: See :class:`TaskModule`.
    """

    output_kind = "logits"

    def __init__(self, label_smoothing: float = 0.0, **kwargs: Any) -> None:
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"model.label_smoothing must be in [0, 1), got {label_smoothing}")
        super().__init__(**kwargs)

    def make_metrics(self) -> torchmetrics.MetricCollection:
        n = self.hparams.num_classes
        return torchmetrics.MetricCollection(
            {
                "acc": torchmetrics.classification.MulticlassAccuracy(n, average="micro"),
                "f1": torchmetrics.classification.MulticlassF1Score(n, average="macro"),
            }
        )

    def compute_loss(self, output: Tensor, target: Tensor) -> Tensor:
        return nn.functional.cross_entropy(output, target, label_smoothing=self.hparams.label_smoothing)

    def predict_output(self, output: Tensor) -> Tensor:
        return output.argmax(dim=1)


class BinaryClassifierModule(TaskModule):
    """Binary classifier with a single logit: BCE-with-logits loss, accuracy, F1 and AUROC.

    The sigmoid lives in the loss (numerically stable) and in :meth:`predict_proba`; the exported graph ends
    in the logit.
    """

    output_kind = "logit"

    def make_metrics(self) -> torchmetrics.MetricCollection:
        return torchmetrics.MetricCollection(
            {
                "acc": torchmetrics.classification.BinaryAccuracy(),
                "f1": torchmetrics.classification.BinaryF1Score(),
                "auroc": torchmetrics.classification.BinaryAUROC(),
            }
        )

    def compute_loss(self, output: Tensor, target: Tensor) -> Tensor:
        return nn.functional.binary_cross_entropy_with_logits(output.squeeze(1), target.float())

    def metric_inputs(self, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        return torch.sigmoid(output.squeeze(1)), target.long()

    def predict_output(self, output: Tensor) -> Tensor:
        return (output.squeeze(1) > 0).long()

    def predict_proba(self, x: Tensor) -> Tensor:
        """Probability of the positive class, shape ``(N,)``."""
        return torch.sigmoid(self(x).squeeze(1))


class RegressorModule(TaskModule):
    """Regressor: MSE loss; MSE, MAE and R2 metrics. ``num_classes`` is the number of regression targets."""

    task = "regression"
    monitor = "val/loss"
    monitor_mode = "min"

    def make_metrics(self) -> torchmetrics.MetricCollection:
        return torchmetrics.MetricCollection(
            {
                "mse": torchmetrics.MeanSquaredError(),
                "mae": torchmetrics.MeanAbsoluteError(),
                "r2": torchmetrics.R2Score(),
            }
        )

    def compute_loss(self, output: Tensor, target: Tensor) -> Tensor:
        return nn.functional.mse_loss(output.view_as(target), target)

    def metric_inputs(self, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        return output.view_as(target), target
