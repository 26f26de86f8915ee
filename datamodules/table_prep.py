"""Preprocessing of real tables: column types, then scikit-learn's imputers, scaler and encoders, kept as plain data.

* :func:`infer_columns` decides each feature column's type (numeric, categorical, or dropped as an identifier)
  from its values, unless the config says otherwise.
* :meth:`TablePreprocessing.fit` fits a ``ColumnTransformer`` on the training rows only: numeric columns are
  imputed (``SimpleImputer``, median by default, optional missing-indicator columns) and standardized
  (``StandardScaler``); categorical columns get a ``(missing)`` category for gaps and are one-hot encoded
  (``OneHotEncoder``, unknown categories become all zeros, rare ones share one ``(other)`` column beyond
  ``max_categories``) or ordinal encoded (``OrdinalEncoder``).
* What the fit learned (fill values, means and scales, category vocabularies) is read out of the fitted
  transformers into a JSON-able dict (:meth:`TablePreprocessing.state`), which travels in checkpoints, the run
  folder and the ONNX metadata. :meth:`TablePreprocessing.transform` replays it with NumPy on new tables, and the
  fit checks that the replay reproduces scikit-learn's own output, so prediction applies exactly what training did.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from datamodules.errors import DataError
from datamodules.table_io import TableSource, numbers, texts

Encoding = Literal["onehot", "ordinal"]
Impute = Literal["median", "mean", "most_frequent", "constant"]
NUMERIC, CATEGORICAL, DROPPED = "numeric", "categorical", "dropped"
#: The category that stands for a missing cell in a categorical column.
MISSING = "(missing)"
#: Feature-name suffix of the column that rare (infrequent) categories share.
OTHER = "(other)"
STATE_VERSION = 1


@dataclass
class Column:
    """One feature column as read: its type, values (``float64`` or object strings, ``NaN`` missing) and notes."""

    name: str
    kind: str
    values: np.ndarray | None
    missing: int
    distinct: int = 0
    note: str = ""


def infer_columns(
    table: pa.Table,
    source: TableSource,
    features: Sequence[str],
    numeric: Sequence[str] = (),
    categorical: Sequence[str] = (),
    max_categories: int = 20,
) -> list[Column]:
    """Read and type each feature column.

    A column is numeric when every present cell is a number (or when listed in ``numeric``), categorical when it
    holds text (or is listed in ``categorical``). A text column whose values are nearly all distinct (more than
    ``max_categories`` and more than half of its cells: names, ticket numbers, ids) is dropped, as is a column
    with no values at all; listing it in ``categorical`` keeps it.

    Raises:
        DataError: a column listed in ``numeric`` holds a cell that is not a number (file, column, row, value).
    """
    columns = []
    for name in features:
        raw = table.column(name)
        missing = raw.null_count
        if missing == len(raw) and name not in categorical:
            columns.append(Column(name, DROPPED, None, missing, note="every cell is missing"))
            continue
        if name in numeric:
            columns.append(Column(name, NUMERIC, numbers(raw, name, source), missing))
            continue
        values = None if name in categorical else numbers(raw, name, source, strict=False)
        if values is not None:
            columns.append(Column(name, NUMERIC, values, missing, pc.count_distinct(raw).as_py()))
            continue
        distinct = pc.count_distinct(pc.utf8_trim_whitespace(_as_text(raw))).as_py()
        present = len(raw) - missing
        if name not in categorical and distinct > max_categories and distinct > present / 2:
            note = (
                f"{distinct} distinct values in {present} cells (an identifier?); list it in data.categorical to use it"
            )
            columns.append(Column(name, DROPPED, None, missing, distinct, note))
            continue
        columns.append(Column(name, CATEGORICAL, texts(raw), missing, distinct))
    return columns


def _as_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    is_text = pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
    return column if is_text else column.cast(pa.string())


class TablePreprocessing:
    """Fitted table preprocessing as plain data; :meth:`transform` turns raw columns into model features.

    Args:
        state: What :meth:`state` returned (a JSON-able dict), e.g. read back from a checkpoint.
    """

    def __init__(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise DataError(f"table preprocessing of version {state.get('version')!r} is not supported here")
        self._state = dict(state)
        self.numeric: list[str] = list(state["numeric"]["columns"])
        self.categorical: list[str] = list(state["categorical"]["columns"])
        self.features: list[str] = list(state["features"])
        self._lookups = [
            (list(cats) + list(rare), len(cats), bool(rare))
            for cats, rare in zip(state["categorical"]["categories"], state["categorical"]["infrequent"], strict=True)
        ]

    @property
    def columns(self) -> list[str]:
        """The raw input columns the model needs, numeric first."""
        return self.numeric + self.categorical

    def state(self) -> dict[str, Any]:
        """The fitted preprocessing as JSON-able plain data (lists, strings, numbers)."""
        return dict(self._state)

    # -- fitting -------------------------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        train: Mapping[str, np.ndarray],
        numeric: Sequence[str],
        categorical: Sequence[str],
        *,
        impute: Impute = "median",
        missing_indicator: bool = False,
        standardize: bool = True,
        encoding: Encoding = "onehot",
        max_categories: int | None = 20,
    ) -> tuple[TablePreprocessing, Any]:
        """Fit scikit-learn's transformers on the training rows and read out what they learned.

        Args:
            train: Training rows only: column name -> ``float64`` (numeric) or object (categorical) array.
            numeric: Numeric columns.
            categorical: Categorical columns.
            impute: ``SimpleImputer`` strategy for numeric gaps (``constant`` fills 0).
            missing_indicator: Add a 0/1 column per numeric column that had gaps in training.
            standardize: Standardize numeric (and ordinal-encoded) features.
            encoding: ``onehot`` or ``ordinal`` for categorical columns.
            max_categories: Most one-hot columns per categorical column; rarer categories share an ``(other)``
                column (``None``: no limit).

        Returns:
            The preprocessing and the fitted ``ColumnTransformer`` (scikit-learn's reference transform).
        """
        from sklearn.compose import ColumnTransformer
        from sklearn.impute import SimpleImputer
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

        if max_categories is not None and max_categories < 2:
            raise ValueError(f"data.max_categories must be >= 2 (or null), got {max_categories}")
        parts = []
        if numeric:
            # keep_empty_features: a column with no training values still gives its (zero-filled) feature.
            imputer = SimpleImputer(
                strategy=impute, fill_value=0.0, add_indicator=missing_indicator, keep_empty_features=True
            )
            steps = [("impute", imputer)]
            if standardize:
                steps.append(("scale", StandardScaler()))
            parts.append(("numeric", Pipeline(steps), list(numeric)))
        if categorical:
            if encoding == "onehot":
                encoder = OneHotEncoder(handle_unknown="ignore", max_categories=max_categories, sparse_output=False)
            else:
                encoder = OrdinalEncoder(
                    handle_unknown="use_encoded_value", unknown_value=-1, max_categories=max_categories
                )
            steps = [("impute", SimpleImputer(strategy="constant", fill_value=MISSING)), ("encode", encoder)]
            if standardize and encoding == "ordinal":
                steps.append(("scale", StandardScaler()))
            parts.append(("categorical", Pipeline(steps), list(categorical)))
        transformer = ColumnTransformer(parts, remainder="drop", sparse_threshold=0.0)
        transformer.fit(pd.DataFrame({c: train[c] for c in [*numeric, *categorical]}))
        state = _read_fitted(transformer, list(numeric), list(categorical), encoding)
        state["options"] = {
            "impute": impute,
            "missing_indicator": missing_indicator,
            "standardize": standardize,
            "max_categories": max_categories,
        }
        return cls(state), transformer

    def check_against(self, transformer: Any, data: Mapping[str, np.ndarray], rows: np.ndarray) -> None:
        """Raise unless :meth:`transform` equals scikit-learn's ``transformer`` on ``rows`` of ``data``."""
        sample = {c: data[c][rows] for c in self.columns}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # unknown categories in held-out rows: expected
            expected = np.asarray(transformer.transform(pd.DataFrame(sample)), dtype=np.float64)
        got = self.transform(sample, dtype=np.float64)
        if expected.shape != got.shape or not np.allclose(expected, got, rtol=1e-6, atol=1e-6):
            raise RuntimeError(
                "the saved table preprocessing does not reproduce scikit-learn's transform "
                f"(shapes {expected.shape} vs {got.shape}); please report this with your scikit-learn version"
            )

    # -- applying ------------------------------------------------------------------------------------------------
    def arrays(self, table: pa.Table, source: TableSource) -> dict[str, np.ndarray]:
        """The columns :meth:`transform` needs, read from ``table`` exactly as training read them.

        Raises:
            DataError: a column the model was trained on is missing, or a numeric cell is not a number.
        """
        absent = [c for c in self.columns if c not in table.column_names]
        if absent:
            raise DataError(
                f"{source.path} has no column(s) {absent} that the model was trained on; it needs: {self.columns}"
            )
        data = {c: numbers(table.column(c), c, source) for c in self.numeric}
        data.update({c: texts(table.column(c)) for c in self.categorical})
        return data

    def unknown_categories(self, data: Mapping[str, np.ndarray]) -> list[tuple[str, int, str, int]]:
        """Categories never seen in training: ``(column, first row index, value, count)`` per column with any.

        Missing cells are not counted (they are encoded as training encoded them, or as no category).
        """
        found = []
        for name, (keys, _, _) in zip(self.categorical, self._lookups, strict=True):
            values = data[name]
            codes = self._codes(values, keys)
            unknown = np.flatnonzero((codes < 0) & pd.notna(values))
            if len(unknown):
                found.append((name, int(unknown[0]), str(values[unknown[0]]), len(unknown)))
        return found

    def known_categories(self, column: str) -> list[str]:
        """The categories of ``column`` seen in training."""
        keys, _, _ = self._lookups[self.categorical.index(column)]
        return keys

    def transform(self, data: Mapping[str, np.ndarray], dtype: Any = np.float32) -> np.ndarray:
        """Features ``(N, len(features))`` from raw columns (numeric ``float64`` with ``NaN``, categorical strings).

        The same arithmetic as the fitted scikit-learn transformers, from the plain-data state.
        """
        num, cat = self._state["numeric"], self._state["categorical"]
        n = len(data[self.columns[0]]) if self.columns else 0
        blocks = []
        if self.numeric:
            x = np.column_stack([np.asarray(data[c], dtype=np.float64) for c in self.numeric])  # (N, n_numeric)
            gaps = np.isnan(x)
            x = np.where(gaps, np.asarray(num["fill"], dtype=np.float64), x)
            if num["indicators"]:
                x = np.hstack([x, gaps[:, [self.numeric.index(c) for c in num["indicators"]]].astype(np.float64)])
            if num["mean"] is not None:
                x = (x - np.asarray(num["mean"])) / np.asarray(num["scale"])
            blocks.append(x)
        codes_all = []
        for name, (keys, n_frequent, has_other) in zip(self.categorical, self._lookups, strict=True):
            codes = self._codes(data[name], keys)
            # Known rare categories share the last ("(other)") slot; unknown ones stay -1.
            codes = np.where(codes >= n_frequent, n_frequent, codes)
            if cat["encoding"] == "onehot":
                block = np.zeros((n, n_frequent + has_other), dtype=np.float64)
                rows = np.flatnonzero(codes >= 0)
                block[rows, codes[rows]] = 1.0
                blocks.append(block)
            else:
                codes_all.append(codes.astype(np.float64))
        if codes_all:
            x = np.column_stack(codes_all)
            if cat["mean"] is not None:
                x = (x - np.asarray(cat["mean"])) / np.asarray(cat["scale"])
            blocks.append(x)
        out = np.hstack(blocks) if blocks else np.zeros((n, 0))
        return out.astype(dtype, copy=False)

    @staticmethod
    def _codes(values: np.ndarray, keys: list[str]) -> np.ndarray:
        filled = np.where(pd.isna(values), MISSING, values)
        return np.asarray(pd.Index(keys, dtype=object).get_indexer(filled), dtype=np.int64)


def _read_fitted(transformer: Any, numeric: list[str], categorical: list[str], encoding: str) -> dict[str, Any]:
    """The plain-data state of a fitted ``ColumnTransformer`` built by :meth:`TablePreprocessing.fit`."""
    features: list[str] = []
    num: dict[str, Any] = {"columns": numeric, "fill": [], "indicators": [], "mean": None, "scale": None}
    if numeric:
        pipe = transformer.named_transformers_["numeric"]
        imputer = pipe.named_steps["impute"]
        num["fill"] = np.nan_to_num(imputer.statistics_.astype(np.float64)).tolist()
        if imputer.add_indicator:
            num["indicators"] = [numeric[i] for i in imputer.indicator_.features_]
        if "scale" in pipe.named_steps:
            num["mean"] = pipe.named_steps["scale"].mean_.tolist()
            num["scale"] = pipe.named_steps["scale"].scale_.tolist()
        features += numeric + [f"{c} {MISSING}" for c in num["indicators"]]
    cat: dict[str, Any] = {"columns": categorical, "encoding": encoding, "categories": [], "infrequent": []}
    cat.update({"missing": MISSING, "mean": None, "scale": None})
    if categorical:
        pipe = transformer.named_transformers_["categorical"]
        encoder = pipe.named_steps["encode"]
        rare_all = getattr(encoder, "infrequent_categories_", None) or [None] * len(categorical)
        for name, categories, rare in zip(categorical, encoder.categories_, rare_all, strict=True):
            rare_set = set() if rare is None else {str(v) for v in rare}
            frequent = [str(v) for v in categories if str(v) not in rare_set]
            cat["categories"].append(frequent)
            cat["infrequent"].append(sorted(rare_set))
            if encoding == "onehot":
                features += [f"{name}={v}" for v in frequent] + ([f"{name}={OTHER}"] if rare_set else [])
            else:
                features.append(name)
        if "scale" in pipe.named_steps:
            cat["mean"] = pipe.named_steps["scale"].mean_.tolist()
            cat["scale"] = pipe.named_steps["scale"].scale_.tolist()
    return {"version": STATE_VERSION, "numeric": num, "categorical": cat, "features": features}


# -- the one-screen summary ------------------------------------------------------------------------------------------
def summary_lines(columns: list[Column], prep: TablePreprocessing, max_rows: int = 40) -> list[str]:
    """One line per column: name, type, missing cells, values; long tables are cut to ``max_rows`` lines."""
    width = min(24, max([len(c.name) for c in columns] + [6]))
    lines = [f"  {'column':<{width}}  {'type':<11}  {'missing':>13}  values"]
    onehot = prep.state()["categorical"]["encoding"] == "onehot"
    fills = dict(zip(prep.numeric, prep.state()["numeric"]["fill"], strict=True))
    shown = columns if len(columns) <= max_rows else columns[: max_rows - 1]
    for col in shown:
        n = len(col.values) if col.values is not None else 0
        missing = f"{col.missing}" + (f" ({col.missing / n:.0%})" if col.missing and n else "")
        described = _describe(col, prep, fills, onehot)
        lines.append(f"  {col.name[:width]:<{width}}  {col.kind:<11}  {missing:>13}  {described}")
    if len(shown) < len(columns):
        rest = columns[len(shown) :]
        kinds = {k: sum(c.kind == k for c in rest) for k in (NUMERIC, CATEGORICAL, DROPPED)}
        lines.append(f"  ... and {len(rest)} more columns: " + ", ".join(f"{v} {k}" for k, v in kinds.items() if v))
    return lines


def _describe(col: Column, prep: TablePreprocessing, fills: dict[str, float], onehot: bool) -> str:
    if col.kind == DROPPED:
        return col.note
    if col.kind == NUMERIC:
        v = col.values
        text = f"{_num(np.nanmin(v))} to {_num(np.nanmax(v))}"
        if col.missing:
            text += f", gaps filled with {_num(fills[col.name])}"
        if col.distinct and col.distinct <= 10 and np.all(np.isnan(v) | (v == np.round(v))):
            text += f", {col.distinct} distinct (categories? list it in data.categorical)"
        return text
    counts = pd.Series(np.where(pd.isna(col.values), MISSING, col.values)).value_counts()
    top = ", ".join(f"{k} {v}" for k, v in counts.head(3).items())
    more = f", +{len(counts) - 3} more" if len(counts) > 3 else ""
    i = prep.categorical.index(col.name)
    state = prep.state()["categorical"]
    width = len(state["categories"][i]) + bool(state["infrequent"][i])
    encoded = f"{width} one-hot columns" if onehot else "ordinal codes"
    return f"{len(counts)} categories ({top}{more}) -> {encoded}"


def _num(x: float) -> str:
    return f"{x:.4g}"
