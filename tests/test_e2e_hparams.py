"""A real browser on a real study: TensorBoard's HParams tab shows one row per trial with the searched settings.

Uses the headless Chromium of ``test_e2e_browser.py``. The docs' picture is made from a finished study with
``ZEROTUNE_SWEEP_DIR=runs/digits_cnn/sweep-0 ZEROTUNE_SCREENSHOT_DIR=docs python -m pytest tests/test_e2e_hparams.py``
(saved as ``hparams.png``); without ``ZEROTUNE_SWEEP_DIR`` the test runs a 2-trial grid study of its own.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

# Skips this module as well when Chromium or Playwright is missing.
from test_e2e_browser import browser, save_screenshot, serving  # noqa: E402, F401

SWEEP_DIR = os.environ.get("ZEROTUNE_SWEEP_DIR")


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if SWEEP_DIR:
        return Path(SWEEP_DIR)
    from experiments.sweep import main

    runs = tmp_path_factory.mktemp("hparams") / "runs"
    args = ["digits_cnn", "--runs_dir", str(runs), "--sampler", "grid", "--space", "none", "--pruner", "none"]
    args += ["--param", "model.lr={choice: [1.0e-7, 0.01]}", "--trainer.max_epochs", "1"]
    args += ["--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2"]
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(args) == 0, out.getvalue()
    return runs / "digits_cnn" / "sweep-0"


def test_hparams_tab_has_one_row_per_trial(sweep_dir: Path, browser: object, tmp_path: Path) -> None:  # noqa: F811
    trials = sorted(p.name for p in sweep_dir.glob("trial_*") if (p / "config.yaml").is_file())
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(sweep_dir), "--host", "127.0.0.1"]
    with serving([*command, "--port", "0"], tmp_path / "tensorboard.log", r"(http://127\.0\.0\.1:\d+)/") as url:
        page = browser.new_page()
        page.set_viewport_size({"width": 1500, "height": 40 * len(trials) + 260})
        page.goto(url + "/#hparams")
        cells = page.locator("tf-hparams-table-view vaadin-grid-cell-content")
        # The table lists each trial by its folder; the columns are the searched settings and the metrics.
        for name in trials:
            cells.get_by_text(name, exact=True).first.wait_for(timeout=60_000)
        headers = [" ".join(t.split()) for t in page.locator("tf-hparams-table-view .table-header").all_text_contents()]
        assert "model.lr" in headers and "best val/acc" in headers and "val/loss" in headers, headers
        assert not any(h.startswith("data/") for h in headers), headers  # settings not searched stay out
        time.sleep(1.0)
        save_screenshot(page, "hparams.png", tmp_path)
        page.close()
