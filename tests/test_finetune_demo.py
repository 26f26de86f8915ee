"""The pre-train -> fine-tune demo end to end on tiny data: every method's row, the margins against scratch, the
classification transfer table, and its argument errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pretrained_fixtures import SHAPE, TEXT

from experiments import finetune_demo
from experiments.demos import finetune as finetune_core


def test_demo_reports_every_method_and_the_classification_transfer(
    tiny_gpt_ckpt: Path, code_corpus: Path, labelled_csv: Path, tmp_path: Path
) -> None:
    lm = {"data.path": str(code_corpus), "data.cache_dir": str(tmp_path / "tok"), "trainer.val_check_interval": 2,
          "model.warmup_steps": 1, **SHAPE, **TEXT}  # fmt: skip
    cls = {"data.path": str(labelled_csv), "data.block_size": 32, "trainer.max_epochs": 1, **SHAPE}
    report = finetune_core.run(
        [0], str(tmp_path / "runs"), steps=2, pretrained=tiny_gpt_ckpt, per_class=8, extra_lm=lm, extra_cls=cls
    )
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\s+0\s+(full|partial|lora|scratch)\s.*$", report, re.M)}
    assert set(rows) == {"full", "partial", "lora", "scratch"}, report
    share = {m: float(re.search(r"([\d.]+)%", row).group(1)) for m, row in rows.items()}
    assert share["full"] == share["scratch"] == 100.0 and 0 < share["lora"] < 30 and share["partial"] < 100
    assert re.search(r"full: pre-trained beats scratch on [01] of 1 seeds", report)
    assert re.search(r"lora: pre-trained beats scratch on [01] of 1 seeds", report)
    table = report.split("classification transfer:")[1]
    accs = [float(v) for v in re.search(r"^\s+0\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", table, re.M).groups()]
    assert all(0.0 <= a <= 1.0 for a in accs), table
    assert "which of 3 packages" in table


def test_demo_argument_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        finetune_demo.main(["--pretrained", str(tmp_path / "missing.ckpt")])
    assert exit_info.value.code == 2
    assert "--pretrained: no such checkpoint" in capsys.readouterr().err
