"""Tabular data: your own CSV or Parquet table, or scikit-learn's bundled diabetes and breast-cancer tables.

All share :class:`TabularDataModule`: the table is read once (:mod:`datamodules.table_io`), each feature column's
type is inferred (numeric, categorical, or dropped as an identifier; overridable), rows without a target are
dropped, the rows are split train/val/test deterministically by ``seed``, and scikit-learn's imputers, scaler and
encoders are fitted on the training split only (:mod:`datamodules.table_prep`). A one-screen summary of the columns
is printed once. The fitted preprocessing is plain data: :meth:`TabularDataModule.input_spec` puts it in every
checkpoint (the datamodule's ``state_dict``), the run folder and the ONNX metadata, so prediction applies exactly
what training did.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from lightning.pytorch.utilities import rank_zero_only

from datamodules.base import InMemoryDataModule, Split, split_indices
from datamodules.table_io import TableSource, numbers, read_table, table_format, texts
from datamodules.table_prep import (
    CATEGORICAL,
    NUMERIC,
    Column,
    Encoding,
    Impute,
    TablePreprocessing,
    infer_columns,
    summary_lines,
)
from fileio.errors import DataError

Task = Literal["classification", "regression"]
#: Rows of a table on which the plain-data preprocessing is checked against scikit-learn's transform after fitting.
CHECK_ROWS = 2000


@dataclass
class RawTable:
    """A table as read, before typing and preprocessing.

    Attributes:
        table: Every column, as text (CSV) or typed (Parquet, arrays).
        source: Where it came from, for messages.
        target: Name of the target column.
        class_names: Names of class codes ``0..K-1`` when the target column holds codes; ``None`` when it holds
            the labels themselves (mapped to codes in sorted order).
    """

    table: pa.Table
    source: TableSource
    target: str
    class_names: list[str] | None = None


@dataclass
class PreparedTable:
    """The preprocessed table: features ``x`` ``(N, F)`` float32, targets ``y``, the split indices and the target."""

    x: np.ndarray
    y: np.ndarray
    parts: list[np.ndarray]
    prep: TablePreprocessing
    class_names: list[str] | None
    target: str


def encode_labels(labels: np.ndarray | list[str]) -> tuple[np.ndarray, list[str]]:
    """Map labels to ``0..K-1`` in sorted order (numerically when they are all numbers); returns codes and names."""
    names_raw, codes = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    try:
        order = sorted(range(len(names_raw)), key=lambda i: float(names_raw[i]))
    except ValueError:
        order = list(range(len(names_raw)))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank[codes], [str(names_raw[i]) for i in order]


class TabularDataModule(InMemoryDataModule):
    """Base for tables; subclasses implement :meth:`read_raw`.

    Args:
        task: ``classification`` (class labels of any type) or ``regression`` (numeric target).
        val_fraction: Fraction of rows held out for validation.
        test_fraction: Fraction of rows held out for test.
        features: Feature columns to use; ``None`` takes every column but the target and ``drop``.
        drop: Columns to leave out.
        categorical: Columns to encode as categories even when they hold numbers (e.g. a class code).
        numeric: Columns to read as numbers: a cell that is not a number is then an error naming it.
        encoding: ``onehot`` (one 0/1 column per category) or ``ordinal`` (one code per column) for categories.
        max_categories: Most one-hot columns per categorical column; rarer categories share an ``(other)`` column.
            Text columns with more distinct values than this and than half their cells (names, ids) are dropped
            unless listed in ``categorical``.
        impute: How numeric gaps are filled: ``median``, ``mean``, ``most_frequent`` or ``constant`` (0), with
            statistics of the training split.
        missing_indicator: Add a 0/1 feature per numeric column that has gaps in the training split.
        standardize: Standardize numeric features with the training split's mean and standard deviation.
        standardize_target: Regression only: standardize the target with the training split's statistics
            (``target_mean``/``target_std`` map predictions back).
        **kwargs: Batch size and seed, see :class:`~datamodules.base.InMemoryDataModule`.
    """

    def __init__(
        self,
        task: Task = "classification",
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        features: list[str] | None = None,
        drop: list[str] | None = None,
        categorical: list[str] | None = None,
        numeric: list[str] | None = None,
        encoding: Encoding = "onehot",
        max_categories: int = 20,
        impute: Impute = "median",
        missing_indicator: bool = False,
        standardize: bool = True,
        standardize_target: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if task not in ("classification", "regression"):
            raise ValueError(f"data.task must be 'classification' or 'regression', got {task!r}")
        if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError("data.val_fraction and data.test_fraction must be in (0, 1) and sum to less than 1")
        if encoding not in ("onehot", "ordinal"):
            raise ValueError(f"data.encoding must be 'onehot' or 'ordinal', got {encoding!r}")
        if impute not in ("median", "mean", "most_frequent", "constant"):
            raise ValueError(f"data.impute must be median, mean, most_frequent or constant, got {impute!r}")
        if max_categories < 2:
            raise ValueError(f"data.max_categories must be >= 2, got {max_categories}")
        both = sorted(set(categorical or ()) & set(numeric or ()))
        if both:
            raise ValueError(f"column(s) {both} are listed in both data.categorical and data.numeric")
        self.task = task
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.features = list(features) if features is not None else None
        self.drop = list(drop or ())
        self.categorical = list(categorical or ())
        self.numeric = list(numeric or ())
        self.encoding = encoding
        self.max_categories = max_categories
        self.impute = impute
        self.missing_indicator = missing_indicator
        self.standardize = standardize
        self.standardize_target = standardize_target and task == "regression"
        self.target_mean = 0.0
        self.target_std = 1.0

    def read_raw(self) -> RawTable:
        """Read the whole table (called once, lazily, by :attr:`prepared`)."""
        raise NotImplementedError

    # -- what the launcher links into the model ---------------------------------------------------------------------
    @property
    def source(self) -> str:
        return self.table.source

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        """Number of classes (classification) or of regression targets (1)."""
        return len(self.prepared.class_names or ()) if self.task == "classification" else 1

    @property
    def input_shape(self) -> tuple[int, ...]:  # type: ignore[override]
        """``(F,)``: the number of features after encoding (read, split and fit on first use)."""
        return (len(self.prepared.prep.features),)

    @property
    def class_names(self) -> list[str] | None:  # type: ignore[override]
        return self.prepared.class_names if self.task == "classification" else None

    @property
    def preprocessing(self) -> TablePreprocessing:
        """The preprocessing fitted on the training split."""
        return self.prepared.prep

    def input_spec(self) -> dict[str, Any]:
        """A table: the raw columns, the fitted preprocessing, the target and its classes, as plain data."""
        prep = self.prepared.prep
        spec: dict[str, Any] = {
            "kind": "table",
            "columns": prep.columns,
            "features": prep.features,
            "preprocessing": prep.state(),
            "target": self.prepared.target,
            "task": self.task,
            "class_names": self.class_names,
            "read": self.read_options(),
        }
        if self.task == "regression":
            spec.update(target_mean=self.target_mean, target_std=self.target_std)
        return spec

    def read_options(self) -> dict[str, Any]:
        """How files of this table are read (``delimiter``, ``na_values``), so prediction reads new ones alike."""
        return {"delimiter": None, "na_values": []}

    # -- reading, typing, splitting, fitting -------------------------------------------------------------------------
    @cached_property
    def prepared(self) -> PreparedTable:
        """Read, type, split and preprocess the table (once); prints the column summary."""
        raw = self.read_raw()
        table, source = raw.table, raw.source
        features = self._feature_names(table.column_names, raw)
        y, names, keep, dropped = self._targets(raw)
        if dropped:
            table = table.filter(pa.array(keep))
        columns = infer_columns(table, source, features, self.numeric, self.categorical, self.max_categories)
        numeric = [c.name for c in columns if c.kind == NUMERIC]
        categorical = [c.name for c in columns if c.kind == CATEGORICAL]
        if not numeric and not categorical:
            raise DataError(f"{source.path}: no usable feature columns (all were dropped; see data.categorical)")
        fractions = (1 - self.val_fraction - self.test_fraction, self.val_fraction, self.test_fraction)
        try:
            parts = [p.numpy() for p in split_indices(len(y), fractions, self.seed)]
        except ValueError:
            raise DataError(
                f"{source.path}: {len(y)} rows are too few for val_fraction={self.val_fraction} and "
                f"test_fraction={self.test_fraction}: each of train/val/test needs at least one row"
            ) from None
        data = {c.name: c.values for c in columns if c.values is not None}
        train = parts[0]
        prep, reference = TablePreprocessing.fit(
            {c: v[train] for c, v in data.items()},
            numeric,
            categorical,
            impute=self.impute,
            missing_indicator=self.missing_indicator,
            standardize=self.standardize,
            encoding=self.encoding,
            max_categories=self.max_categories,
        )
        # Training features come from the plain-data replay that prediction uses; it must give scikit-learn's own
        # numbers, checked on training and held-out rows (held-out rows may hold categories training lacks).
        x = prep.transform(data)
        check = np.concatenate([train[:CHECK_ROWS], parts[1][:CHECK_ROWS], parts[2][:CHECK_ROWS]])
        prep.check_against(reference, data, check)
        if self.task == "regression" and self.standardize_target:
            self.target_mean = float(y[train].mean())
            self.target_std = float(y[train].std()) or 1.0
        prepared = PreparedTable(x, y, parts, prep, names, raw.target)
        self._print_summary(source, table.num_rows + dropped, columns, prepared, dropped)
        return prepared

    def _feature_names(self, header: list[str], raw: RawTable) -> list[str]:
        path = raw.source.path
        if raw.target not in header:
            raise DataError(f"{path} has no target column '{raw.target}' (data.target); columns: {header}")
        for key, names in (("features", self.features or []), ("drop", self.drop), ("categorical", self.categorical)):
            unknown = [c for c in names if c not in header]
            if unknown:
                raise DataError(f"{path} has no column(s) {unknown} (data.{key}); columns: {header}")
        unknown = [c for c in self.numeric if c not in header]
        if unknown:
            raise DataError(f"{path} has no column(s) {unknown} (data.numeric); columns: {header}")
        if raw.target in (self.features or []):
            raise DataError(f"{path}: the target column '{raw.target}' is also listed in data.features")
        features = self.features if self.features is not None else [c for c in header if c != raw.target]
        features = [c for c in features if c not in self.drop]
        if not features:
            raise DataError(f"{path}: no feature columns besides the target '{raw.target}'")
        return features

    def _targets(self, raw: RawTable) -> tuple[np.ndarray, list[str] | None, np.ndarray, int]:
        """Targets of the rows that have one, class names, the row mask kept, and how many rows were dropped."""
        column, path, name = raw.table.column(raw.target), raw.source.path, raw.target
        if self.task == "regression":
            values = numbers(column, name, raw.source)
            keep = ~np.isnan(values)
            y, names = values[keep], None
        elif raw.class_names is not None:
            values = numbers(column, name, raw.source)
            keep = ~np.isnan(values)
            y, names = values[keep].astype(np.int64), list(raw.class_names)
        else:
            labels = texts(column)
            keep = np.asarray(pd.notna(labels), dtype=bool)
            y, names = encode_labels(labels[keep])
        if not keep.any():
            raise DataError(f"{path}: the target column '{name}' has no values (every cell is missing)")
        if names is not None and len(set(y.tolist())) < 2:
            value = names[int(y[0])] if names else ""
            raise DataError(
                f"{path}: target '{name}' has a single value '{value}' in {len(y)} rows: "
                "a classifier needs at least two classes"
            )
        return y, names, keep, int((~keep).sum())

    def _print_summary(
        self, source: TableSource, n_rows: int, columns: list[Column], p: PreparedTable, dropped: int
    ) -> None:
        """The one-screen column summary, printed once (by rank 0 under DDP)."""
        head = f"{Path(source.path).name}: {n_rows} rows, {len(columns)} feature columns ({len(p.prep.columns)} used)"
        if p.class_names is not None:
            counts = np.bincount(p.y, minlength=len(p.class_names))
            shown = ", ".join(f"'{n}' {c}" for n, c in list(zip(p.class_names, counts, strict=True))[:6])
            more = f", +{len(p.class_names) - 6} more" if len(p.class_names) > 6 else ""
            head += f"; target '{p.target}': {len(p.class_names)} classes ({shown}{more})"
        else:
            head += f"; target '{p.target}': {p.y.min():.4g} to {p.y.max():.4g}, mean {p.y.mean():.4g}"
        if dropped:
            head += f"; {dropped} rows without a target dropped"
        sizes = " / ".join(f"{len(i)} {s}" for i, s in zip(p.parts, ("train", "val", "test"), strict=True))
        tail = f"  -> {len(p.prep.features)} features; {sizes} rows; preprocessing fitted on the training rows only"
        rank_zero_only(print)("\n".join([head, *summary_lines(columns, p.prep), tail]), flush=True)

    def load_splits(self) -> dict[str, Split]:
        p = self.prepared
        x = torch.from_numpy(p.x)
        y = torch.from_numpy(p.y)
        if self.task == "regression":
            y = ((y - self.target_mean) / self.target_std).float()
        return {
            name: Split(x[idx], y[idx])
            for name, idx in zip(("train", "val", "test"), map(torch.from_numpy, p.parts), strict=True)
        }


class CSVDataModule(TabularDataModule):
    """Your own table: a CSV file with a header row, or a Parquet file (``.parquet``/``.pq``).

    Columns of text become categories, numbers stay numbers, gaps are filled (see :class:`TabularDataModule` for
    the options); the target may hold any labels (mapped to ``0..K-1`` in sorted order, numerically when they are
    numbers; ``class_names`` keeps them). Rows without a target are dropped. Errors name the file, the column and
    the row (as a spreadsheet numbers it: the CSV header is row 1).

    Args:
        path: The CSV or Parquet file.
        target: Name of the target column.
        delimiter: CSV field separator (default: comma, tab for ``.tsv``).
        na_values: More cell values to read as missing, besides empty cells, ``NA``, ``NaN``, ``null``, ``?``...
        **kwargs: Task, columns, encoding, imputation, split fractions, batch size, seed: see
            :class:`TabularDataModule`.
    """

    def __init__(
        self,
        path: str,
        target: str,
        delimiter: str | None = None,
        na_values: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.path = path
        self.target = target
        self.delimiter = delimiter
        self.na_values = list(na_values or ())

    def read_options(self) -> dict[str, Any]:
        return {"delimiter": self.delimiter, "na_values": list(self.na_values)}

    def read_raw(self) -> RawTable:
        path = Path(self.path)
        if not path.is_file() and not path.is_dir():
            kind = "Parquet" if table_format(path) == "parquet" else "CSV"
            raise DataError(f"{kind} file not found: {path} (data.path)")
        table, source = read_table(path, delimiter=self.delimiter, na_values=self.na_values)
        if table.num_rows == 0:
            raise DataError(f"{path} has a header but no data rows")
        return RawTable(table, source, self.target)


class _SklearnTable(TabularDataModule):
    """A table bundled with scikit-learn (no download), through the same typing, split and preprocessing code."""

    loader_name: str = ""

    def read_raw(self) -> RawTable:
        import sklearn.datasets

        data = getattr(sklearn.datasets, self.loader_name)()
        names = [str(n) for n in data.target_names] if self.task == "classification" else None
        columns = {str(n): data.data[:, i].astype(np.float64) for i, n in enumerate(data.feature_names)}
        columns["target"] = data.target.astype(np.float64)
        return RawTable(pa.table(columns), TableSource(f"sklearn {self.loader_name}", "array"), "target", names)


class DiabetesDataModule(_SklearnTable):
    """scikit-learn's diabetes regression table: 442 patients, 10 features, disease progression after a year.

    The target is standardized by default (losses and errors are then in units of the target's training standard
    deviation; R2 is unaffected).

    Args:
        val_fraction: Fraction of rows held out for validation.
        test_fraction: Fraction of rows held out for test.
        standardize: Standardize the features with the training split's statistics.
        standardize_target: Standardize the target with the training split's statistics.
        **kwargs: Batch size and seed, see :class:`~datamodules.base.InMemoryDataModule`.
    """

    loader_name = "load_diabetes"

    def __init__(
        self,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        standardize: bool = True,
        standardize_target: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            task="regression",
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            standardize=standardize,
            standardize_target=standardize_target,
            **kwargs,
        )


class BreastCancerDataModule(_SklearnTable):
    """scikit-learn's Wisconsin breast-cancer table: 569 tumours, 30 features, malignant (0) or benign (1).

    Args:
        val_fraction: Fraction of rows held out for validation.
        test_fraction: Fraction of rows held out for test.
        standardize: Standardize the features with the training split's statistics.
        **kwargs: Batch size and seed, see :class:`~datamodules.base.InMemoryDataModule`.
    """

    loader_name = "load_breast_cancer"

    def __init__(
        self, val_fraction: float = 0.15, test_fraction: float = 0.15, standardize: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(
            task="classification",
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            standardize=standardize,
            **kwargs,
        )
