"""End-of-run bookkeeping: hparams with ``hp_metric`` for TensorBoard, and the run report's summary printed."""

from __future__ import annotations

from typing import Any

import lightning as L

from experiments.callbacks.report import RunReport


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items() if hasattr(d, "items") else []:
        key = f"{prefix}{k}"
        if hasattr(v, "items"):
            out.update(_flat(v, key + "/"))
        elif isinstance(v, bool | int | float | str) or v is None:
            out[key] = v
        else:
            out[key] = str(v)
    return out


def log_hparams(
    trainer: L.Trainer, model: L.LightningModule, test_metrics: dict[str, float], best_value: float | None = None
) -> float | None:
    """Write the hparams event with ``hp_metric`` (best monitored value) and the test metrics as its metrics.

    Lightning writes no hparams event when ``default_hp_metric=False``, so the call is made here, explicitly,
    once the best value is known. Returns the best monitored value.

    Args:
        best_value: The best monitored value, when the checkpoint callback does not know it yet (a run stopped
            inside a validation hook, before the checkpoint callback saw that epoch).
    """
    if best_value is None:
        ckpt = trainer.checkpoint_callback
        best = ckpt.best_model_score if ckpt is not None else None
        best_value = float(best) if best is not None else None
    logger = trainer.logger
    if logger is None:
        return best_value
    params = _flat(dict(model.hparams), "model/")
    dm = trainer.datamodule
    if dm is not None and dm.hparams:
        params.update(_flat(dict(dm.hparams), "data/"))
    # LightningCLI's bookkeeping entries (_class_path, _instantiator) are not hyperparameters.
    params = {k: v for k, v in params.items() if not k.rsplit("/", 1)[-1].startswith("_")}
    metrics = {"hp_metric": best_value if best_value is not None else float("nan")}
    metrics.update(test_metrics)
    logger.log_hyperparams(params, metrics)
    logger.finalize("success")
    return best_value


def finish_run(trainer: L.Trainer, model: L.LightningModule, report: RunReport) -> None:
    """Log hparams (``hp_metric``: the best monitored value) and print the run report's summary."""
    log_hparams(trainer, model, report.test_metrics)
    print(report.summary())
