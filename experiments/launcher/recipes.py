"""The named experiments: ``experiments/configs/NAME.yaml`` over ``_defaults.yaml``, read without launching anything.

YAML only (no PyTorch, no Lightning): listing the experiments, or reading a recipe for a benchmark, answers at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULTS_FILE = CONFIG_DIR / "_defaults.yaml"
DEFAULT_EXPERIMENT = "digits_cnn"


def experiment_names() -> dict[str, str]:
    """Named experiments and their one-line descriptions (the YAML's first comment line)."""
    names = {}
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        if path.name.startswith("_"):
            continue
        first = path.read_text().splitlines()[0] if path.stat().st_size else ""
        names[path.stem] = first.lstrip("# ").strip() if first.startswith("#") else ""
    return names


def read_recipe(name: str) -> dict[str, Any]:
    """Experiment ``name``'s YAML over ``_defaults.yaml`` (its ``trainer`` section key by key), as the launcher
    layers them before any command-line override: for tools that read a recipe without launching it."""
    defaults = yaml.safe_load(DEFAULTS_FILE.read_text()) or {}
    cfg = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text()) or {}
    return {**defaults, **cfg, "trainer": {**(defaults.get("trainer") or {}), **(cfg.get("trainer") or {})}}
