"""Table loading benchmark: ``python -m experiments.bench_table [--rows 1000000] [--columns 30] [--keep DIR]``.

Writes a CSV file of the given size into a temporary folder (removed afterwards; ``--keep DIR`` writes it there
and keeps it): a binary target, numeric columns (some with 10% gaps), integer columns, text category columns of 3 to
40 values (some with gaps) and an identifier column, about what a real table holds. Then it times what a run does
before its first training step, through the real code: ``CSVDataModule`` reading the file with pyarrow, typing the
columns, splitting, fitting the scikit-learn preprocessing on the training split, transforming every row (and
checking the saved preprocessing against scikit-learn), as the launcher's ``input_shape`` link triggers it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_table(path: Path, rows: int, columns: int, seed: int = 0) -> dict[str, int]:
    """Write the benchmark CSV; returns how many columns of each kind it has (target included in ``columns``)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    features = columns - 1
    n_cat = max(1, features * 3 // 10)  # 30% categorical
    n_int = max(1, features // 15)
    n_num = features - n_cat - n_int - 1  # one identifier column
    data: dict[str, pa.Array] = {}
    signal = np.zeros(rows)
    for j in range(n_num):
        values = rng.normal(j, 1 + j % 5, rows)
        signal += values * (0.3 if j % 3 == 0 else 0.0)
        gaps = rng.random(rows) < 0.1 if j % 4 == 0 else np.zeros(rows, bool)
        data[f"num_{j}"] = pa.array(np.round(values, 4), mask=gaps)
    for j in range(n_int):
        data[f"count_{j}"] = pa.array(rng.poisson(2 + j, rows))
    for j in range(n_cat):
        k = 3 + (37 * j) // max(1, n_cat - 1)  # 3 to 40 categories
        codes = rng.integers(0, k, rows)
        signal += (codes % 3 == 0) * 0.5
        words = np.array([f"cat{j}_{v}" for v in range(k)], dtype=object)
        gaps = rng.random(rows) < 0.05 if j % 3 == 0 else np.zeros(rows, bool)
        data[f"text_{j}"] = pa.array(words[codes], mask=gaps)
    data["id"] = pa.array([f"row-{i:08d}" for i in range(rows)])
    data["target"] = pa.array((signal + rng.normal(0, 1, rows) > np.median(signal)).astype(np.int64))
    pacsv.write_csv(pa.table(data), path)
    return {"numeric": n_num, "integer": n_int, "categorical": n_cat, "identifier": 1, "target": 1}
