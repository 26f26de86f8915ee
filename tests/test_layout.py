"""The house's layout holds: imports point down only, between the packages and between the wings of ``experiments``,
and no module imports itself back through others; every command is in the one command table."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

#: Packages from the bottom up: each may import only those before it (and itself).
PACKAGES = ("fileio", "datamodules", "lightning_models", "experiments")
#: The wings of ``experiments`` from the bottom up; the Python API (``api``) sits on the launcher, under the sweep,
#: benchmarks and demos that call it; the commands users type (its top-level modules) sit above them, and the command
#: table (``__main__``) above those.
WINGS = ("rundir", "inference", "callbacks", "launcher", "api", "tuning", ("benchmarks", "demos"))


def layer(module: str) -> tuple[int, int]:
    """Where a module sits: its package's place, then (in ``experiments``) its wing's."""
    parts = module.split(".")
    package = PACKAGES.index(parts[0])
    if parts[0] != "experiments":
        return package, 0
    if len(parts) == 1 or parts[1] == "__main__":
        return package, len(WINGS) + 1
    for place, wing in enumerate(WINGS):
        if parts[1] in ((wing,) if isinstance(wing, str) else wing):
            return package, place
    return package, len(WINGS)  # a command


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


def imports() -> dict[str, set[str]]:
    """``module: {project modules it imports}``, from the source (imports inside functions and ``TYPE_CHECKING``
    blocks count too: they are arrows of the design all the same)."""
    mods = modules()
    arrows: dict[str, set[str]] = {}
    for name, path in mods.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                               for a in node.names)  # fmt: skip
        # A module's own package (its __init__) is not an arrow out of it.
        arrows[name] = {t for t in targets if t in mods and t != name and not name.startswith(t + ".")}
    return arrows


def cycles(arrows: dict[str, set[str]]) -> list[list[str]]:
    """Groups of modules that import each other (strongly connected components of more than one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(arrows.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(arrows):
        if v not in index:
            visit(v)
    return found


def test_imports_point_down_only() -> None:
    arrows = imports()
    upward = sorted(f"{a} -> {b}" for a, targets in arrows.items() for b in targets if layer(b) > layer(a))
    assert not upward, "imports that run back up:\n" + "\n".join(upward)


def test_no_import_circles() -> None:
    assert cycles(imports()) == []


def test_the_check_finds_a_circle_and_an_upward_arrow() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer("datamodules.text") < layer("lightning_models.gpt") < layer("experiments.rundir.status")
    assert layer("experiments.callbacks.safety") < layer("experiments.launcher.cli") < layer("experiments.run")


def test_every_command_is_in_the_table_and_listed() -> None:
    from experiments.__main__ import COMMANDS

    top = ROOT / "experiments"
    commands = {p.stem for p in top.glob("*.py") if not p.stem.startswith("_") and "def main(" in p.read_text()}
    assert set(COMMANDS) == commands
    assert all(module == f"experiments.{name}" for name, (module, _) in COMMANDS.items())
    listed = subprocess.run([sys.executable, "-m", "experiments", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert listed.returncode == 0
    for name, (_, what) in COMMANDS.items():
        assert f"  {name}" in listed.stdout and what in listed.stdout


@pytest.mark.parametrize("command", ["run", "runs", "predict", "generate", "view", "sweep", "lr_find", "merge_lora"])
def test_the_table_runs_each_command(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    from experiments.__main__ import main

    assert main([command, "--help"]) == 0
    assert f"experiments.{command}" in capsys.readouterr().out


def test_an_unknown_command_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from experiments.__main__ import main

    assert main(["predct"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown command 'predct'; did you mean 'predict'?") and len(err.splitlines()) == 1
