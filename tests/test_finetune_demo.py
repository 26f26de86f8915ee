"""The pre-train -> fine-tune demo end to end on tiny data: every method's row with the numbers its seeded tiny
setting produces, each fine-tuning method ahead of scratch and the report saying so, the classification transfer
table, and its argument errors."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from pretrained_fixtures import SHAPE, TEXT

from experiments import finetune_demo
from experiments.demos import finetune as finetune_core

#: What the demo reports for its tiny setting below (seed 0, 2 steps): trainable and total parameters (LoRA adds its
#: adapters to the total) and validation loss of each method. Every fine-tuning method ends well below scratch (by 0.17
#: to 0.23 nats/token), far beyond the tolerance.
TINY_LM = {
    "full": (35_360, 35_360, 5.350),
    "partial": (32, 35_360, 5.413),
    "lora": (8_192, 43_552, 5.408),
    "scratch": (35_360, 35_360, 5.583),
}
#: Test accuracy on the tiny labelled set's 12 test snippets: fine-tuned, from scratch, linear probe.
TINY_CLASSIFY = (3 / 12, 4 / 12, 5 / 12)
LM_ROW = re.compile(
    r"^\s+0\s+(?P<method>full|partial|lora|scratch)\s+(?P<trainable>[\d,]+)\s+(?P<share>[\d.]+)%\s+(?P<val>[\d.]+)\s+"
    r"(?P<ppl>[\d.]+)\s+(?P<test>[\d.]+)\s+(?P<gain>[+-][\d.]+)?\s+\d+\s+\d+s$",
    re.M,
)


def test_demo_reports_every_method_and_the_classification_transfer(
    tiny_gpt_ckpt: Path, code_corpus: Path, labelled_csv: Path, tmp_path: Path
) -> None:
    lm = {"data.path": str(code_corpus), "data.cache_dir": str(tmp_path / "tok"), "trainer.val_check_interval": 2,
          "model.warmup_steps": 1, **SHAPE, **TEXT}  # fmt: skip
    cls = {"data.path": str(labelled_csv), "data.block_size": 32, "trainer.max_epochs": 1, **SHAPE}
    report = finetune_core.run(
        [0], str(tmp_path / "runs"), steps=2, pretrained=tiny_gpt_ckpt, per_class=8, extra_lm=lm, extra_cls=cls
    )
    assert "language-model transfer: email package, 2 fine-tuning steps" in report, report
    rows = {m["method"]: m for m in LM_ROW.finditer(report)}
    assert list(rows) == list(TINY_LM), report
    scratch = float(rows["scratch"]["val"])
    for method, (trainable, total, val_loss) in TINY_LM.items():
        row = rows[method]
        assert int(row["trainable"].replace(",", "")) == trainable, row[0]
        assert float(row["share"]) == pytest.approx(100 * trainable / total, abs=0.005), row[0]
        assert float(row["val"]) == pytest.approx(val_loss, abs=0.01), row[0]
        assert float(row["ppl"]) == pytest.approx(math.exp(float(row["val"])), rel=1e-3), row[0]
        assert float(row["test"]) == pytest.approx(val_loss, abs=0.02), row[0]  # the same email text, other files
        if method == "scratch":
            assert row["gain"] is None, row[0]
            continue
        # The pre-trained start is ahead after 2 steps, and the report says so: the margin and the closing line.
        gain = scratch - float(row["val"])
        assert gain > 0.1 and float(row["gain"]) == pytest.approx(gain, abs=0.0015), row[0]
        closing = f"{method}: pre-trained beats scratch on 1 of 1 seeds, validation loss lower by {row['gain'][1:]} to "
        assert f"{closing}{row['gain'][1:]} nats/token" in report, report
    # One seed: no mean rows, no tally of wins.
    assert not re.search(r"^\s*mean\s", report, re.M) and "ahead of scratch on" not in report, report
    table = report.split("classification transfer:")[1]
    assert table.startswith(" which of 3 packages a snippet comes from, 8 training snippets per class"), table
    accs = [float(v) for v in re.search(r"^\s+0\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", table, re.M).groups()]
    # 12 test snippets: one snippet either way is all a different CPU's rounding could move an untrained classifier.
    assert accs == pytest.approx(TINY_CLASSIFY, abs=1 / 12 + 1e-3), table


def test_demo_argument_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        finetune_demo.main(["--pretrained", str(tmp_path / "missing.ckpt")])
    assert exit_info.value.code == 2
    assert "--pretrained: no such checkpoint" in capsys.readouterr().err
