"""Tabular data: a CSV file of your own, or scikit-learn's bundled diabetes and breast-cancer tables.

All share :class:`TabularDataModule`, which works from arrays: deterministic train/val/test split by ``seed``,
features standardized with statistics of the training split only, samples ``(N, F)`` float32.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from datamodules.base import InMemoryDataModule, Split, split_indices
from datamodules.errors import DataError

Task = Literal["classification", "regression"]
_MISSING = {"", "na", "nan", "null", "none", "?"}


@dataclass
class Table:
    """A whole table in memory.

    Attributes:
        x: Features ``(N, F)`` float64.
        y: ``(N,)`` int64 class indices ``0..K-1`` (classification) or float64 targets (regression).
        feature_names: The ``F`` feature names.
        class_names: Label of each class index (classification), else ``None``.
        source: What the table came from, for error messages.
    """

    x: np.ndarray
    y: np.ndarray
    feature_names: list[str]
    class_names: list[str] | None
    source: str


def encode_labels(labels: list[str]) -> tuple[np.ndarray, list[str]]:
    """Map labels to ``0..K-1`` in sorted order (numerically when they are all numbers); returns codes and names."""
    unique = set(labels)
    try:
        names = sorted(unique, key=float)
    except ValueError:
        names = sorted(unique)
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[v] for v in labels], dtype=np.int64), names


class TabularDataModule(InMemoryDataModule):
    """Base for tables held as arrays; subclasses implement :meth:`read_table`.

    Args:
        task: ``classification`` (integer class targets) or ``regression`` (float targets).
        val_fraction: Fraction of rows held out for validation.
        test_fraction: Fraction of rows held out for test.
        standardize: Standardize each feature with the training split's mean and standard deviation.
        standardize_target: Regression only: standardize the target with the training split's statistics
            (``target_mean``/``target_std`` map predictions back).
        **kwargs: Batch size and seed, see :class:`~datamodules.base.InMemoryDataModule`.
    """

    def __init__(
        self,
        task: Task = "classification",
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        standardize: bool = True,
        standardize_target: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if task not in ("classification", "regression"):
            raise ValueError(f"data.task must be 'classification' or 'regression', got {task!r}")
        if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError("data.val_fraction and data.test_fraction must be in (0, 1) and sum to less than 1")
        self.task = task
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.standardize = standardize
        self.standardize_target = standardize_target and task == "regression"
        self._table: Table | None = None
        self.feature_mean: torch.Tensor | None = None
        self.feature_std: torch.Tensor | None = None
        self.target_mean = 0.0
        self.target_std = 1.0

    def read_table(self) -> Table:
        """Read the whole table (called once, lazily)."""
        raise NotImplementedError

    @property
    def table(self) -> Table:
        if self._table is None:
            self._table = self.read_table()
        return self._table

    @property
    def source(self) -> str:
        return self.table.source

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        """Number of classes (classification) or of regression targets (1)."""
        return len(self.table.class_names or ()) if self.task == "classification" else 1

    @property
    def input_shape(self) -> tuple[int, ...]:  # type: ignore[override]
        return (len(self.table.feature_names),)

    @property
    def class_names(self) -> list[str] | None:  # type: ignore[override]
        return self.table.class_names if self.task == "classification" else None

    def load_splits(self) -> dict[str, Split]:
        table = self.table
        fractions = (1 - self.val_fraction - self.test_fraction, self.val_fraction, self.test_fraction)
        try:
            parts = split_indices(len(table.y), fractions, self.seed)
        except ValueError:
            raise DataError(
                f"{table.source}: {len(table.y)} rows are too few for val_fraction={self.val_fraction} and "
                f"test_fraction={self.test_fraction}: each of train/val/test needs at least one row"
            ) from None
        x = torch.from_numpy(table.x)
        y = torch.from_numpy(table.y)
        train_x = x[parts[0]]
        if self.standardize:
            self.feature_mean = train_x.mean(0)
            # Constant columns keep their (zero) centred values instead of dividing by zero.
            std = train_x.std(0, unbiased=False)
            self.feature_std = torch.where(std > 1e-12, std, torch.ones_like(std))
            x = (x - self.feature_mean) / self.feature_std
        if self.task == "regression":
            if self.standardize_target:
                train_y = y[parts[0]]
                self.target_mean = float(train_y.mean())
                self.target_std = float(train_y.std(unbiased=False)) or 1.0
                y = (y - self.target_mean) / self.target_std
            y = y.float()
        else:
            y = y.long()
        x = x.float()
        return {name: Split(x[idx], y[idx]) for name, idx in zip(("train", "val", "test"), parts, strict=True)}


class CSVDataModule(TabularDataModule):
    """A CSV file with a header row: one target column, numeric feature columns.

    Every feature cell must be a number; for classification the target may hold any labels (mapped to
    ``0..K-1`` in sorted order, ``class_names`` keeps them). Errors name the file, the column and the row
    (1-based, the header being row 1).

    Args:
        path: The CSV file.
        target: Name of the target column.
        features: Feature columns; ``None`` takes every other column.
        delimiter: Field separator.
        **kwargs: Task, split fractions, standardization, batch size, seed: see :class:`TabularDataModule`.
    """

    def __init__(
        self,
        path: str,
        target: str,
        features: list[str] | None = None,
        delimiter: str = ",",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.path = path
        self.target = target
        self.features = list(features) if features is not None else None
        self.delimiter = delimiter

    def _rows(self):
        """The file's rows as ``(row number, cells)``, blank lines skipped."""
        path = Path(self.path)
        if not path.is_file():
            raise DataError(f"CSV file not found: {path} (data.path)")
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.reader(f, delimiter=self.delimiter, strict=True)
                for cells in reader:
                    if cells and any(c.strip() for c in cells):
                        yield reader.line_num, [c.strip() for c in cells]
        except UnicodeDecodeError as err:
            raise DataError(f"{path} is not a UTF-8 text CSV file (corrupt or binary?): {err.reason}") from None
        except csv.Error as err:
            raise DataError(f"{path} is malformed near line {reader.line_num}: {err}") from None

    def columns(self) -> tuple[list[str], list[str]]:
        """The header and the feature columns to use (validated against the header)."""
        header = next((cells for _, cells in self._rows()), None)
        if header is None:
            raise DataError(f"{self.path} is empty: expected a header row naming the columns")
        duplicates = sorted({c for c in header if header.count(c) > 1})
        if duplicates:
            raise DataError(f"{self.path}: duplicate column name(s) {duplicates} in the header")
        if self.target not in header:
            raise DataError(f"{self.path} has no target column '{self.target}' (data.target); columns: {header}")
        features = self.features if self.features is not None else [c for c in header if c != self.target]
        unknown = [c for c in features if c not in header]
        if unknown:
            raise DataError(f"{self.path} has no column(s) {unknown} (data.features); columns: {header}")
        if self.target in features:
            raise DataError(f"{self.path}: the target column '{self.target}' is also listed in data.features")
        if not features:
            raise DataError(f"{self.path}: no feature columns besides the target '{self.target}'")
        return header, features

    def _number(self, cell: str, column: str, row: int) -> float:
        if cell.lower() in _MISSING:
            raise DataError(
                f"{self.path}: column '{column}', row {row} is empty or NaN ({cell!r}); fill in or drop that row"
            )
        try:
            value = float(cell)
        except ValueError:
            raise DataError(f"{self.path}: column '{column}', row {row}: {cell!r} is not a number") from None
        if not math.isfinite(value):
            raise DataError(f"{self.path}: column '{column}', row {row}: {cell!r} is not a finite number")
        return value

    @property
    def input_shape(self) -> tuple[int, ...]:  # type: ignore[override]
        # The header alone answers this, so the launcher's link does not need the whole file.
        return (len(self.table.feature_names),) if self._table is not None else (len(self.columns()[1]),)

    def read_table(self) -> Table:
        header, features = self.columns()
        cols = [header.index(c) for c in features]
        target_col = header.index(self.target)
        rows = iter(self._rows())
        next(rows)  # the header
        x: list[list[float]] = []
        labels: list[str] = []
        for row, cells in rows:
            if len(cells) != len(header):
                raise DataError(
                    f"{self.path}: row {row} has {len(cells)} field(s) but the header has {len(header)}: "
                    f"the file is truncated or malformed"
                )
            x.append([self._number(cells[i], header[i], row) for i in cols])
            label = cells[target_col]
            if self.task == "regression":
                self._number(label, self.target, row)
            elif label.lower() in _MISSING:
                raise DataError(f"{self.path}: column '{self.target}', row {row} has no label ({label!r})")
            labels.append(label)
        if not x:
            raise DataError(f"{self.path} has a header but no data rows")
        if self.task == "regression":
            y, names = np.array([float(v) for v in labels]), None
        else:
            y, names = encode_labels(labels)
        return Table(np.array(x, dtype=np.float64), y, features, names, str(self.path))


class _SklearnTable(TabularDataModule):
    """A table bundled with scikit-learn (no download), through the same split and standardization code."""

    loader_name: str = ""

    def read_table(self) -> Table:
        import sklearn.datasets

        data = getattr(sklearn.datasets, self.loader_name)()
        names = [str(n) for n in data.target_names] if self.task == "classification" else None
        y = data.target.astype(np.int64 if names else np.float64)
        return Table(data.data.astype(np.float64), y, list(data.feature_names), names, f"sklearn {self.loader_name}")


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
