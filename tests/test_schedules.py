"""The warmup-cosine learning-rate schedule, pinned step by step for both of its users: every model's
``scheduler: cosine`` (warmup in epochs, decay to zero at the run's last step) and the language models' (warmup in
steps, decay to ``min_lr_ratio`` at ``lr_decay_steps``, nanoGPT's). The numbers are written out, not recomputed with
the code's formula, so a change of either schedule fails here."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lightning_models import GPT, LinearRegression, TaskModule


def attach(model: TaskModule, total_steps: int, max_epochs: int) -> None:
    """What ``configure_optimizers`` reads of a trainer: the run's optimizer steps and epochs."""
    model._trainer = SimpleNamespace(
        estimated_stepping_batches=total_steps, max_epochs=max_epochs, precision="32-true", gradient_clip_val=None
    )


def learning_rates(model: TaskModule, steps: int) -> list[float]:
    """The learning rate of the first parameter group at each of the first ``steps`` optimizer steps."""
    config = model.configure_optimizers()
    assert config["lr_scheduler"]["interval"] == "step"
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_every_models_cosine_warms_up_over_epochs_and_decays_to_zero_at_the_last_step() -> None:
    model = LinearRegression(input_shape=(3,), num_classes=1, lr=0.1, scheduler="cosine", warmup_epochs=1)
    attach(model, total_steps=40, max_epochs=4)  # 10 steps per epoch: a warmup of 10 steps
    lr = learning_rates(model, 41)
    # Warmup (step + 1) / 10: the peak is reached on the last warmup step and held one more step.
    assert lr[:3] == pytest.approx([0.01, 0.02, 0.03])
    assert lr[9] == pytest.approx(0.1) and lr[10] == pytest.approx(0.1)
    # Then 0.1 * (1 + cos(pi * (step - 10) / 30)) / 2: half at step 25, zero at step 40.
    assert lr[11] == pytest.approx(0.09972609476841367)
    assert lr[25] == pytest.approx(0.05)
    assert lr[39] == pytest.approx(0.0002739052315863355)
    assert lr[40] == pytest.approx(0.0, abs=1e-12)


def test_every_models_cosine_without_warmup_starts_at_the_peak() -> None:
    model = LinearRegression(input_shape=(3,), num_classes=1, lr=0.1, scheduler="cosine")
    attach(model, total_steps=8, max_epochs=2)
    assert learning_rates(model, 9) == pytest.approx(
        [0.1, 0.09619397662556434, 0.08535533905932738, 0.06913417161825449, 0.05, 0.030865828381745515,
         0.014644660940672627, 0.0038060233744356634, 0.0],
        abs=1e-12,
    )  # fmt: skip


def tiny_gpt(**kwargs) -> GPT:
    torch.manual_seed(0)
    return GPT(vocab_size=16, block_size=4, n_layer=1, n_head=1, n_embd=8, fused=False, **kwargs)


def test_language_models_warm_up_over_steps_and_decay_to_the_minimum_ratio() -> None:
    model = tiny_gpt(lr=1e-3, warmup_steps=4, lr_decay_steps=20, min_lr_ratio=0.1)
    attach(model, total_steps=100, max_epochs=1)
    lr = learning_rates(model, 30)
    # Warmup (step + 1) / 5 (nanoGPT's): the peak comes on the first step after warmup.
    assert lr[:5] == pytest.approx([2e-4, 4e-4, 6e-4, 8e-4, 1e-3])
    # Then the cosine from the peak to 0.1 of it at step 20 (0.55 of it halfway, at step 12), then constant.
    assert lr[5] == pytest.approx(0.0009913533761814538)
    assert lr[12] == pytest.approx(0.00055)
    assert lr[19] == pytest.approx(0.00010864662381854631)
    assert lr[20:] == pytest.approx([1e-4] * 10)
    # Every parameter group follows it (decay and no_decay).
    config = model.configure_optimizers()
    assert len(config["optimizer"].param_groups) == 2


def test_language_models_decay_over_the_whole_run_by_default() -> None:
    model = tiny_gpt(lr=1e-3, warmup_steps=0, min_lr_ratio=0.0)
    attach(model, total_steps=4, max_epochs=1)
    assert learning_rates(model, 6) == pytest.approx(
        [1e-3, 0.0008535533905932737, 0.0005, 0.00014644660940672628, 0.0, 0.0], abs=1e-12
    )
