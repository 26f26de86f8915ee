"""Pre-train -> fine-tune demo: a GPT pre-trained on the standard library, fine-tuned on a package it never saw.

    python -m experiments.finetune_demo [--seeds 0 1 2] [--pretrained CKPT] [--steps 150] [--runs_dir runs]

1. Pre-training (once, seed 0; skipped with ``--pretrained``): ``stdlib_gpt``, the standard library's source with
   the ``email`` package held out, ``--pretrain_steps`` optimizer steps.
2. Language-model transfer, per seed: ``email_gpt_finetune`` on the email package alone (split by file by the
   seed), the same number of steps four ways: ``full`` fine-tuning, ``partial`` (embeddings and the first 2 of 4
   blocks frozen), ``lora`` (rank 8 adapters on every attention and MLP layer) from the pre-trained weights, and
   from ``scratch`` (same model, the pre-trained tokenizer, random weights). Each method has its own learning rate
   (:data:`METHODS`, chosen on seed 0 from short sweeps). Reported: best validation loss and perplexity, the test
   loss, trainable parameters, peak memory (GPU: allocated; CPU: resident memory above the process's level before
   the run) and wall time of each run.
3. Classification transfer, per seed: ``stdlib_classifier`` (which of 8 packages a 12-line snippet comes from) from
   ``--per_class`` training snippets per class, fine-tuned from the pre-trained GPT against the same classifier from
   scratch, plus a linear probe (logistic regression on the frozen pre-trained features).

Why this size: the demo model is ``stdlib_gpt`` itself (4 layers, 128 wide, BPE of 4,096 tokens, 128-token context,
1.3M parameters), so pre-training takes minutes on two CPU cores; the email package is about 100,000 tokens, so
150 steps of 32 x 128 tokens are about six passes over it: enough for the from-scratch model to learn its vocabulary
and for every method to settle, and far too little data for a model from scratch to catch up with one that has
already read ~3 million tokens of Python.

ONNX export, dashboards, text samples and progress bars are off to keep the runs short; every run folder is printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.demos.finetune import METHODS, run
from experiments.rundir import console
from experiments.rundir.console import USAGE_ERROR


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 success, 2 usage or data error)."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.finetune_demo",
        description=__doc__,
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
