"""The built wheel: importable from any directory, configs included, nothing read from the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

CHECK = """
import sys
from pathlib import Path

import datamodules
import fileio
import lightning_models
from datamodules import DigitsDataModule
from experiments.launcher.recipes import experiment_names
from lightning_models import SmallCNN

target = Path(sys.argv[1]).resolve()
for module in (fileio, lightning_models, datamodules):
    assert Path(module.__file__).resolve().is_relative_to(target), module.__file__
dm = DigitsDataModule()
dm.setup()
model = SmallCNN(num_classes=dm.num_classes, input_shape=dm.input_shape)
names = experiment_names()
print(len(names), "digits_cnn" in names, type(model).__name__)
"""


def test_wheel_imports_from_any_directory(tmp_path: Path) -> None:
    # Built from a copy: setuptools writes build/ and *.egg-info next to the sources, never into the checkout.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in ("fileio", "lightning_models", "datamodules", "experiments"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(src)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    if build.returncode != 0 and "No module named pip" in build.stderr:
        pytest.skip("pip is not installed in this environment")
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("zerotune-*.whl")
    target = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)]
    assert subprocess.run(install, capture_output=True, text=True).returncode == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The installed copy comes first on the path; the checkout is neither the working directory nor on the path.
    env = {**os.environ, "PYTHONPATH": str(target)}
    run = subprocess.run(
        [sys.executable, "-c", CHECK, str(target)], capture_output=True, text=True, cwd=elsewhere, env=env
    )
    assert run.returncode == 0, run.stderr
    count, has_default, model = run.stdout.split()
    configs = [p for p in (ROOT / "experiments" / "configs").glob("*.yaml") if not p.name.startswith("_")]
    assert int(count) == len(configs) and has_default == "True" and model == "SmallCNN"
