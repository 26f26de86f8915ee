"""The GPT benchmark's parts run and report: nanoGPT's recipe re-implemented, the tokens/s rows, the race table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fakedata import write_tinyshakespeare

from experiments.benchmarks import gpt as bench_gpt
from experiments.benchmarks import nanogpt as bench_nanogpt


@pytest.fixture(scope="module")
def shakespeare(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tinyshakespeare(tmp_path_factory.mktemp("data"))


def test_nanogpt_recipe_has_nanogpts_model_and_log(
    shakespeare: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench_nanogpt.train(str(shakespeare), str(tmp_path), max_iters=3)
    out = capsys.readouterr().out
    # nanoGPT reports 0.80M for the CPU recipe's model (position embeddings not counted); the alphabet here is
    # the fake file's, smaller than Tiny Shakespeare's 65 characters.
    assert re.search(r"number of parameters: 0\.79M|number of parameters: 0\.80M", out)
    assert re.search(r"(?m)^step 0: train loss 3\.\d+, val loss 3\.\d+$", out)
    assert re.search(r"(?m)^EVAL 0 3\.\d+ \d+\.\d+$", out) and re.search(r"(?m)^EXACT \d\.\d+$", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.bin", "val.bin"]  # nanoGPT's prepare.py files


def test_speed_row_compares_tokens_per_second(shakespeare: Path, tmp_path: Path) -> None:
    row = bench_gpt.speed("shakespeare_char_gpt", str(shakespeare), seconds=0.01, work=str(tmp_path))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "shakespeare_char_gpt" and cells[1] == "12 x 64" and int(cells[2]) >= 20
    hand, zero, ratio = float(cells[4]), float(cells[5]), float(cells[6].rstrip("x"))
    assert hand > 0 and zero > 0 and ratio == pytest.approx(zero / hand, rel=0.01)


@pytest.mark.slow
def test_race_times_both_recipes_to_each_validation(shakespeare: Path, tmp_path: Path) -> None:
    quick = {"trainer.max_steps": 4, "trainer.val_check_interval": 2, "onnx.enabled": False, "samples.enabled": False}
    rows = bench_gpt.race(str(shakespeare), str(tmp_path), recipes=[("quick", quick)], nano_iters=3)
    assert len(rows) == 2 and rows[0].startswith("| nanoGPT CPU recipe") and rows[1].startswith("| quick |")
    wall, reached, final, curve = [c.strip() for c in rows[1].strip("|").split("|")][1:]
    assert float(wall) > 0 and reached == "not reached" and 0 < float(final) < 5
    assert curve.startswith("2: ") and ", 4: " in curve
