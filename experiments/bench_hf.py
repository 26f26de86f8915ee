"""``python -m experiments.bench_hf``: the fine-tuning race's command line (what it runs:
:mod:`experiments.benchmarks.hf_race`, whose first line ``--help`` prints).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.benchmarks import hf_race
from experiments.benchmarks.hf_race import RaceSettings
from experiments.rundir import console
from experiments.rundir.console import USAGE_ERROR


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench_hf", description=hf_race.__doc__.splitlines()[0])
    parser.add_argument(
        "--model", required=True, help="pre-trained model folder (or hf:ORG/NAME), e.g. all-MiniLM-L6-v2"
    )
    parser.add_argument("--data_dir", required=True, help="GLUE-layout folder with train.tsv and dev.tsv (SST-2)")
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps of each side (default 600)")
    parser.add_argument("--batch_size", type=int, default=32, help="texts per step (default 32)")
    parser.add_argument("--max_length", type=int, default=64, help="token cap per text (default 64)")
    parser.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (default 1e-4)")
    parser.add_argument("--eval_every", type=int, default=100, help="steps between dev evaluations (default 100)")
    parser.add_argument(
        "--out", default="runs/bench_hf", help="folder of the table, curve (PNG, CSV) and zerotune's run"
    )
    parser.add_argument("--sides", default="transformers,zerotune", help="which sides run, in order")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    unknown = set(args.sides.split(",")) - {"transformers", "zerotune"}
    if unknown:
        parser.error(f"--sides: unknown side(s) {sorted(unknown)}; choose from transformers, zerotune")
    for path, what in ((args.model, "--model"), (args.data_dir, "--data_dir")):
        if not str(path).startswith("hf:") and not Path(path).is_dir():
            print(
                f"error: {what} '{path}' is not a folder; pass the model folder and the SST-2 folder", file=sys.stderr
            )
            return USAGE_ERROR
    try:
        import transformers  # noqa: F401
    except ImportError:
        print("error: the race's side (a) is a transformers loop: pip install transformers", file=sys.stderr)
        return USAGE_ERROR
    settings = RaceSettings(
        args.model, args.data_dir, args.steps, args.batch_size, args.max_length, args.lr, args.eval_every
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sides = {"transformers": hf_race.transformers_loop, "zerotune": lambda s: hf_race.zerotune_recipe(s, out)}
    curves = []
    try:
        for name in args.sides.split(","):
            every = settings.eval_every
            print(f"side {name}: {settings.steps} steps of {settings.batch_size}, dev accuracy every {every} steps")
            curves.append(sides[name](settings))
    except console.UsageError as err:
        console.error(str(err))
        return USAGE_ERROR
    text = hf_race.table(curves)
    if len(curves) == 2:
        text += (
            f"\n\nzerotune reached the loop's final dev accuracy ({curves[0].final[2]:.2%}) in "
            f"{hf_race.ratio(curves[0], curves[1]):.2f}x the loop's wall time."
        )
    print(text)
    (out / "race.md").write_text(text + "\n")
    hf_race.write_points(curves, out / "race.csv")
    hf_race.plot(curves, out / "race.png")
    print(f"wrote {out / 'race.md'}, {out / 'race.csv'} and {out / 'race.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
