"""``python -m experiments.finetune_demo``: the pre-train -> fine-tune demo's command line (the demo itself:
:mod:`experiments.demos.finetune`, whose description ``--help`` prints).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.demos import finetune as demo
from experiments.demos.finetune import METHODS, run
from experiments.rundir import console
from experiments.rundir.console import USAGE_ERROR


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 success, 2 usage or data error)."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.finetune_demo",
        description=demo.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fine-tuning seeds (split, init)")
    parser.add_argument("--pretrained", help="a stdlib_gpt checkpoint to start from instead of pre-training")
    parser.add_argument("--pretrain_steps", type=int, default=1500, help="pre-training optimizer steps")
    parser.add_argument("--steps", type=int, default=150, help="fine-tuning steps of every method")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS), help="methods to run")
    parser.add_argument("--per_class", type=int, default=64, help="training snippets per class for classification")
    parser.add_argument(
        "--parts", nargs="+", choices=["lm", "classify"], default=["lm", "classify"],
        help="the language-model transfer, the classification transfer, or both",
    )  # fmt: skip
    parser.add_argument("--runs_dir", default="runs", help="root folder of the runs")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.steps < 1 or args.pretrain_steps < 1 or args.per_class < 1:
        parser.error("--steps, --pretrain_steps and --per_class must be >= 1")
    if args.pretrained and not Path(args.pretrained).is_file():
        parser.error(f"--pretrained: no such checkpoint '{args.pretrained}'")
    from experiments.rundir.stops import TrainingStopped

    console.quiet()
    try:
        report = run(
            args.seeds,
            args.runs_dir,
            args.steps,
            Path(args.pretrained) if args.pretrained else None,
            args.pretrain_steps,
            args.methods,
            args.per_class,
            tuple(args.parts),
        )
    except console.UsageError as err:
        console.error(str(err))
        return USAGE_ERROR
    except TrainingStopped as stop:  # a run was interrupted or failed; it said so and how to resume it
        return stop.outcome.exit_code
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
