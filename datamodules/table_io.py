"""Reading tables (CSV and Parquet) with Apache Arrow, for training and for prediction alike.

Why pyarrow directly rather than pandas: pandas' fast CSV engine *is* pyarrow's reader, so the speed is the same,
but pyarrow gives the control this module needs in one pass: every CSV column is read as text (the column types
are then decided by one rule, :func:`numbers`, the same way at training and at prediction time, so ``"1"`` in a
category column never turns into ``1.0``), the null markers are exact, rows with a wrong field count are reported
with their number, CSV and Parquet come back as the same ``pyarrow.Table``, and null counts and value counts for
the column summary cost no Python loop. pandas is used where scikit-learn wants a DataFrame.

Row numbers in messages count like a spreadsheet: for a CSV file the header is row 1 and the first data row is row
2; a Parquet file has no header row, its first row is row 1.
"""

from __future__ import annotations

import contextlib
import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from fileio.errors import DataError

#: File suffixes read as tables, and their format.
TABLE_FORMATS = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet"}
#: Cells read as missing (besides any ``na_values`` given): empty, and the usual spellings of "not available".
NULL_VALUES = ("", "?", "NA", "N/A", "n/a", "na", "NaN", "nan", "NAN", "NULL", "null", "Null", "None", "none", "#N/A")


@dataclass(frozen=True)
class TableSource:
    """Where a table came from, for messages: the path as given and the file format."""

    path: str
    format: str

    def row(self, index: int) -> int:
        """Spreadsheet row number of the data row at 0-based ``index`` (a CSV header is row 1)."""
        return index + (2 if self.format == "csv" else 1)


def table_format(path: str | os.PathLike) -> str | None:
    """``"csv"`` or ``"parquet"`` from the file suffix, ``None`` for anything else."""
    return TABLE_FORMATS.get(Path(path).suffix.lower())


def read_table(
    path: str | os.PathLike,
    *,
    delimiter: str | None = None,
    na_values: list[str] | tuple[str, ...] = (),
    fmt: str | None = None,
) -> tuple[pa.Table, TableSource]:
    """Read a whole CSV or Parquet file.

    CSV columns all come back as text (``null`` for missing cells); Parquet columns keep their stored types.

    Args:
        path: The file.
        delimiter: CSV field separator; ``None``: tab for ``.tsv``, else comma.
        na_values: More cell values read as missing.
        fmt: ``"csv"`` or ``"parquet"``; ``None`` decides from the suffix (CSV when unknown).

    Raises:
        DataError: missing, empty, unreadable or malformed file, a file without data rows (a CSV header alone),
            duplicate column names; the message names the file.
    """
    path = Path(path)
    fmt = fmt or table_format(path) or "csv"
    source = TableSource(str(path), fmt)
    if path.is_dir():
        raise DataError(f"{path} is a folder, not a table file")
    if not path.is_file():
        raise DataError(f"{fmt.upper()} file not found: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty: expected a header row naming the columns")
    table = _read_parquet(path) if fmt == "parquet" else _read_csv(path, delimiter, na_values)
    if table.num_rows == 0:
        what = "has a header but no data rows" if fmt == "csv" else "holds no rows"
        raise DataError(f"{path} {what}")
    duplicates = sorted({c for c in table.column_names if table.column_names.count(c) > 1})
    if duplicates:
        raise DataError(f"{path}: duplicate column name(s) {duplicates} in the header")
    if fmt == "parquet" and na_values:
        table = _nullify(table, na_values)
    return table, source


def _read_csv(path: Path, delimiter: str | None, na_values: list[str] | tuple[str, ...]) -> pa.Table:
    import pyarrow.csv as pacsv

    delimiter = delimiter or ("\t" if path.suffix.lower() == ".tsv" else ",")
    header = _csv_header(path, delimiter)
    convert = pacsv.ConvertOptions(
        column_types={name: pa.string() for name in header},
        null_values=[*NULL_VALUES, *na_values],
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
    )
    parse = pacsv.ParseOptions(delimiter=delimiter)
    try:
        return pacsv.read_csv(path, parse_options=parse, convert_options=convert)
    except pa.ArrowInvalid as err:
        message = str(err)
        if "Expected" in message and "columns" in message:
            raise DataError(_field_count_message(path, parse, convert)) from None
        if "UTF8" in message:
            raise DataError(f"{path} is not a UTF-8 text CSV file (corrupt or binary?)") from None
        raise DataError(f"{path} is malformed: {message.splitlines()[0]}") from None
    except OSError as err:
        raise DataError(f"cannot read {path}: {err}") from None


def _csv_header(path: Path, delimiter: str) -> list[str]:
    """The header row's column names (read with Python's csv module: quoting and a UTF-8 BOM are handled)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            for cells in csv.reader(f, delimiter=delimiter):
                if any(c.strip() for c in cells):
                    return cells
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a UTF-8 text CSV file (corrupt or binary?)") from None
    except csv.Error as err:
        raise DataError(f"{path} is malformed in its header row: {err}") from None
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    raise DataError(f"{path} is empty: expected a header row naming the columns")


def _field_count_message(path: Path, parse, convert) -> str:
    """Name the first row whose field count differs from the header's (a second, single-threaded read numbers rows)."""
    import pyarrow.csv as pacsv

    found: list = []

    def handler(row) -> str:
        found.append(row)
        return "error"

    options = pacsv.ParseOptions(delimiter=parse.delimiter, invalid_row_handler=handler)
    with contextlib.suppress(pa.ArrowInvalid):
        pacsv.read_csv(path, pacsv.ReadOptions(use_threads=False), options, convert)
    if not found:
        return f"{path}: a row's field count differs from the header's: the file is truncated or malformed"
    row = found[0]
    where = f"row {row.number}" if row.number is not None else f"row '{row.text[:40]}'"
    return (
        f"{path}: {where} has {row.actual_columns} field(s) but the header has {row.expected_columns}: "
        "the file is truncated or malformed"
    )


def _read_parquet(path: Path) -> pa.Table:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"cannot read {path}: not a readable Parquet file ({first[:120]})") from None


def _nullify(table: pa.Table, na_values: list[str] | tuple[str, ...]) -> pa.Table:
    """Text columns of a Parquet table with ``na_values`` turned into nulls (CSV files do this while parsing)."""
    markers = pa.array(list(na_values), pa.string())
    for i, field in enumerate(table.schema):
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            column = table.column(i)
            table = table.set_column(i, field, pc.if_else(pc.is_in(column, markers), None, column))
    return table


# -- columns to arrays --------------------------------------------------------------------------------------------
def is_text(column: pa.ChunkedArray) -> bool:
    """Whether the column holds strings (every CSV column does before :func:`numbers` decides)."""
    return pa.types.is_string(column.type) or pa.types.is_large_string(column.type)


def numbers(column: pa.ChunkedArray, name: str, source: TableSource, *, strict: bool = True) -> np.ndarray | None:
    """The column as ``float64`` with ``NaN`` for missing cells.

    Text is parsed after trimming spaces; numeric types are cast.

    Args:
        column: The column.
        name: Its name, for messages.
        source: The table's source, for messages.
        strict: Raise on a cell that is not a number; otherwise return ``None`` (used to infer the type).

    Raises:
        DataError: (``strict``) a cell that is not a finite number, naming the column, the row and the value.
    """
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if is_text(column):
        try:  # the common case first: no spaces around the numbers
            values = pc.cast(column, pa.float64())
        except pa.ArrowInvalid:
            trimmed = pc.utf8_trim_whitespace(column)
            try:
                values = pc.cast(trimmed, pa.float64())
            except pa.ArrowInvalid:
                if not strict:
                    return None
                raise DataError(_not_a_number(trimmed, name, source)) from None
    elif _is_number_type(column.type) or (strict and pa.types.is_boolean(column.type)):
        # Booleans are categories unless a column is declared numeric (then false/true are 0/1).
        values = pc.cast(column, pa.float64())
    elif not strict:
        return None
    else:
        raise DataError(f"{source.path}: column '{name}' holds {column.type} values, not numbers")
    array = values.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    infinite = np.isinf(array)
    if infinite.any():
        if not strict:
            return None
        i = int(np.flatnonzero(infinite)[0])
        raise DataError(f"{source.path}: column '{name}', row {source.row(i)}: {array[i]!r} is not a finite number")
    return array


def _is_number_type(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_null(t)


def _not_a_number(trimmed: pa.ChunkedArray, name: str, source: TableSource) -> str:
    values = trimmed.to_numpy(zero_copy_only=False)
    parsed = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy()
    bad = np.flatnonzero(pd.isna(parsed) & pd.notna(values))
    if not len(bad):
        return f"{source.path}: column '{name}' holds values that are not numbers"
    i = int(bad[0])
    more = f" ({len(bad) - 1} more such cells)" if len(bad) > 1 else ""
    return (
        f"{source.path}: column '{name}', row {source.row(i)}: {values[i]!r} is not a number{more}; fix the cell, "
        "add the value to data.na_values (read as missing), or list the column in data.categorical"
    )


def categories(column: pa.ChunkedArray) -> pd.Categorical:
    """The column as categories: trimmed text values in sorted order, missing (or blank) cells coded -1.

    Numbers and booleans become their text (Arrow's formatting: ``1.0`` is ``"1"``). Dictionary-encoded by Arrow,
    so no Python string is made per cell.
    """
    text = _text(column)
    text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
    encoded = pc.dictionary_encode(text).combine_chunks()
    order = pc.array_sort_indices(encoded.dictionary).to_numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    index = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    codes = np.where(index >= 0, rank[np.maximum(index, 0)] if len(rank) else -1, -1)
    names = encoded.dictionary.take(pa.array(order)).to_pylist()
    return pd.Categorical.from_codes(codes, categories=pd.Index(names, dtype=object))


def _text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if not is_text(column):
        column = pc.cast(column, pa.string())
    return pc.utf8_trim_whitespace(column)


def texts(column: pa.ChunkedArray) -> np.ndarray:
    """The column as an object array of trimmed strings, ``NaN`` for missing cells."""
    array = _text(column).to_numpy(zero_copy_only=False).astype(object)
    array[pd.isna(array)] = np.nan
    return array
