"""Sweeps: a study of an experiment's settings read from the command line and sweep files, started or resumed,
run by one process or N workers, and reported (the table, ``best.yaml``, TensorBoard's HParams tab).

``python -m experiments.sweep`` (:mod:`experiments.sweep`) is the command line on top of it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shlex
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from experiments.rundir.console import UsageError
from experiments.tuning.settings import DEFAULT_TRIALS, StudyRef, Sweep
from experiments.tuning.trials import (
    LOCK_FILE,
    write_hparams_config,
)

SWEEPS_DIR = Path(__file__).resolve().parent.parent / "sweeps"
SAMPLERS = ("tpe", "random", "grid", "cmaes")
PRUNERS = ("median", "hyperband", "none")
POINTER_FILE = "study.json"
BEST_FILE = "best.yaml"
SUMMARY_FILE = "summary.txt"
_FILE_KEYS = (
    "experiment",
    "trials",
    "sampler",
    "sampler_args",
    "pruner",
    "pruner_args",
    "objective",
    "seed",
    "fixed",
    "space",
)


# -- command line --------------------------------------------------------------------------------------------------


def _yaml_option(flag: str, text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UsageError(f"{flag} '{text}' is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{flag} takes a YAML mapping such as '{{n_startup_trials: 5}}', got '{text}'")
    return value


def load_sweep_file(path: Path) -> dict[str, Any]:
    """A sweep file's settings.

    Raises:
        UsageError: for a missing or malformed file, or an unknown key.
    """
    import difflib

    if not path.is_file():
        raise UsageError(f"sweep file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(
            f"{path}: is not a text file (byte {err.start} is not UTF-8); a sweep file is YAML text such as "
            f"{SWEEPS_DIR / 'digits_cnn.yaml'}"
        ) from None
    except OSError as err:
        raise UsageError(f"{path}: cannot read it ({err.strerror or err})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise UsageError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping with 'space:' and optional study settings")
    for key in data:
        if key not in _FILE_KEYS:
            close = difflib.get_close_matches(str(key), _FILE_KEYS, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UsageError(f"{path}: unknown key '{key}'; {hint}valid keys: {', '.join(_FILE_KEYS)}")
    _check_file_values(path, data)
    return data


def _check_file_values(path: Path, data: dict[str, Any]) -> None:
    """Refuse a sweep file's setting of the wrong kind, naming it (the space's entries are checked on their own).

    Raises:
        UsageError: naming the file, the key and the kind of value it takes.
    """
    space = data.get("space")
    if space is not None and not isinstance(space, dict):
        raise UsageError(
            f"{path}: 'space' maps launcher settings to distributions, e.g. 'model.lr: {{loguniform: [1e-4, 1e-1]}}'; "
            f"got {type(space).__name__} {space!r}"[:300]
        )
    trials = data.get("trials")
    if trials is not None and (not isinstance(trials, int) or isinstance(trials, bool) or trials < 1):
        raise UsageError(f"{path}: trials must be a whole number >= 1, got {trials!r}")
    seed = data.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise UsageError(f"{path}: seed must be a whole number, got {seed!r}")
    for key in ("sampler_args", "pruner_args"):
        value = data.get(key)
        if value is not None and not isinstance(value, dict):
            raise UsageError(f"{path}: {key} takes a mapping such as '{{n_startup_trials: 5}}', got {value!r}")
    for key in ("experiment", "sampler", "pruner"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise UsageError(f"{path}: {key} takes a name, got {value!r}")
    objective = data.get("objective")
    names = objective if isinstance(objective, list) else [objective]
    if objective is not None and not all(isinstance(n, str) for n in names):
        raise UsageError(f"{path}: objective takes a metric such as val/acc (or a list of them), got {objective!r}")


def _fixed_settings(mapping: Any, source: str) -> dict[str, Any]:
    """A sweep file's ``fixed:`` mapping as settings of every trial (dotted keys, typed values)."""
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise UsageError(f"{source}: 'fixed' maps launcher settings to values, e.g. 'trainer.max_epochs: 10'")
    return {str(k).removeprefix("--"): v for k, v in mapping.items()}


def _objectives(given: list[str], monitor: str, mode: str) -> list[list[str]]:
    """``[metric, direction]`` pairs from ``--objective`` values (the monitored metric when none)."""
    from experiments.tuning.reporter import PARAMS

    directions = {"max": "maximize", "min": "minimize"}
    out = []
    for text in given or [monitor]:
        metric, _, how = str(text).partition(":")
        if how and how not in directions:
            raise UsageError(f"--objective {text}: the direction after ':' must be max or min")
        if not how:
            if metric == monitor:
                how = mode
            elif metric == PARAMS:
                how = "min"
            else:
                raise UsageError(f"--objective {metric}: say whether to maximize or minimize it ({metric}:max)")
        out.append([metric, directions[how]])
    if len({m for m, _ in out}) != len(out):
        raise UsageError("--objective: each metric may be given once")
    return out


@functools.cache
def _build_model_cli() -> type:
    """A launcher CLI that parses and builds model, datamodule and callbacks like a run, without a trainer or a run
    folder: a searched value the model or the data rejects fails the check before the study starts."""
    from experiments.launcher.cli import ZeroTuneCLI

    class BuildModel(ZeroTuneCLI):
        def instantiate_trainer(self, **kwargs: Any) -> None:
            return None

    return BuildModel


def check_with_launcher(sweep: Sweep, sources: dict[str, str]) -> tuple[str, str, int | None]:
    """Parse the trials' settings, and build their classes at every bound and choice of each searched setting.

    Args:
        sweep: The sweep to check.
        sources: Where each searched setting was declared (the sweep file, or ``--param``), for the messages.

    Returns:
        The checkpoint's monitored metric, its mode, and ``trainer.max_epochs``.

    Raises:
        UsageError: for a bad setting; one of the search space names its source, key and value.
    """
    from experiments.launcher.launch import apply_overrides, make_cli
    from experiments.tuning.search_space import SearchSpace, format_value

    build = _build_model_cli()
    space = SearchSpace.parse(sweep.space)
    fixed_keys = {a[2:].split("=", 1)[0] for a in sweep.fixed if a.startswith("--")} | set(sweep.settings)
    both = [k for k in space.keys if k in fixed_keys]
    if both:
        raise UsageError(f"search space: {', '.join(both)} is searched and also fixed; remove one of the two")
    base = sweep.base_config()
    with _quiet_build():
        cli = make_cli(base, cli_class=build)
    devices = cli.config.trainer.devices
    if str(devices) not in ("1", "None"):
        raise UsageError(
            f"a sweep trains each trial on one device (trainer.devices is {devices}): use --workers N to run N "
            "trials at once, one per device"
        )
    for dim in space.dims:
        for value in dim.corners():
            try:
                with _quiet_build():
                    make_cli(apply_overrides(base, {dim.key: value}), cli_class=build)
            except UsageError as err:
                where = f"search space ({sources.get(dim.key, 'search space')})"
                if f"--{dim.key}" in str(err):
                    raise UsageError(f"{where}: {err}") from None
                raise UsageError(f"{where}: {dim.key}={format_value(value)}: {err}") from None
    return cli.config.checkpoint.monitor, cli.config.checkpoint.mode, cli.config.trainer.max_epochs


@contextlib.contextmanager
def _quiet_build() -> Iterator[None]:
    """Silence what building a run's classes prints (seeding, pretrained-weights reports) while checking."""
    with contextlib.redirect_stdout(open(os.devnull, "w")) as sink:  # noqa: SIM115 - closed below
        try:
            yield
        finally:
            sink.close()


def make_sweep(name: str | None, opts: argparse.Namespace, overrides: list[str]) -> tuple[Sweep, str]:
    """The sweep a command describes, checked against the launcher; returns it and its sweep file (or ``""``).

    Raises:
        UsageError: for any mistake in the command, the sweep file or the search space.
    """
    from experiments.tuning.search_space import SearchSpace, parse_dimension

    if name is not None and opts.config is not None:
        raise UsageError(f"give an experiment name ('{name}') or --config, not both")
    if name is None and opts.config is None:
        from experiments.launcher.recipes import DEFAULT_EXPERIMENT

        name = DEFAULT_EXPERIMENT
    if opts.space == "none":
        space_file = None
    else:
        space_file = Path(opts.space) if opts.space else (SWEEPS_DIR / f"{name}.yaml" if name else None)
    data: dict[str, Any] = {}
    if opts.space not in (None, "none") or (space_file is not None and space_file.is_file()):
        data = load_sweep_file(space_file)
    source = str(space_file) if data else "--param"
    if name is not None:
        experiment, named, folder = data.get("experiment") or name, True, opts.name or name
    else:
        experiment, named, folder = str(Path(opts.config).resolve()), False, opts.name or Path(opts.config).stem
        if not Path(opts.config).is_file():
            raise UsageError(f"config file not found: {opts.config}")
    if named:
        from experiments.launcher.launch import build_args

        build_args([experiment])  # an unknown name fails here, with the list of valid ones
    space = dict(data.get("space") or {})
    sources = {str(k): str(space_file) for k in space}
    for text in opts.param:
        key, sep, spec = text.partition("=")
        if not sep:
            raise UsageError(f"--param {text}: write it as KEY=SPEC, e.g. 'model.lr={{loguniform: [1e-4, 1e-1]}}'")
        try:
            parsed = yaml.safe_load(spec)
        except yaml.YAMLError:
            raise UsageError(f"--param {text}: '{spec}' is not valid YAML") from None
        parse_dimension(key.strip(), parsed, "--param")
        space[key.strip().removeprefix("--")] = parsed
        sources[key.strip().removeprefix("--")] = "--param"
    if not space:
        where = f"no {space_file}" if space_file is not None else "no sweep file"
        raise UsageError(
            f"nothing to search: {where} and no --param; write a sweep file (see experiments/sweeps/digits_cnn.yaml) "
            "or pass e.g. --param 'model.lr={loguniform: [1e-4, 1e-1]}'"
        )
    SearchSpace.parse(space, source)
    sampler = opts.sampler or data.get("sampler") or "tpe"
    pruner_given = opts.pruner or data.get("pruner")
    objective = opts.objective or data.get("objective") or []
    sweep = Sweep(
        experiment=experiment,
        named=named,
        name=folder,
        space=space,
        fixed=list(overrides),
        settings=_fixed_settings(data.get("fixed"), source),
        sampler=str(sampler),
        sampler_args={**(data.get("sampler_args") or {}), **_yaml_option("--sampler_args", opts.sampler_args)},
        pruner=str(pruner_given or "median"),
        pruner_args={**(data.get("pruner_args") or {}), **_yaml_option("--pruner_args", opts.pruner_args)},
        seed=int(opts.seed if opts.seed is not None else data.get("seed", 0)),
    )
    if sweep.sampler not in SAMPLERS:
        raise UsageError(f"--sampler {sweep.sampler}: must be one of {', '.join(SAMPLERS)}")
    if sweep.pruner not in PRUNERS:
        raise UsageError(f"--pruner {sweep.pruner}: must be one of {', '.join(PRUNERS)}")
    sweep.monitor, mode, sweep.max_epochs = check_with_launcher(sweep, sources)
    given = objective if isinstance(objective, list) else [objective]
    sweep.objectives = _objectives(given, sweep.monitor, mode)
    if len(sweep.objectives) > 1:
        if pruner_given not in (None, "none"):
            raise UsageError(
                f"pruning needs a single objective; this study has {len(sweep.objectives)}: pass --pruner none"
            )
        sweep.pruner = "none"
    sweep.trials = _trials(sweep, opts.trials if opts.trials is not None else data.get("trials"))
    from experiments.tuning.studies import make_pruner, make_sampler

    make_sampler(sweep)  # bad sampler or pruner arguments fail before anything is written
    make_pruner(sweep)
    return sweep, str(space_file) if data else ""


def _trials(sweep: Sweep, given: int | None) -> int:
    """The study's number of trials; a grid's size for a grid search, which must fit in it."""
    from experiments.tuning.search_space import SearchSpace

    space = SearchSpace.parse(sweep.space)
    if sweep.sampler != "grid":
        return int(given if given is not None else DEFAULT_TRIALS)
    size = space.grid_size()
    if size is None:
        raise UsageError(
            f"the grid sampler needs a finite set of values for every setting; {', '.join(space.continuous())} "
            "is a continuous range: use {choice: [...]}, {int: [...]}, or uniform with a step"
        )
    if given is not None and int(given) < size:
        raise UsageError(
            f"the grid has {size} points but --trials is {given}: raise --trials to {size} or shrink the grid "
            "(or use --sampler random for a sample of it)"
        )
    return size


# -- studies -------------------------------------------------------------------------------------------------------
def _allocate(runs_dir: Path, name: str, label: str | None) -> tuple[str, Path]:
    """The study's label and sweep folder (created); an unnamed study gets the next free number."""
    base = runs_dir / name
    if label is not None:
        folder = base / f"sweep-{label}"
        folder.mkdir(parents=True, exist_ok=True)
        return label, folder
    base.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.name[6:]) for p in base.glob("sweep-*") if p.name[6:].isdigit()]
    n = max(numbers, default=-1) + 1
    while True:
        try:
            (base / f"sweep-{n}").mkdir()
            return str(n), base / f"sweep-{n}"
        except FileExistsError:
            n += 1


def _check_storage_owner(url: str, sweep: Sweep) -> None:
    """A journal file given with ``--storage`` must not be the study file of another experiment.

    (Database storages, SQLite files included, hold the studies of any number of experiments.)
    """
    from experiments.tuning.studies import open_storage, other_experiments

    path = Path(url)
    if "://" in url or not path.is_file() or path.stat().st_size == 0:
        return
    others = other_experiments(open_storage(url), sweep.experiment)
    if others:
        study, experiment = others[0]
        raise UsageError(
            f"--storage {url} is the study file of {experiment} (study {study}), not of {sweep.experiment}: leave "
            f"out --storage for a study file of its own, or continue that study with --resume {path.parent}"
        )


def start_study(sweep: Sweep, opts: argparse.Namespace) -> tuple[StudyRef, Any, bool]:
    """Create the study the command describes, or join it (same settings); returns it and whether it is new.

    Raises:
        UsageError: when a study of that name exists with other settings.
    """
    from experiments.tuning.studies import create_or_load, find_study, open_storage, storage_url, stored_settings

    runs_dir = Path(opts.runs_dir)
    if opts.storage is not None:
        _check_storage_owner(storage_url(opts.storage, runs_dir), sweep)
    label, folder = _allocate(runs_dir, sweep.name, opts.study)
    ref = StudyRef(f"{sweep.name}/sweep-{label}", storage_url(opts.storage, folder), folder)
    if opts.study is None and opts.storage is not None:
        # A numbered study never joins one of the same name that other machines made in a shared storage.
        while find_study(open_storage(ref.url), ref.name) is not None:
            label, folder = _allocate(runs_dir, sweep.name, None)
            ref = StudyRef(f"{sweep.name}/sweep-{label}", storage_url(opts.storage, folder), folder)
    directions = [d for _, d in sweep.objectives]
    study, created = create_or_load(ref.url, ref.name, directions, asdict(sweep), folder / LOCK_FILE)
    if not created:
        stored = Sweep(**stored_settings(study))
        if stored.identity() != sweep.identity():
            differ = [k for k, v in sweep.identity().items() if stored.identity().get(k) != v]
            raise UsageError(
                f"study {ref.name} already exists with other settings ({', '.join(differ)}): continue it with "
                f"--resume {folder}, or pass another --study"
            )
        if sweep.trials != stored.trials:
            study.set_user_attr("zerotune", {**asdict(stored), "trials": sweep.trials})
    _write_pointer(ref)
    write_hparams_config(ref.folder, sweep)
    return ref, study, created


def _write_pointer(ref: StudyRef) -> None:
    from experiments.tuning.studies import shown_url
    from fileio.atomic import atomic_write_text

    record = {"study": ref.name, "storage": shown_url(ref.url)}
    path = ref.folder / POINTER_FILE
    if not path.is_file() or json.loads(path.read_text()) != record:
        atomic_write_text(path, json.dumps(record, indent=2) + "\n")


def resume_study(folder: str, storage: str | None) -> tuple[StudyRef, Sweep, Any]:
    """The study of the sweep folder ``folder`` and its settings.

    Raises:
        UsageError: for a folder that holds no study, or a database whose password must be given again.
    """
    from experiments.tuning.studies import find_study, open_storage, stored_settings

    path = Path(folder)
    pointer = path / POINTER_FILE
    if not pointer.is_file():
        raise UsageError(
            f"--resume {folder}: no {POINTER_FILE} there; pass a sweep folder such as runs/digits_cnn/sweep-0 "
            "(the 'study' line a sweep prints)"
        )
    record = json.loads(pointer.read_text())
    url = storage or record["storage"]
    if storage is None and "***" in url:
        raise UsageError(f"--resume {folder}: the study is in {url}; pass --storage with the full URL again")
    if storage is not None and "://" not in storage:
        from experiments.tuning.studies import storage_url

        url = storage_url(storage, path)
    study = find_study(open_storage(url), record["study"])
    if study is None:
        raise UsageError(f"--resume {folder}: study {record['study']} is not in {record['storage']}")
    return StudyRef(record["study"], url, path), Sweep(**stored_settings(study)), study


# -- the end: table, best.yaml, commands ---------------------------------------------------------------------------
def report(ref: StudyRef, sweep: Sweep, seconds: float | None = None) -> str:
    """Write ``best.yaml`` (or ``best-trial_N.yaml`` per Pareto-optimal trial) and return the closing summary."""
    import optuna
    from optuna.trial import TrialState

    from experiments.tuning.search_space import SearchSpace, format_value
    from experiments.tuning.studies import cut_short, open_storage

    study = optuna.load_study(study_name=ref.name, storage=open_storage(ref.url))
    space = SearchSpace.parse(sweep.space)
    trials = study.get_trials(deepcopy=False)
    states = {s: sum(t.state == s for t in trials) for s in TrialState}
    interrupted = len(cut_short(trials))
    failed = states[TrialState.FAIL] - interrupted
    lines = ["", "=" * 72]
    took = f" in {_duration(seconds)}" if seconds is not None else ""
    done = states[TrialState.COMPLETE] + states[TrialState.PRUNED] + failed
    lines.append(
        f"study      {ref.name}: {done} of {sweep.trials} "
        f"trials{took} ({states[TrialState.COMPLETE]} complete, {states[TrialState.PRUNED]} pruned, {failed} failed"
        + (f", {interrupted} interrupted" if interrupted else "")
        + (f", {states[TrialState.RUNNING]} running" if states[TrialState.RUNNING] else "")
        + ")"
    )
    single = len(sweep.objectives) == 1
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if single:
        reverse = sweep.objectives[0][1] == "maximize"
        ranked = sorted(complete, key=lambda t: t.value, reverse=reverse)[:5]
        title = f"best trials by {sweep.describe_objectives()}"
    else:
        ranked = sorted(study.best_trials, key=lambda t: t.values[0], reverse=sweep.objectives[0][1] == "maximize")
        title = f"Pareto-optimal trials ({sweep.describe_objectives()})"
    if ranked:
        header = ["trial", *(m for m, _ in sweep.objectives), *space.keys, "run"]
        rows = []
        for t in ranked:
            params = space.decode(t.params)
            values = [f"{v:.4f}" if abs(v) < 1e5 else f"{v:.0f}" for v in t.values]
            rows.append(
                [
                    str(t.number),
                    *values,
                    *(format_value(params.get(k)) for k in space.keys),
                    t.user_attrs.get("run_dir", ""),
                ]
            )
        lines.append(title)
        lines += _table([header, *rows])
        written = _write_best(ref, sweep, space, ranked if not single else ranked[:1], single)
        for path in written:
            lines.append(f"best config  {path}")
            lines.append(
                f"  run it:    {shlex.quote(sys.executable)} -m experiments.run --config {shlex.quote(str(path))}"
            )
    else:
        lines.append("no trial completed yet")
    python = shlex.quote(sys.executable)
    folder = shlex.quote(str(ref.folder))
    lines.append(f"hparams    {python} -m tensorboard.main --logdir {folder} --host 127.0.0.1   (HParams tab)")
    dashboard = Path(sys.executable).parent / "optuna-dashboard"
    dash = shlex.quote(str(dashboard)) if dashboard.exists() else "optuna-dashboard"
    from experiments.tuning.studies import shown_url

    lines.append(f"dashboard  {dash} {shlex.quote(shown_url(ref.url))} --host 127.0.0.1")
    if done < sweep.trials:
        lines.append(f"continue   {python} -m experiments.sweep --resume {folder}")
    elif sweep.sampler != "grid":
        lines.append(f"more       {python} -m experiments.sweep --resume {folder} --trials {sweep.trials + 10}")
    lines.append("=" * 72)
    text = "\n".join(lines)
    from fileio.atomic import atomic_write_text

    atomic_write_text(ref.folder / SUMMARY_FILE, text.strip("\n=") + "\n")
    return text


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs} s" if minutes else f"{seconds:.1f} s"


def _write_best(ref: StudyRef, sweep: Sweep, space: Any, trials: list[Any], single: bool) -> list[Path]:
    """Write the config of each of ``trials`` as a YAML that ``experiments.run --config`` runs as it trained."""
    from experiments.launcher.launch import apply_overrides, resolve_config
    from fileio.atomic import atomic_write_text

    written = []
    for t in trials:
        placement = {"runs_dir": str(ref.runs_dir), "name": sweep.name, "resume": None, "version": None}
        with _quiet_build():
            config = resolve_config(apply_overrides(sweep.trial_config(space.decode(t.params)), placement))
        values = ", ".join(f"{m} {v:.4f}" for (m, _), v in zip(sweep.objectives, t.values, strict=True))
        path = ref.folder / (BEST_FILE if single else f"best-trial_{t.number}.yaml")
        header = (
            f"# Trial {t.number} of study {ref.name} ({values}); its run: {t.user_attrs.get('run_dir', '')}\n"
            f"# Run it: python -m experiments.run --config {path}\n"
        )
        atomic_write_text(path, header + yaml.safe_dump(config, sort_keys=False))
        written.append(path)
    return written


# -- entry point ---------------------------------------------------------------------------------------------------
