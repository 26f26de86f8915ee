"""Hyperparameter sweeps with Optuna.

Runs an Optuna study over a named experiment (or ``--config PATH``). Every trial is a normal launcher run (the
code path of ``python -m experiments.run``) in ``runs/NAME/sweep-STUDY/trial_N``, with its config.yaml, TensorBoard
logs, checkpoints and status.json; the sweep prints one line per trial. The search space comes from
``experiments/sweeps/NAME.yaml`` (or ``--space FILE``) and ``--param`` options; launcher overrides after the options
(``--trainer.max_epochs 10``) apply to every trial. At the end: the best trials, ``best.yaml`` ready for
``python -m experiments.run --config``, and the commands that compare the trials in TensorBoard and optuna-dashboard.

Options:
    --space FILE|none       sweep file: search space and study settings (default experiments/sweeps/NAME.yaml;
                            none: the --param options alone)
    --param 'KEY={DIST: [ARGS]}'   search one more setting (or replace one of the file's), e.g.
                            --param 'model.lr={loguniform: [1e-4, 1e-1]}'
    --trials N              trials in the study (default: the sweep file's, else 20; a grid's size for grid)
    --sampler NAME          tpe (Bayesian, default), random, grid or cmaes
    --sampler_args YAML     arguments of the Optuna sampler, e.g. '{n_startup_trials: 5}'
    --pruner NAME           median (default), hyperband or none; fed by the objective after every epoch
    --pruner_args YAML      arguments of the Optuna pruner, e.g. '{n_warmup_steps: 2}'
    --objective METRIC[:max|min]   what to optimize (default: the model's monitored metric); repeat it for a
                            multi-objective study, e.g. --objective val/acc --objective params (the parameter
                            count); multi-objective studies are not pruned
    --seed N                seed of the sampler (default 0): the same seed gives the same study
    --workers N             run N trials at once on this machine, each with its share of the CPU cores (or its
                            own GPU); the workers end with this process, even when it is killed
    --study NAME            the study's name (folder runs/NAME/sweep-STUDY; default the next free number); the
                            same --study and --storage on several machines make them work on one study
    --storage URL|FILE      where the study lives (default runs/NAME/sweep-STUDY/study.journal): a journal file,
                            a SQLite file (.db) or a database URL such as postgresql://user@host/db
    --resume SWEEP_DIR      continue an interrupted study (--trials N to extend it)
    --runs_dir DIR          root folder of all runs (default runs)
    --name NAME             folder of the experiment under the runs root (default: the experiment's name)
    --list                  list the sweep files

A running trial sends a heartbeat every ZEROTUNE_SWEEP_HEARTBEAT seconds (default 30); a trial whose worker's process
is gone (this machine) or whose heartbeat is older than ZEROTUNE_SWEEP_GRACE seconds (default 600) is failed by the
next worker that looks and its parameters run again as a new trial.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from dataclasses import asdict

from experiments.rundir import console
from experiments.rundir.console import UsageError
from experiments.tuning.settings import StudyRef, Sweep
from experiments.tuning.sweeps import SWEEPS_DIR, make_sweep, report, resume_study, start_study
from experiments.tuning.trials import end_with_parent, spawn_workers, work

USAGE = "usage: python -m experiments.sweep [NAME] [options] [launcher overrides]"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.sweep", add_help=False, allow_abbrev=False, exit_on_error=False
    )
    p.add_argument("--config", "-c")
    p.add_argument("--space")
    p.add_argument("--param", action="append", default=[])
    p.add_argument("--trials", type=int)
    p.add_argument("--sampler")
    p.add_argument("--sampler_args")
    p.add_argument("--pruner")
    p.add_argument("--pruner_args")
    p.add_argument("--objective", action="append")
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--study")
    p.add_argument("--storage")
    p.add_argument("--resume")
    p.add_argument("--runs_dir", default="runs")
    p.add_argument("--name")
    p.add_argument("--list", action="store_true")
    p.add_argument("--_worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--_threads", type=int, help=argparse.SUPPRESS)
    return p


def parse_command(argv: list[str]) -> tuple[str | None, argparse.Namespace, list[str]]:
    """Split ``argv`` into the experiment name, the sweep's options and the launcher overrides of every trial.

    Raises:
        UsageError: for a sweep option without its value or with a malformed one.
    """
    args = list(argv)
    name = args.pop(0) if args and not args[0].startswith("-") else None
    try:
        opts, rest = _parser().parse_known_args(args)
    except argparse.ArgumentError as err:
        raise UsageError(str(err)) from None
    if opts.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {opts.workers}")
    if opts.trials is not None and opts.trials < 1:
        raise UsageError(f"--trials must be >= 1, got {opts.trials}")
    return name, opts, rest


def print_list() -> None:
    """The sweep files and their one-line descriptions."""
    for path in sorted(SWEEPS_DIR.glob("*.yaml")):
        first = path.read_text().splitlines()[0] if path.stat().st_size else ""
        print(f"{path.stem:<16}  {first.lstrip('# ').strip()}")


def _intro(ref: StudyRef, sweep: Sweep, created: bool, workers: int, space_file: str) -> str:
    from experiments.tuning.search_space import SearchSpace

    space = SearchSpace.parse(sweep.space)
    what = "new study" if created else "continuing study"
    seeded = f"seed {sweep.seed}" + ("" if workers == 1 else f", {workers} workers")
    pruner = f"{sweep.pruner} pruner" if sweep.pruner != "none" else "no pruning"
    dims = "; ".join(f"{d.key} {d.kind} {list(d.args)}" for d in space.dims)
    return "\n".join(
        [
            f"sweep      {what} {ref.name}: {sweep.trials} trials of {sweep.experiment}, {sweep.sampler} sampler "
            f"({seeded}), {pruner}, objective {sweep.describe_objectives()}",
            f"folder     {ref.folder}" + (f"   (space from {space_file})" if space_file else ""),
            f"space      {dims}",
            f"resume     {shlex.quote(sys.executable)} -m experiments.sweep --resume {shlex.quote(str(ref.folder))}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 done, 1 trials kept failing, 2 usage error, 130/143 interrupted)."""
    import optuna

    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(f"{USAGE}\n\n{__doc__}", end="")
        return 0
    console.quiet()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.monotonic()
    try:
        name, opts, overrides = parse_command(argv)
        if opts.list:
            print_list()
            return 0
        from experiments.tuning.studies import heartbeat_settings

        heartbeat_settings()  # a wrong ZEROTUNE_SWEEP_HEARTBEAT or _GRACE fails before anything is written
        storage = opts.storage or os.environ.get("ZEROTUNE_SWEEP_STORAGE")
        if opts._worker is not None:
            if opts._threads:
                import torch

                torch.set_num_threads(opts._threads)
            end_with_parent()
            ref, sweep, _ = resume_study(opts.resume, storage)
            return work(ref, sweep, rank=opts._worker)
        if opts.resume is not None:
            extra = [
                a
                for a in argv
                if a.startswith("--") and a.split("=")[0] not in ("--resume", "--trials", "--workers", "--storage")
            ]
            if name is not None or extra:
                given = name or extra[0]
                raise UsageError(
                    f"--resume continues the study with the settings it was started with: leave out {given} (only "
                    "--trials, --workers and --storage may be given)"
                )
            ref, sweep, study = resume_study(opts.resume, storage)
            if opts.trials is not None and opts.trials != sweep.trials:
                if sweep.sampler == "grid" and opts.trials > sweep.trials:
                    raise UsageError(f"the grid has {sweep.trials} points: a grid study cannot grow past them")
                sweep.trials = opts.trials
                study.set_user_attr("zerotune", asdict(sweep))
            created, space_file = False, ""
        else:
            sweep, space_file = make_sweep(name, opts, overrides)
            ref, study, created = start_study(sweep, opts)
        print(_intro(ref, sweep, created, opts.workers, space_file), flush=True)
        code = spawn_workers(ref, opts.workers, storage) if opts.workers > 1 else work(ref, sweep, created=created)
    except UsageError as err:
        console.error(str(err))
        return console.USAGE_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted before the first trial started", file=sys.stderr)
        return 130
    print(report(ref, sweep, time.monotonic() - started))
    if code in (130, 143):
        print(
            f"interrupted: continue with {shlex.quote(sys.executable)} -m experiments.sweep --resume "
            f"{shlex.quote(str(ref.folder))}",
            file=sys.stderr,
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
