"""``python -m experiments.transfer``: the transfer demo's command line (the demo itself:
:mod:`experiments.demos.transfer`, whose description ``--help`` prints).
"""

from __future__ import annotations

import argparse
import sys

from experiments.demos import transfer as demo
from experiments.demos.transfer import report, transfer
from experiments.rundir import console
from experiments.rundir.console import USAGE_ERROR


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 success, 2 usage or data error)."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.transfer",
        description=demo.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--k", type=int, default=10, help="labelled training images per class of digits 5-9")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=list(range(10)), help="one comparison per seed (split, init, order)"
    )
    parser.add_argument("--runs_dir", default="runs", help="root folder of the runs")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.k < 1:
        parser.error(f"--k must be >= 1, got {args.k}")
    from experiments.rundir.stops import TrainingStopped

    console.quiet()
    try:
        results = [transfer(args.k, seed, args.runs_dir) for seed in args.seeds]
    except console.UsageError as err:
        console.error(str(err))
        return USAGE_ERROR
    except TrainingStopped as stop:  # a run was interrupted or failed; it said so and how to resume it
        return stop.outcome.exit_code
    print(report(args.k, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
