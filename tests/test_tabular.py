"""Tables: CSV and Parquet reading, column types, preprocessing fitted on the training split only, its plain-data
state (equal to scikit-learn's transform, JSON and checkpoint safe), the column summary, and data errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import ROOT
from fakedata import titanic_rows, write_titanic

from datamodules import BreastCancerDataModule, CSVDataModule, DiabetesDataModule
from datamodules.base import INPUT_SPEC_KEY, split_indices
from datamodules.table_io import read_table
from datamodules.table_prep import MISSING, TablePreprocessing, infer_columns, sklearn_frame
from fileio.errors import DataError


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.write_text("\n".join(",".join(map(str, r)) for r in [header, *rows]) + "\n")
    return path


@pytest.fixture
def titanic(tmp_path: Path) -> Path:
    return write_titanic(tmp_path / "titanic.csv", n=300, seed=0)


# -- the Titanic layout: text categories, gaps, an identifier -------------------------------------------------------
def test_titanic_like_table_is_typed_summarized_and_encoded(titanic: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dm = CSVDataModule(path=str(titanic), target="survived", seed=0)
    prep = dm.preprocessing
    assert prep.numeric == ["pclass", "age", "sibsp", "fare"]
    assert prep.categorical == ["sex", "embarked", "deck", "alone"]  # name: all distinct, left out
    state = prep.state()["categorical"]
    assert state["categories"][0] == ["female", "male"]
    assert state["categories"][2][0] == MISSING and set(state["categories"][2][1:]) <= set("ABCDEFG")
    assert dm.input_shape == (len(prep.features),) and dm.num_classes == 2 and dm.class_names == ["0", "1"]
    assert "sex=female" in prep.features and "deck=(missing)" in prep.features
    dm.setup()
    x = torch.cat([s.x for s in dm.splits.values()])
    assert x.dtype == torch.float32 and torch.isfinite(x).all()
    assert sum(len(s) for s in dm.splits.values()) == 300

    out = capsys.readouterr().out
    assert out.count("titanic.csv: 300 rows") == 1  # printed once, however often the table is used
    lines = {ln.split()[0]: ln for ln in out.splitlines()[2:] if ln.startswith("  ") and not ln.startswith("  ->")}
    assert "categorical" in lines["sex"] and "2 one-hot columns" in lines["sex"]
    assert "numeric" in lines["age"] and "gaps filled with" in lines["age"] and "%)" in lines["age"]
    assert "dropped" in lines["name"] and "identifier" in lines["name"]
    assert "categories? list it in data.categorical" in lines["pclass"]
    assert len(out.splitlines()) <= 16


def test_column_types_can_be_overridden(titanic: Path) -> None:
    dm = CSVDataModule(
        path=str(titanic), target="survived", categorical=["pclass", "name"], drop=["deck"], encoding="ordinal"
    )
    prep = dm.preprocessing
    assert "pclass" in prep.categorical and "name" in prep.categorical and "deck" not in prep.columns
    assert prep.features == prep.numeric + prep.categorical  # ordinal: one code per categorical column
    with_indicator = CSVDataModule(path=str(titanic), target="survived", missing_indicator=True)
    assert "age (missing)" in with_indicator.preprocessing.features
    numeric_sex = CSVDataModule(path=str(titanic), target="survived", numeric=["sex"])
    with pytest.raises(DataError, match=r"column 'sex', row 2: '(male|female)' is not a number"):
        _ = numeric_sex.input_shape


def test_preprocessing_is_fitted_on_the_training_split_only(tmp_path: Path) -> None:
    """Held-out rows get extreme values, gaps and a category of their own: none of it may reach the statistics."""
    n, seed = 100, 3
    train = set(split_indices(n, (0.7, 0.15, 0.15), seed)[0].tolist())
    rows = []
    for i in range(n):
        if i in train:
            rows.append([f"{i % 10}.5", ["red", "blue"][i % 2], "" if i % 7 == 0 else f"{i % 5}", i % 2])
        else:  # would shift the median, mean, scale and vocabulary if they leaked into the fit
            rows.append(["1000", "purple", "", i % 2])
    path = write_csv(tmp_path / "leak.csv", ["x", "colour", "z", "y"], rows)
    dm = CSVDataModule(path=str(path), target="y", seed=seed)
    state = dm.preprocessing.state()
    train_x = np.array([float(r[0]) for i, r in enumerate(rows) if i in train])
    train_z = np.array([float(r[2]) for i, r in enumerate(rows) if i in train and r[2]])
    assert state["numeric"]["mean"][0] == pytest.approx(train_x.mean())
    assert state["numeric"]["scale"][0] == pytest.approx(train_x.std())
    assert state["numeric"]["fill"][1] == pytest.approx(np.median(train_z))  # median of training rows' z
    assert state["categorical"]["categories"][0] == ["blue", "red"]  # no "purple"
    dm.setup()
    torch.testing.assert_close(dm.splits["train"].x[:, 0].mean(), torch.tensor(0.0), atol=1e-5, rtol=0)
    held = torch.cat([dm.splits["val"].x, dm.splits["test"].x])
    assert (held[:, 0] > 10).all()  # 1000 scaled with the training statistics, not refitted
    assert (held[:, 2:4] == 0).all()  # the unseen "purple": no one-hot column set


def test_plain_data_replay_equals_scikit_learn_on_new_rows(tmp_path: Path) -> None:
    """The saved state, read back from JSON and applied to a separately read file, gives scikit-learn's numbers,
    for rows with categories the training rows never had and gaps everywhere."""
    rows = titanic_rows(200, seed=1)
    new_rows = titanic_rows(80, seed=2)
    for i, row in enumerate(new_rows[:10]):
        row.update(embarked="X", deck="Z", sex="", age="", fare="" if i % 2 else row["fare"])
    both = write_titanic(tmp_path / "both.csv", rows=rows + new_rows)
    new_path = write_titanic(tmp_path / "new.csv", rows=new_rows)
    table, source = read_table(both)
    features = ["pclass", "sex", "age", "sibsp", "fare", "embarked", "deck", "alone"]
    columns = infer_columns(table, source, features)
    data = {c.name: c.values for c in columns}
    numeric = [c.name for c in columns if c.kind == "numeric"]
    categorical = [c.name for c in columns if c.kind == "categorical"]
    train, new = np.arange(200), np.arange(200, 280)
    for kwargs in (
        {},
        {"encoding": "ordinal", "missing_indicator": True, "impute": "mean"},
        {"max_categories": 3, "impute": "most_frequent"},
        {"max_categories": None, "standardize": False, "impute": "constant"},
    ):
        prep, reference = TablePreprocessing.fit({c: v[train] for c, v in data.items()}, numeric, categorical, **kwargs)
        prep.check_against(reference, data, new)  # raises unless equal to scikit-learn on the new rows
        expected = reference.transform(sklearn_frame({c: v[new] for c, v in data.items()}, numeric, categorical))
        expected = expected.toarray() if hasattr(expected, "toarray") else expected
        restored = TablePreprocessing(json.loads(json.dumps(prep.state())))  # as read back from JSON
        new_table, new_source = read_table(new_path)
        separately = restored.arrays(new_table, new_source)
        np.testing.assert_allclose(restored.transform(separately, dtype=np.float64), expected, rtol=1e-12, atol=1e-12)
        assert restored.features == prep.features and len(prep.features) == expected.shape[1]
        unknown = {name: (row, value) for name, row, value, _ in restored.unknown_categories(separately)}
        assert unknown["embarked"] == (0, "X") and unknown["deck"] == (0, "Z") and "sex" not in unknown


def test_state_is_plain_data_that_loads_with_weights_only(titanic: Path, tmp_path: Path) -> None:
    dm = CSVDataModule(path=str(titanic), target="survived")
    state = dm.state_dict()
    spec = state[INPUT_SPEC_KEY]
    assert spec["kind"] == "table" and spec["target"] == "survived" and spec["columns"] == dm.preprocessing.columns
    assert json.loads(json.dumps(spec)) == spec
    path = tmp_path / "state.pt"
    torch.save({"CSVDataModule": state}, path)
    loaded = torch.load(path, weights_only=True)["CSVDataModule"][INPUT_SPEC_KEY]
    assert loaded == spec
    assert TablePreprocessing(loaded["preprocessing"]).known_categories(
        "embarked"
    ) == dm.preprocessing.known_categories("embarked")


def test_parquet_reads_like_the_csv(titanic: Path, tmp_path: Path) -> None:
    rows = titanic_rows(300, seed=0)

    def column(name: str, kind: type) -> pa.Array:
        return pa.array([kind(r[name]) if r[name] != "" else None for r in rows])

    parquet = tmp_path / "titanic.parquet"
    table = {n: column(n, int) for n in ("survived", "pclass", "sibsp")}
    table.update({n: column(n, float) for n in ("age", "fare")})
    table.update({n: column(n, str) for n in ("name", "sex", "embarked", "deck", "alone")})
    pq.write_table(pa.table(table), parquet)
    a = CSVDataModule(path=str(titanic), target="survived")
    b = CSVDataModule(path=str(parquet), target="survived")
    assert sorted(a.preprocessing.features) == sorted(b.preprocessing.features)
    a.setup()
    b.setup()
    order = [b.preprocessing.features.index(f) for f in a.preprocessing.features]
    torch.testing.assert_close(a.splits["train"].x, b.splits["train"].x[:, order])
    assert a.class_names == b.class_names == ["0", "1"]


# -- targets -------------------------------------------------------------------------------------------------------
def test_numeric_table_labels_split_and_train_only_standardization(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = ["setosa", "virginica", "versicolor"]
    rows = [[f"{v:.3f}" for v in rng.normal((i % 3) * 2 + 10, 3, size=3)] + [labels[i % 3]] for i in range(60)]
    path = write_csv(tmp_path / "flowers.csv", ["a", "b", "c", "species"], rows)
    dm = CSVDataModule(path=str(path), target="species", batch_size=8, seed=1)
    assert dm.input_shape == (3,) and dm.num_classes == 3  # right after __init__, for the launcher's link
    assert dm.class_names == ["setosa", "versicolor", "virginica"]
    dm.setup("fit")
    tr, va, te = dm.splits["train"], dm.splits["val"], dm.splits["test"]
    assert (len(tr), len(va), len(te)) == (42, 9, 9)
    assert tr.x.dtype == torch.float32 and tr.x.shape == (42, 3) and tr.y.dtype == torch.int64
    torch.testing.assert_close(tr.x.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(tr.x.std(0, unbiased=False), torch.ones(3), atol=1e-5, rtol=0)
    raw = np.array([[float(v) for v in r[:3]] for r in rows])
    train_idx = split_indices(60, (0.7, 0.15, 0.15), seed=1)[0].numpy()
    np.testing.assert_allclose(dm.preprocessing.state()["numeric"]["mean"], raw[train_idx].mean(0))
    assert not np.allclose(dm.preprocessing.state()["numeric"]["mean"], raw.mean(0))
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3) and y.shape == (8,)
    assert CSVDataModule(path=str(path), target="species", features=["c", "a"]).input_shape == (2,)


def test_regression_targets_numeric_labels_and_rows_without_a_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [[i, i * 0.5, "" if i in (3, 9) else 2 * i + 1] for i in range(22)]
    path = write_csv(tmp_path / "reg.csv", ["x1", "x2", "y"], rows)
    dm = CSVDataModule(path=str(path), target="y", task="regression")
    assert dm.num_classes == 1 and dm.input_shape == (2,)
    dm.setup()
    assert sum(len(s) for s in dm.splits.values()) == 20
    assert "2 rows without a target dropped" in capsys.readouterr().out
    assert dm.splits["train"].y.dtype == torch.float32 and dm.splits["train"].y.dim() == 1
    labels = write_csv(tmp_path / "lab.csv", ["x", "label"], [[i, [9, 10, 2, ""][i % 4]] for i in range(16)])
    dm = CSVDataModule(path=str(labels), target="label")
    assert dm.class_names == ["2", "9", "10"]  # numbers sort as numbers
    assert dm.num_classes == 3 and "4 rows without a target dropped" in capsys.readouterr().out


def test_bundled_tabular_datamodules() -> None:
    diabetes = DiabetesDataModule(seed=0)
    assert diabetes.num_classes == 1 and diabetes.input_shape == (10,) and diabetes.class_names is None
    diabetes.setup()
    assert sum(len(s) for s in diabetes.splits.values()) == 442
    y = diabetes.splits["train"].y
    assert y.dtype == torch.float32 and abs(float(y.mean())) < 1e-4 and diabetes.target_std > 10
    assert diabetes.input_spec()["target_std"] == diabetes.target_std
    cancer = BreastCancerDataModule(seed=0)
    assert cancer.num_classes == 2 and cancer.input_shape == (30,)
    assert cancer.class_names == ["malignant", "benign"]  # the dataset's order, not sorted
    cancer.setup()
    tr = cancer.splits["train"]
    assert tr.y.dtype == torch.int64 and set(tr.y.tolist()) == {0, 1}
    torch.testing.assert_close(tr.x.mean(0), torch.zeros(30), atol=1e-4, rtol=0)


# -- errors --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "kwargs", "expected"),
    [
        (None, {}, ["CSV file not found", "missing.csv", "(data.path)"]),
        ("f1,f2,target\n1,2,a\n", {"target": "label"}, ["no target column 'label'", "'f1', 'f2', 'target'"]),
        ("f1,f2,target\n1,2,a\n3,abc,b\n", {"numeric": ["f2"]}, ["column 'f2', row 3", "'abc' is not a number"]),
        ("f1,f2,target\n1,2,a\n3,inf,b\n", {"numeric": ["f2"]}, ["column 'f2', row 3", "not a finite number"]),
        ("f1,f2,target\n1,2,a\n3,4\n5,6,b\n", {}, ["row 3 has 2 field(s) but the header has 3", "truncated"]),
        ("f1,f2,target\n1,2,a\n3,4,b\n", {}, ["2 rows are too few"]),
        ("f1,f2,target\n1,2,a\n", {"features": ["f1", "f9"]}, ["no column(s) ['f9'] (data.features)"]),
        ("f1,f2,target\n1,2,a\n", {"categorical": ["f7"]}, ["no column(s) ['f7'] (data.categorical)"]),
        (b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x00garbage", {}, ["not a UTF-8 text CSV"]),
        ("f1,f2,target\n1,2,\n3,4,\n", {}, ["target column 'target' has no values"]),
        ("f1,f2,target\n" + "1,2,yes\n" * 50, {}, ["target 'target' has a single value 'yes' in 50 rows"]),
        ("f1,f1,target\n1,2,a\n", {}, ["duplicate column name(s) ['f1']"]),
        ("f1,f2,target\n", {}, ["a header but no data rows"]),
        ("", {}, ["is empty"]),
    ],
)
def test_bad_tables_name_file_column_and_row(tmp_path: Path, content, kwargs: dict, expected: list[str]) -> None:
    path = tmp_path / ("missing.csv" if content is None else "bad.csv")
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    dm = CSVDataModule(path=str(path), **{"target": "target", **kwargs})
    with pytest.raises(DataError) as err:
        _ = dm.num_classes
    msg = str(err.value)
    assert str(path) in msg
    for part in expected:
        assert part in msg, msg


def test_single_class_target_stops_the_launcher_with_one_line(tmp_path: Path) -> None:
    """Before any run folder exists: the table is read while the launcher links num_classes into the model."""
    rows = [[i, i % 3, 1] for i in range(50)]
    write_csv(tmp_path / "patients.csv", ["age", "visits", "outcome"], rows)
    runs = tmp_path / "runs"
    args = ["binary_mlp", "--data", "datamodules.CSVDataModule", "--data.path", "patients.csv"]
    args += ["--data.target", "outcome", "--runs_dir", str(runs)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.run", *args], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "error: patients.csv: target 'outcome' has a single value '1' in 50 rows: a classifier needs at least two "
        "classes"
    ]
    assert not list(runs.rglob("version_*"))
