"""The documentation cannot drift: every relative link in README.md and docs/ resolves (file and heading), every file
and module of the project the text names exists, and every command the text shows (in code blocks and in inline code)
runs. ``python -m experiments.run ...`` (or ``zerotune run ...``) parses its arguments (``--print_config``: no
training); every other ``python -m experiments.X`` / ``python -m experiments X`` / ``zerotune X`` is a command of
``python -m experiments``, answers ``--help`` with a usage line that names it, and its help knows every option the
docs give it; every ``make TARGET`` is a target ``make help`` lists, and its ``ARGS`` parse like the command's."""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import re
import shlex
import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import ROOT

from experiments.__main__ import COMMANDS
from experiments.launcher.recipes import CONFIG_DIR

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", flags=re.M | re.S)
SPAN = re.compile(r"`([^`\n]+)`")
#: Inline code that is a command: the interpreter with ``-m experiments``, ``zerotune`` or ``make`` first.
INLINE_COMMAND = re.compile(r"^(\S*python3?\s+-m\s+experiments\b|zerotune(\s|$)|make(\s|$))")
SEPARATORS = {"|", "||", "&&", ";", "&"}
#: Commands that hand the options they do not know to the launcher (``--trainer.max_epochs 3`` for every trial).
PASS_TO_LAUNCHER = {"sweep", "lr_find"}
MODULES = {module: name for name, (module, _) in COMMANDS.items()}
#: A placeholder for an experiment's name in the docs (``python -m experiments.run NAME``).
PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]*$")


def slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in path.read_text().splitlines() if line.startswith("#")}


def prose(doc: Path) -> str:
    """The page without its code blocks."""
    return FENCE.sub("", doc.read_text())


def links() -> list[tuple[Path, str]]:
    found = []
    for doc in DOCS:
        found += [(doc, target) for target in LINK.findall(prose(doc)) if not re.match(r"[a-z]+:", target)]
    return found


@pytest.mark.parametrize(("doc", "target"), links(), ids=lambda v: v.name if isinstance(v, Path) else v)
def test_relative_link_resolves(doc: Path, target: str) -> None:
    path_part, _, anchor = target.partition("#")
    path = (doc.parent / path_part).resolve() if path_part else doc
    assert path.exists(), f"{doc.relative_to(ROOT)} links to {target}, which does not exist"
    if anchor and path.suffix == ".md":
        assert anchor in anchors(path), f"{doc.relative_to(ROOT)} links to #{anchor}, no such heading in {path.name}"


# --- files and modules named in the text -------------------------------------------------------------------------

PACKAGES = ("experiments", "datamodules", "lightning_models", "fileio", "tests")
PATH = re.compile(rf"(?<![\w./-])((?:{'|'.join(PACKAGES)})/[\w./-]*)")
DOTTED = re.compile(rf"(?<![\w./-])((?:{'|'.join(PACKAGES[:-1])})(?:\.\w+)+)")


def named(pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    """``(page, name)`` for each match of ``pattern`` in inline code (names with a placeholder such as ``NAME``
    left out)."""
    found = {
        (doc.name, name.rstrip("."))
        for doc in DOCS
        for span in SPAN.findall(prose(doc))
        for name in pattern.findall(span)
        if not re.search(r"[A-Z]{2,}", name)
    }
    return sorted(found)


@pytest.mark.parametrize(("doc", "path"), named(PATH), ids=lambda v: v)
def test_named_path_exists(doc: str, path: str) -> None:
    assert (ROOT / path).exists(), f"{doc} names {path}, which does not exist"


@pytest.mark.parametrize(("doc", "name"), named(DOTTED), ids=lambda v: v)
def test_named_module_or_class_exists(doc: str, name: str) -> None:
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            assert hasattr(obj, attr), f"{doc} names {name}: {'.'.join(parts[:cut])} has no {attr}"
            obj = getattr(obj, attr)
        return
    pytest.fail(f"{doc} names {name}, which is no module of the project")


def test_where_things_live_maps_every_folder() -> None:
    """The README's map lists each package, ``docs/``, ``tests/`` and each folder of ``experiments/``, and no other."""
    section = (ROOT / "README.md").read_text().split("## Where things live", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `([\w/]+)/` \|", section, flags=re.M)
    folders = {p.parent.name for p in ROOT.glob("*/__init__.py")} | {"docs", "tests"}
    wings = {p for p in (ROOT / "experiments").iterdir() if any(p.glob("*.py")) or any(p.glob("*.yaml"))}
    folders |= {f"experiments/{p.name}" for p in wings}
    assert len(listed) == len(set(listed)) and set(listed) == folders, set(listed) ^ folders


# --- commands ----------------------------------------------------------------------------------------------------


def split_commands(line: str) -> list[tuple[str, str, list[str]]]:
    """The zerotune commands in a shell line, as ``(kind, name, args)``.

    ``kind`` is ``module`` (``python -m experiments.X``: name ``experiments.X``), ``table`` (``python -m experiments
    X`` or ``zerotune X``: name ``X``, empty for the table alone) or ``make`` (name empty, args the targets and
    variables). Comments, other programs and the text before the interpreter (``flock -x LOCK``) are left out.
    """
    found = []
    tokens = shlex.split(line, comments=True)
    segments: list[list[str]] = [[]]
    for token in tokens:
        if token in SEPARATORS:
            segments.append([])
        else:
            segments[-1].append(token)
    for seg in segments:
        at = next((i for i, t in enumerate(seg[:-1]) if t == "-m" and re.match(r"experiments(\.|$)", seg[i + 1])), None)
        if at is not None:
            module, rest = seg[at + 1], seg[at + 2 :]
            if module == "experiments":
                name = rest[0] if rest and not rest[0].startswith("-") else ""
                found.append(("table", name, rest[1:] if name else rest))
            else:
                found.append(("module", module, rest))
        elif seg and Path(seg[0]).name == "zerotune":
            rest = seg[1:]
            name = rest[0] if rest and not rest[0].startswith("-") else ""
            found.append(("table", name, rest[1:] if name else rest))
        elif seg and seg[0] == "make":
            found.append(("make", "", seg[1:]))
    return found


def shown_commands() -> list[tuple[str, str]]:
    """``(page, line)`` for each shell line of a code block (continued lines joined) and each inline code span that
    holds a zerotune command."""
    shown: dict[tuple[str, str], None] = {}
    for doc in DOCS:
        text = doc.read_text()
        for block in FENCE.findall(text):
            for line in block.replace("\\\n", " ").splitlines():
                if re.search(r"-m experiments\b|\bzerotune\s|^\s*make\b", line) and split_commands(line):
                    shown[(doc.name, line.strip())] = None
        for span in SPAN.findall(prose(doc)):
            if INLINE_COMMAND.match(span):
                shown[(doc.name, span.strip())] = None
    return list(shown)


def test_docs_show_every_command() -> None:
    """Each command of the table and the common make targets are shown somewhere (and so run by these tests)."""
    kinds = [c for _, line in shown_commands() for c in split_commands(line)]
    names = {MODULES.get(name, name) for kind, name, _ in kinds if kind != "make"}
    assert set(COMMANDS) <= names, set(COMMANDS) - names
    targets = {t for kind, _, args in kinds if kind == "make" for t in args}
    assert {"run", "test", "help"} <= targets
    # Every experiment run --list lists is in the README's table and shown with a run line, except the two recipes
    # that train on a JPEG folder of your own (docs/real-data.md) and the two halves of the transfer demo (its command).
    recipes = {line.split()[0] for line in parse_run(("--list",))[1].splitlines() if line.strip()}
    readme = {span.strip() for span in SPAN.findall((ROOT / "README.md").read_text())}
    assert recipes - readme == set(), recipes - readme
    ran = {args[0] for _, name, args in kinds if name in ("run", "experiments.run") and args}
    elsewhere = {"cifar10_lenet_folder", "cifar10_resnet18_folder", "digits_pretrain", "digits_transfer"}
    assert recipes - ran == elsewhere, recipes - ran


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_help_starts_with_its_usage(command: str) -> None:
    code, text = call_table((command, "--help"))
    assert code == 0, text[-2000:]
    check_usage(command, text)


@pytest.mark.parametrize(("doc", "line"), shown_commands(), ids=lambda v: v)
def test_documented_command_runs(doc: str, line: str) -> None:
    for kind, name, args in split_commands(line):
        if "$@" in args:
            pytest.skip("the sbatch script's command takes its arguments from sbatch (tests/test_slurm.py runs it)")
        check(kind, name, args, where=f"{doc}: {line}")


# Commands no page shows, and options no command has: the checker must refuse each.
MADE_UP = [
    "python -m experiments.trian digits_cnn",  # no such module
    "python -m experiments.rundir.status runs/digits_cnn/version_0",  # a module, but not a command
    "zerotune predikt runs/digits_cnn/version_0 scan.png",  # no such command
    "python -m experiments swep digits_cnn",
    "python -m experiments.sweep digits_cnn --wrokers 2",  # no such option
    "zerotune predict runs/digits_cnn/version_0 scan.png --top_k 2",
    "python -m experiments.lr_find digits_cnn --trainer.max_epoks 3",  # a launcher option that does not exist
    "python -m experiments.run digits_cnn --trainer.max_epoks 3",
    "zerotune run no_such_experiment",
    "make finetune_demo",  # the target is finetune-demo
    'make sweep ARGS="digits_cnn --wrokers 2"',
]


@pytest.mark.parametrize("line", MADE_UP)
def test_checker_refuses_a_made_up_command(line: str) -> None:
    with pytest.raises(AssertionError):
        for kind, name, args in split_commands(line):
            check(kind, name, args, where=line)


def test_checker_accepts_the_command_table_forms() -> None:
    """The same command typed three ways passes, and so does the table alone."""
    for line in [
        "python -m experiments.sweep digits_cnn --workers 2 --trainer.max_epochs 3",
        "python -m experiments sweep digits_cnn --workers 2 --trainer.max_epochs 3",
        "zerotune sweep digits_cnn --workers 2 --trainer.max_epochs 3",
        "zerotune run digits_mlp --trainer.max_epochs 3",
        "python -m experiments --help",
        "zerotune",
        'make sweep ARGS="digits_cnn --workers 2"',
    ]:
        (command,) = split_commands(line)
        check(*command, where=line)


def check(kind: str, name: str, args: list[str], where: str) -> None:
    """Fail (``AssertionError``) unless the command ``split_commands`` found exists and takes ``args``."""
    if kind == "make":
        check_make(args, where)
        return
    if kind == "module":
        assert name in MODULES, f"{where}\n{name} is not a command (python -m experiments lists them)"
        name = MODULES[name]
    if not name:
        code, out = call_table(tuple(args))
        assert code == 0 and all(f"  {command} " in out for command in COMMANDS), f"{where}\n{out}"
        return
    assert name in COMMANDS, f"{where}\nno command '{name}' (python -m experiments lists them)"
    if name == "run":
        check_run(args, where)
        return
    code, text = call_table((name, "--help"))
    assert code == 0, f"{where}\n{name} --help exits with {code}"
    check_usage(name, text)
    unknown = [option for option in options(args) if not re.search(rf"(?<![\w.-]){re.escape(option)}(?![\w-])", text)]
    if name in PASS_TO_LAUNCHER:
        experiment = args[0] if args and not args[0].startswith("-") else "digits_cnn"
        check_run([experiment, *launcher_overrides(args)], where)
        unknown = [option for option in unknown if "." not in option]
    assert not unknown, f"{where}\n{name} has no option {', '.join(unknown)} (its --help lists them)"


def check_usage(name: str, text: str) -> None:
    """The help starts with a usage line that names the command as users type it."""
    first = text.lstrip("\n").splitlines()[0]
    assert first.startswith("usage: "), f"{name} --help starts with {first!r}, not a usage line"
    assert re.search(rf"(python -m experiments\.{name}|zerotune {name})(\s|$)", first), first


def options(args: list[str]) -> list[str]:
    """The long options among ``args`` (``--key=value`` as ``--key``)."""
    return [a.split("=", 1)[0] for a in args if a.startswith("--")]


def launcher_overrides(args: list[str]) -> list[str]:
    """The dotted options (``--trainer.max_epochs 3``) and their values: what a sweep passes to every trial."""
    kept, keep = [], False
    for a in args:
        if a.startswith("--"):
            keep = "." in a.split("=", 1)[0]
        if keep:
            kept.append(a)
    return kept


@functools.cache
def call_table(argv: tuple[str, ...]) -> tuple[int, str]:
    """``python -m experiments ARGV`` in this process: (exit code, what it printed); each answer is made once."""
    from experiments.__main__ import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(list(argv))
    return code, out.getvalue()


def check_run(args: list[str], where: str) -> None:
    """``experiments.run ARGS`` parses: the resolved config is printed (``--print_config``), nothing trains."""
    if "--help" in args or "-h" in args:
        code, text = call_table(("run", "--help"))
        assert code == 0, f"{where}\n{text[-2000:]}"
        check_usage("run", text)
        return
    code, out, err = parse_run(tuple(args))
    assert code == 0, f"{where}\n{err[-2000:]}"
    if "--list" not in args:
        assert "model:" in out and "trainer:" in out, f"{where}\n{out[-2000:]}"


@functools.cache
def parse_run(args: tuple[str, ...]) -> tuple[int, str, str]:
    """``experiments.run ARGS --print_config`` in this process (``ARGS`` alone with ``--list``): (exit code, stdout,
    stderr); the same arguments shown on several pages are parsed once."""
    from experiments.run import main

    out, err = io.StringIO(), io.StringIO()
    with tempfile.TemporaryDirectory() as tmp:
        pairs = enumerate(zip(["", *args], args, strict=False))
        argv = [_stand_in(arg, prev, i, Path(tmp)) for i, (prev, arg) in pairs]
        if "--list" not in argv:
            argv.append("--print_config")
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as done:  # the parser prints the config, then exits
                code = done.code
    return code, out.getvalue(), err.getvalue()


def _stand_in(arg: str, previous: str, index: int, tmp_path: Path) -> str:
    """Files a documented command names but a checkout has not (your YAML, an earlier run) get a stand-in, and an
    experiment's placeholder (``NAME``) the default experiment."""
    if index == 0 and PLACEHOLDER.match(arg):
        return "digits_cnn"
    if previous == "--config" and not Path(arg).is_file():
        stand_in = tmp_path / Path(arg).name
        shutil.copy(CONFIG_DIR / "digits_cnn.yaml", stand_in)
        return str(stand_in)
    if previous == "--resume":
        # runs/NAME/version_N: a run folder of experiment NAME as the launcher leaves it.
        run = tmp_path / "runs" / Path(arg).parent.name / Path(arg).name
        run.mkdir(parents=True, exist_ok=True)
        shutil.copy(CONFIG_DIR / f"{Path(arg).parent.name}.yaml", run / "config.yaml")
        return str(run)
    return arg


def makefile_targets() -> dict[str, str]:
    """``target: module`` for each target ``make help`` lists (module empty unless its recipe runs
    ``python -m MODULE $(ARGS)``)."""
    targets: dict[str, str] = {}
    current = None
    for line in (ROOT / "Makefile").read_text().splitlines():
        if match := re.match(r"^([A-Za-z_-]+):.*## ", line):
            current = match.group(1)
            targets[current] = ""
        elif current and (match := re.search(r"-m (experiments\.\w+) \$\(ARGS\)", line)):
            targets[current] = match.group(1)
        elif not line.startswith("\t"):
            current = None
    return targets


def check_make(args: list[str], where: str) -> None:
    """Each target is one ``make help`` lists; ``ARGS=...`` is checked as the arguments of the target's command."""
    targets = makefile_targets()
    variables = dict(a.split("=", 1) for a in args if "=" in a)
    named = [a for a in args if "=" not in a and not a.startswith("-")]
    for target in named:
        assert target in targets, f"{where}\nthe Makefile has no target {target} (make help lists them)"
        if targets[target] and "ARGS" in variables:
            check("module", targets[target], shlex.split(variables["ARGS"]), where)
