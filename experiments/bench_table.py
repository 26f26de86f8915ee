"""``python -m experiments.bench_table``: the table loading benchmark's command line (what it times:
:mod:`experiments.benchmarks.table`, whose first line ``--help`` prints).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from experiments.benchmarks import table
from experiments.benchmarks.table import write_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.bench_table", description=table.__doc__.splitlines()[0]
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the file (default 1,000,000)")
    parser.add_argument("--columns", type=int, default=30, help="columns in the file, the target included")
    parser.add_argument("--keep", default=None, help="write the CSV into this folder and keep it")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.columns < 5 or args.rows < 100:
        parser.error("--columns must be at least 5 and --rows at least 100")
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="zerotune-bench-table-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        path = folder / f"bench_{args.rows}x{args.columns}.csv"
        start = time.perf_counter()
        kinds = write_table(path, args.rows, args.columns)
        size = path.stat().st_size / 2**20
        print(
            f"wrote {path} ({size:.0f} MiB, {args.rows} rows, {args.columns} columns: {kinds}) in "
            f"{time.perf_counter() - start:.1f} s"
        )

        from datamodules import CSVDataModule
        from datamodules.table_io import read_table

        start = time.perf_counter()
        read_table(path)
        read_s = time.perf_counter() - start
        dm = CSVDataModule(path=str(path), target="target")
        start = time.perf_counter()
        shape = dm.input_shape  # what the launcher's link asks for: read, type, split, fit, transform
        total_s = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"read the CSV alone (pyarrow, all columns as text): {read_s:.2f} s")
        print(
            f"load and preprocess ({args.rows} rows x {args.columns} columns -> {shape[0]} features): {total_s:.2f} s "
            f"(peak memory {peak:.1f} GiB)"
        )
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
