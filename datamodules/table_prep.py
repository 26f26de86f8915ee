"""Preprocessing of real tables: column types, then scikit-learn's imputer, scaler and encoders, kept as plain data.

* :func:`infer_columns` decides each feature column's type (numeric, categorical, or dropped as an identifier)
  from its values, unless the config says otherwise. Categorical columns are held as ``pandas.Categorical`` (Arrow
  dictionary-encodes them: no Python string per cell).
* :meth:`TablePreprocessing.fit` fits a ``ColumnTransformer`` on the training rows only: numeric columns are
  imputed (``SimpleImputer``, median by default, optional missing-indicator columns) and standardized
  (``StandardScaler``); categorical columns, a gap being a ``(missing)`` category of its own, are one-hot encoded
  (``OneHotEncoder``: unknown categories become all zeros, rare ones share one ``(other)`` column beyond
  ``max_categories``) or ordinal encoded (``OrdinalEncoder``). The encoders see category codes, which keeps the fit
  fast on millions of rows; their vocabularies are translated back to the category names.
* What the fit learned (fill values, means and scales, vocabularies) is read out of the fitted transformers into a
  JSON-able dict (:meth:`TablePreprocessing.state`) that travels in checkpoints, the run folder and the ONNX
  metadata. :meth:`TablePreprocessing.transform` replays it with NumPy: training features and predictions come from
  this one function, and every fit checks it against scikit-learn's own transform, so prediction applies exactly
  what training did.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from datamodules.table_io import TableSource, categories, numbers
from fileio.errors import DataError

Encoding = Literal["onehot", "ordinal"]
Impute = Literal["median", "mean", "most_frequent", "constant"]
NUMERIC, CATEGORICAL, DROPPED = "numeric", "categorical", "dropped"
#: The category that stands for a missing cell in a categorical column.
MISSING = "(missing)"
#: Feature-name suffix of the column that rare (infrequent) categories share.
OTHER = "(other)"
STATE_VERSION = 1
Values = np.ndarray | pd.Categorical


@dataclass
class Column:
    """One feature column as read: its type, values (``float64`` with ``NaN``, or categories) and notes."""

    name: str
    kind: str
    values: Values | None
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
        distinct = pc.count_distinct(raw).as_py()
        present = len(raw) - missing
        if name not in categorical and distinct > max_categories and distinct > present / 2:
            note = f"{distinct} distinct values in {present} cells (an identifier?); data.categorical keeps it"
            columns.append(Column(name, DROPPED, None, missing, distinct, note))
            continue
        cats = categories(raw)
        columns.append(Column(name, CATEGORICAL, cats, int((cats.codes < 0).sum()), len(cats.categories)))
    return columns


def as_categories(values: Values) -> pd.Categorical:
    """Categories from a ``pandas.Categorical`` (as is) or any array of labels (``NaN``/``None`` missing)."""
    if isinstance(values, pd.Categorical):
        return values
    array = np.asarray(values, dtype=object)
    missing = pd.isna(array)
    return pd.Categorical(np.where(missing, None, array.astype(str)).astype(object))


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
        cat = state["categorical"]
        #: Per categorical column: every known category (frequent ones first), how many are frequent, any rare.
        self._vocab = [
            (pd.Index([*cats, *rare], dtype=object), len(cats), bool(rare))
            for cats, rare in zip(cat["categories"], cat["infrequent"], strict=True)
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
        train: Mapping[str, Values],
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
            train: Training rows only: column name -> ``float64`` array (numeric) or categories.
            numeric: Numeric columns.
            categorical: Categorical columns.
            impute: ``SimpleImputer`` strategy for numeric gaps (``constant`` fills 0).
            missing_indicator: Add a 0/1 column per numeric column that had gaps in training.
            standardize: Standardize numeric (and ordinal-encoded) features.
            encoding: ``onehot`` or ``ordinal`` for categorical columns.
            max_categories: Most one-hot columns per categorical column; rarer categories share an ``(other)``
                column (``None``: no limit).

        Returns:
            The preprocessing and the fitted ``ColumnTransformer``, which takes :func:`sklearn_frame` frames.
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
            steps: list[tuple[str, Any]] = [("impute", imputer)]
            if standardize:
                steps.append(("scale", StandardScaler()))
            parts.append(("numeric", Pipeline(steps), list(numeric)))
        if categorical:
            # The encoders see category codes, -1 standing for a missing cell: a category of its own.
            if encoding == "onehot":
                encoder = OneHotEncoder(handle_unknown="ignore", max_categories=max_categories, sparse_output=True)
            else:
                encoder = OrdinalEncoder(
                    handle_unknown="use_encoded_value", unknown_value=-1, max_categories=max_categories
                )
            steps = [("encode", encoder)]
            if standardize and encoding == "ordinal":
                steps.append(("scale", StandardScaler()))
            parts.append(("categorical", Pipeline(steps), list(categorical)))
        # Sparse one-hot blocks stay sparse inside the fit: nothing the size of the table is densified.
        transformer = ColumnTransformer(parts, remainder="drop", sparse_threshold=1.0)
        transformer.fit(sklearn_frame(train, numeric, categorical))
        names = {c: list(as_categories(train[c]).categories) for c in categorical}
        state = _read_fitted(transformer, list(numeric), list(categorical), encoding, names)
        state["options"] = {
            "impute": impute,
            "missing_indicator": missing_indicator,
            "standardize": standardize,
            "max_categories": max_categories,
        }
        return cls(state), transformer

    def check_against(self, transformer: Any, data: Mapping[str, Values], rows: np.ndarray) -> None:
        """Raise unless :meth:`transform` equals scikit-learn's fitted ``transformer`` on ``rows`` of ``data``.

        ``data`` must be the table the transformer was fitted on (the codes it saw are those of its categories).
        """
        sample = {c: data[c][rows] for c in self.columns}
        expected = transformer.transform(sklearn_frame(sample, self.numeric, self.categorical))
        expected = np.asarray(expected.toarray() if hasattr(expected, "toarray") else expected, dtype=np.float64)
        got = self.transform(sample, dtype=np.float64)
        if expected.shape != got.shape or not np.allclose(expected, got, rtol=1e-6, atol=1e-6):
            raise RuntimeError(
                "the saved table preprocessing does not reproduce scikit-learn's transform "
                f"(shapes {expected.shape} vs {got.shape}); please report this with your scikit-learn version"
            )

    # -- applying ------------------------------------------------------------------------------------------------
    def arrays(self, table: pa.Table, source: TableSource) -> dict[str, Values]:
        """The columns :meth:`transform` needs, read from ``table`` exactly as training read them.

        Raises:
            DataError: a column the model was trained on is missing, or a numeric cell is not a number.
        """
        absent = [c for c in self.columns if c not in table.column_names]
        if absent:
            raise DataError(
                f"{source.path} has no column(s) {absent} that the model was trained on; it needs: {self.columns}"
            )
        data: dict[str, Values] = {c: numbers(table.column(c), c, source) for c in self.numeric}
        data.update({c: categories(table.column(c)) for c in self.categorical})
        return data

    def unknown_categories(self, data: Mapping[str, Values]) -> list[tuple[str, int, str, int]]:
        """Categories never seen in training: ``(column, first row index, value, count)`` per column with any.

        Missing cells are not counted (they are encoded as training encoded them, or as no category).
        """
        found = []
        for name, (keys, _, _) in zip(self.categorical, self._vocab, strict=True):
            cats = as_categories(data[name])
            unknown = np.flatnonzero((cats.codes >= 0) & (_codes(cats, keys) < 0))
            if len(unknown):
                found.append((name, int(unknown[0]), str(cats[unknown[0]]), len(unknown)))
        return found

    def known_categories(self, column: str) -> list[str]:
        """The categories of ``column`` seen in training."""
        return list(self._vocab[self.categorical.index(column)][0])

    def transform(self, data: Mapping[str, Values], dtype: Any = np.float32) -> np.ndarray:
        """Features ``(N, len(features))`` from raw columns (numeric ``float64`` with ``NaN``, categories).

        The arithmetic of the fitted scikit-learn transformers, from the plain-data state, computed in float64.
        """
        num, cat = self._state["numeric"], self._state["categorical"]
        n = len(data[self.columns[0]]) if self.columns else 0
        out = np.zeros((n, len(self.features)), dtype=dtype)
        j = 0
        if self.numeric:
            mean, scale = num["mean"], num["scale"]
            extra = [self.numeric.index(c) for c in num["indicators"]]
            for i, name in enumerate([*self.numeric, *[None] * len(extra)]):
                if name is not None:
                    x = np.asarray(data[name], dtype=np.float64)
                    x = np.where(np.isnan(x), num["fill"][i], x)
                else:  # a missing-indicator column
                    x = np.isnan(np.asarray(data[self.numeric[extra[i - len(self.numeric)]]], dtype=np.float64))
                    x = x.astype(np.float64)
                out[:, j] = (x - mean[i]) / scale[i] if mean is not None else x
                j += 1
        for k, (name, (keys, n_frequent, has_other)) in enumerate(zip(self.categorical, self._vocab, strict=True)):
            codes = _codes(as_categories(data[name]), keys)
            # Known rare categories share the last ("(other)") slot; unknown ones stay -1.
            codes = np.where(codes >= n_frequent, n_frequent, codes)
            if cat["encoding"] == "onehot":
                rows = np.flatnonzero(codes >= 0)
                out[rows, j + codes[rows]] = 1.0
                j += n_frequent + has_other
            else:
                x = codes.astype(np.float64)
                out[:, j] = (x - cat["mean"][k]) / cat["scale"][k] if cat["mean"] is not None else x
                j += 1
        return out


def _codes(cats: pd.Categorical, keys: pd.Index) -> np.ndarray:
    """Index of each value in ``keys`` (a missing cell: of ``(missing)``), ``-1`` when absent."""
    lookup = keys.get_indexer(np.asarray(cats.categories, dtype=object))
    missing = keys.get_loc(MISSING) if MISSING in keys else -1
    codes = np.asarray(cats.codes, dtype=np.int64)
    mapped = lookup[np.maximum(codes, 0)] if len(lookup) else np.full(len(codes), -1)
    return np.where(codes >= 0, mapped, missing)


def sklearn_frame(data: Mapping[str, Values], numeric: Sequence[str], categorical: Sequence[str]) -> pd.DataFrame:
    """What the fitted ``ColumnTransformer`` takes: numeric columns, and category codes (-1: missing) as floats."""
    frame = {c: np.asarray(data[c], dtype=np.float64) for c in numeric}
    frame.update({c: as_categories(data[c]).codes.astype(np.float64) for c in categorical})
    return pd.DataFrame(frame)


def _read_fitted(
    transformer: Any, numeric: list[str], categorical: list[str], encoding: str, names: dict[str, list[str]]
) -> dict[str, Any]:
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
    cat.update({"mean": None, "scale": None})
    if categorical:
        pipe = transformer.named_transformers_["categorical"]
        encoder = pipe.named_steps["encode"]
        rare_all = getattr(encoder, "infrequent_categories_", None) or [None] * len(categorical)
        for name, codes, rare in zip(categorical, encoder.categories_, rare_all, strict=True):

            def label(code: float, name: str = name) -> str:
                return MISSING if code < 0 else str(names[name][int(code)])

            rare_codes = set() if rare is None else {float(v) for v in rare}
            frequent = [label(v) for v in codes if float(v) not in rare_codes]
            cat["categories"].append(frequent)
            cat["infrequent"].append([label(v) for v in sorted(rare_codes)])
            if encoding == "onehot":
                features += [f"{name}={v}" for v in frequent] + ([f"{name}={OTHER}"] if rare_codes else [])
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
    fills = dict(zip(prep.numeric, prep.state()["numeric"]["fill"], strict=True))
    shown = columns if len(columns) <= max_rows else columns[: max_rows - 1]
    for col in shown:
        n = len(col.values) if col.values is not None else 0
        missing = f"{col.missing}" + (f" ({col.missing / n:.0%})" if col.missing and n else "")
        described = _describe(col, prep, fills)
        lines.append(f"  {col.name[:width]:<{width}}  {col.kind:<11}  {missing:>13}  {described}")
    if len(shown) < len(columns):
        rest = columns[len(shown) :]
        kinds = {k: sum(c.kind == k for c in rest) for k in (NUMERIC, CATEGORICAL, DROPPED)}
        lines.append(f"  ... and {len(rest)} more columns: " + ", ".join(f"{v} {k}" for k, v in kinds.items() if v))
    return lines


def _describe(col: Column, prep: TablePreprocessing, fills: dict[str, float]) -> str:
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
    cats = as_categories(col.values)
    counts = np.bincount(cats.codes + 1, minlength=len(cats.categories) + 1)  # slot 0: missing cells
    labels = [MISSING, *map(str, cats.categories)]
    top = sorted((i for i in range(len(counts)) if counts[i]), key=lambda i: -counts[i])
    shown = ", ".join(f"{labels[i]} {counts[i]}" for i in top[:3]) + (f", +{len(top) - 3} more" if len(top) > 3 else "")
    state = prep.state()["categorical"]
    i = prep.categorical.index(col.name)
    width = len(state["categories"][i]) + bool(state["infrequent"][i])
    encoded = f"{width} one-hot columns" if state["encoding"] == "onehot" else "ordinal codes"
    return f"{len(top)} categories ({shown}) -> {encoded}"


def _num(x: float) -> str:
    return f"{x:.4g}"
