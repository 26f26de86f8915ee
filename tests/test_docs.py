"""The documentation cannot drift: every relative link in README.md and docs/ resolves (file and heading), and every
``python -m experiments.run ...`` command in their code blocks parses (``--print_config``: no training)."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
from conftest import ROOT

from experiments.launcher.recipes import CONFIG_DIR

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", flags=re.M | re.S)


def slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in path.read_text().splitlines() if line.startswith("#")}


def links() -> list[tuple[Path, str]]:
    found = []
    for doc in DOCS:
        text = FENCE.sub("", doc.read_text())  # links inside code blocks are code, not links
        found += [(doc, target) for target in LINK.findall(text) if not re.match(r"[a-z]+:", target)]
    return found


@pytest.mark.parametrize(("doc", "target"), links(), ids=lambda v: v.name if isinstance(v, Path) else v)
def test_relative_link_resolves(doc: Path, target: str) -> None:
    path_part, _, anchor = target.partition("#")
    path = (doc.parent / path_part).resolve() if path_part else doc
    assert path.exists(), f"{doc.relative_to(ROOT)} links to {target}, which does not exist"
    if anchor and path.suffix == ".md":
        assert anchor in anchors(path), f"{doc.relative_to(ROOT)} links to #{anchor}, no such heading in {path.name}"


def launcher_commands() -> list[tuple[str, str]]:
    """``(document, command line)`` for each ``experiments.run`` command in a code block (continued lines joined)."""
    commands = []
    for doc in DOCS:
        for block in FENCE.findall(doc.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                if re.search(r"-m experiments\.run(\s|$)", line):
                    commands.append((doc.name, line.strip()))
    return commands


def test_docs_show_launcher_commands() -> None:
    assert len(launcher_commands()) >= 15


@pytest.mark.parametrize(("doc", "line"), launcher_commands(), ids=lambda v: v)
def test_launcher_command_parses(doc: str, line: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from experiments.run import main

    tokens = shlex.split(line, comments=True)
    args = tokens[tokens.index("experiments.run") + 1 :]
    if "$@" in args:
        pytest.skip("the sbatch script's command takes its arguments from sbatch: tests/test_slurm.py runs the script")
    if "--help" in args:
        pytest.skip("--help is tested on its own (tests/test_launcher.py)")
    if "--list" in args:
        assert main(args) == 0
        return
    args = [_stand_in(arg, prev, tmp_path) for prev, arg in zip(["", *args], args, strict=False)]
    try:
        code = main([*args, "--print_config"])
    except SystemExit as done:  # the parser prints the config, then exits
        code = done.code
    out, err = capsys.readouterr()
    assert code == 0, f"{doc}: {line}\n{err}"
    assert "model:" in out and "trainer:" in out


def _stand_in(arg: str, previous: str, tmp_path: Path) -> str:
    """Files a documented command names but a checkout has not (your YAML, an earlier run) get a stand-in."""
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
