"""Sweeps: grid and TPE studies of tiny digits trials, pruning, resuming, parallel workers, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import ROOT, run_launcher
from optuna.trial import TrialState
from postgres_fixture import postgres_url  # noqa: F401 - a fixture
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from experiments.rundir import console
from experiments.sweep import main, parse_command
from experiments.tuning.sweeps import SWEEPS_DIR, make_sweep

# Tiny trials: 2 epochs of 4 training batches, validation on 2 batches (128 images).
TINY = [
    "--trainer.max_epochs",
    "2",
    "--trainer.limit_train_batches",
    "4",
    "--trainer.limit_val_batches",
    "2",
]
# A 2 x 2 grid whose best half is known: a rate of 1e-7 leaves the network where it started.
GRID = [
    "--space",
    "none",
    "--param",
    "model.lr={choice: [1.0e-7, 0.01]}",
    "--param",
    "model.dropout={choice: [0.0, 0.2]}",
]


def sweep(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``python -m experiments.sweep ARGS`` in-process; returns (exit code, stdout, stderr)."""
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def load(folder: Path) -> optuna.Study:
    record = json.loads((folder / "study.json").read_text())
    return optuna.load_study(study_name=record["study"], storage=_journal(folder))


def _journal(folder: Path) -> optuna.storages.BaseStorage:
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(folder / "study.journal")))


def hp_metric(run: Path) -> float:
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    return events.Scalars("hp_metric")[-1].value


@pytest.fixture(scope="module")
def grid_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A finished 4-trial grid study of digits_cnn (no pruning): its sweep folder and printed output."""
    import contextlib
    import io

    runs = tmp_path_factory.mktemp("grid") / "runs"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["digits_cnn", "--runs_dir", str(runs), "--sampler", "grid", "--pruner", "none", *GRID, *TINY])
    assert code == 0, out.getvalue()
    return runs / "digits_cnn" / "sweep-0", out.getvalue()


def test_grid_sweep_finds_the_known_best(grid_study: tuple[Path, str]) -> None:
    folder, out = grid_study
    study = load(folder)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    # Every grid point once, each trial a normal run in its own folder whose hp_metric is the trial's value.
    points = {(t.params["model.lr"], t.params["model.dropout"]) for t in trials}
    assert points == {(1e-7, 0.0), (1e-7, 0.2), (0.01, 0.0), (0.01, 0.2)}
    for t in trials:
        run = folder / f"trial_{t.number}"
        assert t.user_attrs["run_dir"] == str(run)
        assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
        assert json.loads((run / "status.json").read_text())["state"] == "completed"
        assert hp_metric(run) == pytest.approx(t.value, abs=1e-6)
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["model"]["init_args"]["lr"] == t.params["model.lr"]
        assert config["trainer"]["enable_progress_bar"] is False and config["early_stopping"]["enabled"] is True
    # The known best: every trial at lr 0.01 beats every trial at lr 1e-7, and the study picked one of them.
    assert min(t.value for t in trials if t.params["model.lr"] == 0.01) > max(
        t.value for t in trials if t.params["model.lr"] == 1e-7
    )
    assert study.best_trial.params["model.lr"] == 0.01
    assert study.best_value == max(t.value for t in trials)
    # One progress line per trial (no progress bars), then the table, best.yaml and the comparison commands.
    lines = [ln for ln in out.splitlines() if ln.startswith("trial ")]
    assert len(lines) == 4 and all(" complete " in ln for ln in lines)
    assert "Epoch" not in out and "it/s" not in out
    assert f"best config  {folder / 'best.yaml'}" in out
    assert f"--logdir {folder} --host 127.0.0.1" in out and "(HParams tab)" in out
    assert f"optuna-dashboard {folder / 'study.journal'} --host 127.0.0.1" in out
    assert (folder / "summary.txt").read_text().count("trial_") >= 4


def test_best_yaml_reruns_to_the_best_value(
    grid_study: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = grid_study
    study = load(folder)
    best = yaml.safe_load((folder / "best.yaml").read_text())
    trial_config = yaml.safe_load((folder / f"trial_{study.best_trial.number}" / "config.yaml").read_text())
    # The same training as the trial; only what trials skip (progress bar, ONNX, dashboards, test) comes back.
    differ = {k for k in best if best[k] != trial_config[k]}
    assert differ == {"trainer", "name", "runs_dir", "test_after_fit", "onnx", "dashboards"}
    assert {k for k in best["trainer"] if best["trainer"][k] != trial_config["trainer"][k]} == {"enable_progress_bar"}
    assert best["name"] == "digits_cnn" and best["test_after_fit"] is True and best["onnx"]["enabled"] is True
    code, out, err = run_launcher(["--config", str(folder / "best.yaml"), "--runs_dir", str(tmp_path)], capsys)
    assert code == 0, err
    rerun = tmp_path / "digits_cnn" / "version_0"
    assert hp_metric(rerun) == pytest.approx(study.best_value, abs=1e-6)
    assert (rerun / "model.onnx").is_file()


def test_tpe_sweep_prunes_a_bad_trial(runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "digits_cnn",
        "--runs_dir",
        str(runs_dir),
        "--space",
        "none",
        "--param",
        "model.lr={choice: [0.01, 1.0e-7]}",
        "--trials",
        "5",
        "--sampler_args",
        "{n_startup_trials: 5}",
        "--pruner_args",
        "{n_startup_trials: 1, n_warmup_steps: 0}",
        *TINY,
        "--trainer.max_epochs",
        "3",
    ]
    code, out, err = sweep(args, capsys)
    assert code == 0, err
    folder = runs_dir / "digits_cnn" / "sweep-0"
    trials = load(folder).get_trials()
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert len(trials) == 5 and pruned
    assert all(t.params["model.lr"] == 1e-7 for t in pruned)
    for t in pruned:
        run = folder / f"trial_{t.number}"
        status = json.loads((run / "status.json").read_text())
        assert status["state"] == "pruned" and "median pruner" in status["reason"]
        # A clean stop: no traceback, no error line, no checkpoint saved for the stop itself.
        log = (run / "output.log").read_text()
        assert "Traceback" not in log and "error:" not in log
        assert not (run / "checkpoints" / "last.ckpt").exists() or status["epoch"] > 0
        # Its row in TensorBoard's HParams: hp_metric is the best value the trial reached.
        assert hp_metric(run) == pytest.approx(max(t.intermediate_values.values()), abs=1e-6)
        assert f"trial {t.number:>3}  pruned at epoch" in out
    assert "Traceback" not in out + err


def test_interrupted_study_resumes_with_completed_trials_kept(
    runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The sweep process is killed (SIGKILL: no chance to clean up) in the middle of trial 2.
    kill = ["--trainer.callbacks+=tests.run_helpers.SigkillInRun", "--trainer.callbacks.folder", "trial_2"]
    command = [sys.executable, "-m", "experiments.sweep", "digits_cnn", "--runs_dir", str(runs_dir)]
    command += ["--sampler", "grid", "--pruner", "none", *GRID, *TINY, *kill]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    folder = runs_dir / "digits_cnn" / "sweep-0"
    before = load(folder).get_trials()
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING]
    kept = {t.number: (t.value, t.params) for t in before[:2]}

    code, out, err = sweep(["--resume", str(folder)], capsys)
    assert code == 0, err
    assert "trial   2  failed: worker died (process" in out and "queued to run again as trial 3" in out
    trials = load(folder).get_trials()
    # The two finished trials are kept as they were; the killed one is failed, retried, and never counted.
    assert {t.number: (t.value, t.params) for t in trials[:2]} == kept
    assert trials[2].state == TrialState.FAIL
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == 2)
    assert retry.params == trials[2].params and retry.state == TrialState.COMPLETE
    assert retry.system_attrs["retry_history"] == [2]  # Optuna's RetryHeartbeatStaleTrialCallback's record
    # The killed trial's run folder no longer says "running": its worker died and the trial runs again.
    status = json.loads((folder / "trial_2" / "status.json").read_text())
    assert status["state"] == "crashed" and status["retried_as"] == retry.number
    assert status["reason"].startswith("worker died (process ") and status["reason"].endswith("re-queued as trial 3")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4 and len(trials) == 5
    assert {(t.params["model.lr"], t.params["model.dropout"]) for t in complete} == {
        (1e-7, 0.0),
        (1e-7, 0.2),
        (0.01, 0.0),
        (0.01, 0.2),
    }
    assert "4 complete, 0 pruned, 0 failed, 1 interrupted" in out


def test_two_workers_run_distinct_trials_at_once(runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["digits_cnn", "--runs_dir", str(runs_dir), "--workers", "2", "--trials", "4", "--sampler", "random"]
    code, out, err = sweep([*args, "--space", "none", "--param", "model.lr={loguniform: [1e-3, 1e-2]}", *TINY], capsys)
    assert code == 0, err
    trials = load(runs_dir / "digits_cnn" / "sweep-0").get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.params["model.lr"] for t in trials}) == 4
    assert len({t.user_attrs["run_dir"] for t in trials}) == 4
    workers = {t.user_attrs["worker"]["pid"] for t in trials}
    assert len(workers) == 2
    spans = sorted((t.datetime_start, t.datetime_complete, t.user_attrs["worker"]["pid"]) for t in trials)
    overlapping = any(a[2] != b[2] and b[0] < a[1] for a, b in zip(spans, spans[1:], strict=False))
    assert overlapping, spans


@pytest.mark.parametrize(
    ("backend", "machines"),
    [("journal", "three machines"), ("sqlite", "one machine"), ("postgresql", "three machines")],
)
def test_workers_creating_one_study_at_once_share_it(
    tmp_path: Path, backend: str, machines: str, request: pytest.FixtureRequest
) -> None:
    """Three processes creating the same new study at the same moment all end up in it, one of them creating it.

    On one machine they share the sweep folder's lock file; "three machines" gives each its own, as a journal file
    on a shared filesystem or a database server sees it (a fresh PostgreSQL database: its tables are created at
    the same moment too).
    """
    urls = {"journal": str(tmp_path / "study.journal"), "sqlite": f"sqlite:///{tmp_path / 'studies.db'}"}
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else urls[backend]
    start = time.time() + 2.5  # every process waits for this moment, after its imports
    procs = []
    for i in range(3):
        lock = tmp_path / ("lock" if machines == "one machine" else f"lock{i}")
        code = (
            "import json, time; from pathlib import Path; from experiments.tuning.studies import create_or_load\n"
            f"time.sleep(max(0.0, {start} - time.time()))\n"
            f"study, created = create_or_load({url!r}, 'x/sweep-x', ['maximize'], {{}}, Path({str(lock)!r}))\n"
            "print(json.dumps([created, study._study_id]))"
        )
        procs.append(subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True))
    outcomes = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert [p.returncode for p in procs] == [0] * 3
    assert len({study_id for _, study_id in outcomes}) == 1
    assert sum(created for created, _ in outcomes) == 1 or machines != "one machine"


@pytest.mark.parametrize("path", sorted(SWEEPS_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_sweep_file_is_valid(path: Path) -> None:
    console.quiet()
    name, opts, rest = parse_command([path.stem])
    sweep_, source = make_sweep(name, opts, rest)
    assert source == str(path) and sweep_.space and sweep_.trials >= 1
    assert path.read_text().startswith("# "), "a sweep file starts with a one-line description"


SPACE_TEXT = "space:\n  model.lr: {loguniform: [1.0e-3, 1.0e-1]}\n"
BAD_INPUT = {
    "unknown key": (["--param", "model.lrr={loguniform: [1e-4, 1e-1]}"], "unknown setting --model.lrr; did you mean"),
    "empty range": (["--param", "model.dropout={uniform: [0.1, 0.1]}"], "model.dropout: empty range [0.1, 0.1]"),
    "inverted range": (["--param", "model.lr={loguniform: [0.1, 1e-4]}"], "inverted range [0.1, 0.0001]"),
    "unknown distribution": (
        ["--param", "model.lr={logunifrom: [1e-4, 1e-1]}"],
        "unknown distribution 'logunifrom'; did you mean loguniform?",
    ),
    "empty choice": (["--param", "data.batch_size={choice: []}"], "empty choice"),
    "value the model rejects": (["--param", "model.lr={uniform: [-1, 1]}"], "model.lr must be positive"),
    "grid too large": (
        ["--sampler", "grid", "--trials", "3", *GRID],
        "the grid has 4 points but --trials is 3: raise --trials to 4",
    ),
    "grid of a continuous range": (
        ["--sampler", "grid", "--param", "model.lr={loguniform: [1e-4, 1e-1]}"],
        "model.lr is a continuous range",
    ),
    "unknown sampler": (["--sampler", "bayes", *GRID], "--sampler bayes: must be one of tpe, random, grid, cmaes"),
    "cmaes on a choice": (["--sampler", "cmaes", *GRID], "--sampler cmaes searches numeric ranges only"),
    "bad pruner argument": (["--pruner_args", "{n_startup: 2}", *GRID], "--pruner_args {'n_startup': 2}:"),
    "pruning two objectives": (
        ["--objective", "val/acc", "--objective", "params", "--pruner", "median", *GRID],
        "pruning needs a single objective",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT), ids=list(BAD_INPUT))
def test_bad_input_is_one_line_and_writes_nothing(
    case: str, runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args, expected = BAD_INPUT[case]
    # digits_mlp has no sweep file: the space is the --param options alone.
    code, out, err = sweep(["digits_mlp", "--runs_dir", str(runs_dir), *args], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0]
    assert not any(runs_dir.iterdir()), "a rejected sweep writes nothing"


BAD_FILES = {
    "space is a list": ("space: [1, 2]\n", "'space' maps launcher settings to distributions"),
    "binary content": (bytes(range(256)) * 4, "is not a text file"),
    "negative trials": ("trials: -3\n" + SPACE_TEXT, "trials must be a whole number >= 1, got -3"),
    "zero trials": ("trials: 0\n" + SPACE_TEXT, "trials must be a whole number >= 1, got 0"),
    "trials not a number": ("trials: many\n" + SPACE_TEXT, "trials must be a whole number >= 1, got 'many'"),
    "seed not a number": ("seed: abc\n" + SPACE_TEXT, "seed must be a whole number, got 'abc'"),
    "sampler_args a list": ("sampler_args: [1]\n" + SPACE_TEXT, "sampler_args takes a mapping"),
}


@pytest.mark.parametrize("case", list(BAD_FILES), ids=list(BAD_FILES))
def test_bad_sweep_file_is_one_line_and_writes_nothing(
    case: str, runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    content, expected = BAD_FILES[case]
    path = tmp_path / "bad.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, out, err = sweep(["digits_mlp", "--runs_dir", str(runs_dir), "--space", str(path)], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), err
    assert expected in lines[0]
    assert not any(runs_dir.iterdir()), "a rejected sweep writes nothing"


HEARTBEAT_CASES = {
    "interval zero": (
        "ZEROTUNE_SWEEP_HEARTBEAT",
        "0",
        "ZEROTUNE_SWEEP_HEARTBEAT=0: give a whole number of seconds >= 1",
    ),
    "grace not a number": ("ZEROTUNE_SWEEP_GRACE", "soon", "ZEROTUNE_SWEEP_GRACE=soon: give a whole number of seconds"),
    "grace within the interval": ("ZEROTUNE_SWEEP_GRACE", "20", "ZEROTUNE_SWEEP_GRACE=20 must be longer than the"),
}


@pytest.mark.parametrize("case", list(HEARTBEAT_CASES), ids=list(HEARTBEAT_CASES))
def test_bad_heartbeat_setting_is_one_line(
    case: str, runs_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    variable, value, expected = HEARTBEAT_CASES[case]
    monkeypatch.setenv(variable, value)
    code, _, err = sweep(["digits_mlp", "--runs_dir", str(runs_dir), *GRID], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {expected}"), err
    assert not any(runs_dir.iterdir())


def test_study_file_of_another_experiment_is_refused(
    grid_study: tuple[Path, str], runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = grid_study
    journal = folder / "study.journal"
    before = journal.read_bytes()
    storage = ["--storage", str(journal), "--runs_dir", str(runs_dir), *GRID]
    code, _, err = sweep(["digits_mlp", *storage], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "is the study file of digits_cnn (study digits_cnn/sweep-0), not of digits_mlp" in err
    code, _, err = sweep(["digits_mlp", "--resume", str(folder)], capsys)
    assert code == 2 and "leave out digits_mlp" in err
    assert journal.read_bytes() == before and not any(runs_dir.iterdir())


def test_multi_objective_study_writes_each_pareto_optimal_config(
    runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["digits_cnn", "--runs_dir", str(runs_dir), "--space", "none", "--sampler", "random", "--trials", "2"]
    args += ["--param", "model.channels={choice: [[4, 8], [32, 64]]}", "--objective", "val/acc", "--objective"]
    code, out, err = sweep([*args, "params", *TINY, "--trainer.max_epochs", "1"], capsys)
    assert code == 0, err
    folder = runs_dir / "digits_cnn" / "sweep-0"
    trials = load(folder).get_trials()
    assert all(len(t.values) == 2 for t in trials) and "no pruning" in out
    # The parameter count is the model's: the wider network has more.
    counts = {tuple(json.loads(t.params["model.channels"])): t.values[1] for t in trials}
    assert len(counts) == 1 or counts[(4, 8)] < counts[(32, 64)]
    assert "Pareto-optimal trials (val/acc (max), params (min))" in out
    written = sorted(folder.glob("best-trial_*.yaml"))
    assert written and not (folder / "best.yaml").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--sampler", "cmaes", "--pruner", "hyperband"], ("cmaes", "hyperband")),
        (["--sampler", "random", "--pruner", "none", "--seed", "7"], ("random", "none")),
    ],
)
def test_samplers_and_pruners_are_built_from_the_command(args: list[str], expected: tuple[str, str]) -> None:
    from experiments.tuning.studies import make_pruner, make_sampler

    console.quiet()
    space = ["--space", "none", "--param", "model.lr={loguniform: [1e-4, 1e-1]}", "--param"]
    name, opts, rest = parse_command(["digits_cnn", *space, "model.dropout={uniform: [0, 0.5, 0.1]}", *args])
    sweep_, _ = make_sweep(name, opts, rest)
    assert (sweep_.sampler, sweep_.pruner) == expected
    sampler, pruner = make_sampler(sweep_), make_pruner(sweep_)
    assert type(sampler).__name__.lower().startswith(expected[0][:4])
    if expected[1] == "hyperband":
        assert pruner._max_resource == 20  # digits_cnn's max_epochs: a trial's whole budget


def test_version_names_the_run_folder(runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["digits_mlp", "--runs_dir", str(runs_dir), "--version", "baseline", *TINY, "--trainer.max_epochs", "1"]
    code, _, err = run_launcher([*args, "--test_after_fit", "false"], capsys)
    assert code == 0, err
    run = runs_dir / "digits_mlp" / "baseline"
    assert (run / "config.yaml").is_file()
    # The saved config does not pin the folder: running it again makes a new version_N.
    assert yaml.safe_load((run / "config.yaml").read_text())["version"] is None
    code, _, err = run_launcher(args, capsys)
    assert code == 2 and f"--version baseline: {run} already holds a run" in err
