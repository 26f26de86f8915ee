"""Search spaces of sweeps: launcher settings mapped to distributions, in YAML or on the command line.

Each key is a launcher setting (what follows ``--`` on the ``experiments.run`` command line); each value names one
distribution::

    model.lr: {loguniform: [1.0e-4, 1.0e-1]}          # log-uniform between the bounds
    model.dropout: {uniform: [0.0, 0.5]}               # uniform; [0.0, 0.5, 0.1] in steps of 0.1
    trainer.max_epochs: {int: [5, 20, 5]}              # integers 5, 10, 15, 20 (step optional)
    model.head_hidden: {logint: [16, 256]}             # integers, log-uniform
    model.channels: {choice: [[16, 32], [32, 64]]}     # any YAML values, lists included
    data.batch_size: {choice: [32, 64, 128]}

Every mistake (an unknown distribution, an empty or inverted range, a step that does not divide the range, an empty
choice) raises :class:`~experiments.rundir.console.UsageError` with one line naming the key.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from experiments.rundir.console import UsageError

#: Distribution names and what their arguments are.
DISTRIBUTIONS = {
    "uniform": "[low, high] or [low, high, step]",
    "loguniform": "[low, high] with low > 0",
    "int": "[low, high] or [low, high, step] of integers",
    "logint": "[low, high] of integers with low >= 1",
    "choice": "[value, value, ...]",
}
_PRIMITIVE = (type(None), bool, int, float, str)


@dataclass(frozen=True)
class Dimension:
    """One searched launcher setting.

    Attributes:
        key: The launcher setting, e.g. ``model.lr``.
        kind: One of :data:`DISTRIBUTIONS`.
        args: The distribution's arguments as written (bounds and step, or the choices).
    """

    key: str
    kind: str
    args: tuple[Any, ...]

    @property
    def encoded(self) -> bool:
        """Whether choices are stored as JSON text (Optuna stores only None, bool, int, float and str)."""
        return self.kind == "choice" and not all(isinstance(c, _PRIMITIVE) for c in self.args)

    def distribution(self) -> BaseDistribution:
        """The Optuna distribution of this dimension."""
        if self.kind == "choice":
            return CategoricalDistribution([self.encode(c) for c in self.args])
        low, high, *step = self.args
        if self.kind in ("int", "logint"):
            return IntDistribution(int(low), int(high), log=self.kind == "logint", step=int(step[0]) if step else 1)
        return FloatDistribution(low, high, log=self.kind == "loguniform", step=step[0] if step else None)

    def encode(self, value: Any) -> Any:
        return json.dumps(value) if self.encoded else value

    def decode(self, value: Any) -> Any:
        return json.loads(value) if self.encoded else value

    def grid(self) -> list[Any] | None:
        """Every value, encoded, for a grid search; ``None`` for a continuous range."""
        if self.kind == "choice":
            return [self.encode(c) for c in self.args]
        low, high, *step = self.args
        if self.kind == "int":
            return list(range(int(low), int(high) + 1, int(step[0]) if step else 1))
        if self.kind == "uniform" and step:
            n = round((high - low) / step[0])
            return [round(low + i * step[0], 12) for i in range(n + 1)]
        return None

    def corners(self) -> list[Any]:
        """Values that exercise the whole dimension when checking it against the launcher: bounds, every choice."""
        return list(self.args) if self.kind == "choice" else [self.args[0], self.args[1]]

    def spec(self) -> dict[str, list[Any]]:
        """The dimension as written in YAML."""
        return {self.kind: list(self.args)}


class SearchSpace:
    """The searched launcher settings of a sweep, in declaration order.

    Args:
        dims: The dimensions.
    """

    def __init__(self, dims: list[Dimension]) -> None:
        self.dims = dims

    @classmethod
    def parse(cls, mapping: Any, source: str = "search space") -> SearchSpace:
        """Build and check a space from ``{key: {distribution: args}}``.

        Raises:
            UsageError: naming ``source`` and the key, for any malformed entry.
        """
        if not isinstance(mapping, Mapping) or not mapping:
            raise UsageError(
                f"{source}: expected settings mapped to distributions, e.g. 'model.lr: {{loguniform: [1e-4, 1e-1]}}'"
            )
        return cls([parse_dimension(str(key), spec, source) for key, spec in mapping.items()])

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.dims]

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Draw one point from ``trial``; returns ``{key: value}`` with choices decoded."""
        values = {}
        for d in self.dims:
            dist = d.distribution()
            if isinstance(dist, CategoricalDistribution):
                value = trial.suggest_categorical(d.key, dist.choices)
            elif isinstance(dist, IntDistribution):
                value = trial.suggest_int(d.key, dist.low, dist.high, step=dist.step, log=dist.log)
            else:
                value = trial.suggest_float(d.key, dist.low, dist.high, step=dist.step, log=dist.log)
            values[d.key] = d.decode(value)
        return values

    def decode(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Decode the parameters Optuna stored for a trial (keys of this space only, in its order)."""
        return {d.key: d.decode(params[d.key]) for d in self.dims if d.key in params}

    def grid(self) -> dict[str, list[Any]] | None:
        """The grid of every dimension, or ``None`` when one of them is continuous."""
        grids = {d.key: d.grid() for d in self.dims}
        return None if any(g is None for g in grids.values()) else grids  # type: ignore[return-value]

    def continuous(self) -> list[str]:
        """Keys without a finite set of values."""
        return [d.key for d in self.dims if d.grid() is None]

    def grid_size(self) -> int | None:
        grid = self.grid()
        return None if grid is None else math.prod(len(v) for v in grid.values())

    def corner_points(self) -> list[dict[str, Any]]:
        """A few points that together use every bound and every choice of every dimension."""
        corners = [d.corners() for d in self.dims]
        n = max(len(c) for c in corners)
        return [{d.key: c[i % len(c)] for d, c in zip(self.dims, corners, strict=True)} for i in range(n)]

    def spec(self) -> dict[str, dict[str, list[Any]]]:
        """The space as written in YAML (stored with the study, compared when a worker joins)."""
        return {d.key: d.spec() for d in self.dims}


def format_value(value: Any) -> str:
    """A parameter value, short: four significant digits for floats, JSON for the rest."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else json.dumps(value)


def parse_dimension(key: str, spec: Any, source: str = "search space") -> Dimension:
    """Check and build one dimension from ``{distribution: args}``.

    Raises:
        UsageError: naming ``source``, the key and what is wrong.
    """
    where = f"{source}: {key}"
    key = key.removeprefix("--")
    if not key or key.startswith("-") or " " in key:
        raise UsageError(
            f"{where}: not a launcher setting (write it as on the command line without '--', e.g. model.lr)"
        )
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise UsageError(
            f"{where}: expected one distribution such as {{loguniform: [1e-4, 1e-1]}} or {{choice: [32, 64]}}, "
            f"got {spec!r}"
        )
    ((kind, args),) = spec.items()
    kind = str(kind)
    if kind not in DISTRIBUTIONS:
        close = difflib.get_close_matches(kind, DISTRIBUTIONS, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}? " if close else ""
        raise UsageError(f"{where}: unknown distribution '{kind}'; {hint}use one of {', '.join(DISTRIBUTIONS)}")
    if not isinstance(args, list | tuple):
        raise UsageError(f"{where}: {kind} takes a list {DISTRIBUTIONS[kind]}, got {args!r}")
    if kind == "choice":
        return Dimension(key, kind, _choices(where, list(args)))
    return Dimension(key, kind, _range(where, kind, list(args)))


def _choices(where: str, values: list[Any]) -> tuple[Any, ...]:
    if not values:
        raise UsageError(f"{where}: empty choice []; list at least one value, e.g. {{choice: [32, 64]}}")
    texts = [json.dumps(v, sort_keys=True) for v in values]
    repeated = sorted({t for t in texts if texts.count(t) > 1})
    if repeated:
        raise UsageError(f"{where}: choice lists {', '.join(repeated)} more than once")
    return tuple(values)


def _range(where: str, kind: str, args: list[Any]) -> tuple[Any, ...]:
    allowed = (2, 3) if kind in ("uniform", "int") else (2,)
    if len(args) not in allowed:
        raise UsageError(f"{where}: {kind} takes {DISTRIBUTIONS[kind]}, got {args!r}")
    numbers = []
    for a in args:
        # YAML 1.1 reads 1e-4 (no dot) as text: numbers written that way are taken as numbers.
        try:
            x = float(a) if not isinstance(a, bool) else math.nan
        except (TypeError, ValueError):
            x = math.nan
        if not math.isfinite(x):
            raise UsageError(f"{where}: {kind} bounds must be finite numbers, got {a!r}")
        numbers.append(x)
    if kind in ("int", "logint"):
        if any(x != int(x) for x in numbers):
            raise UsageError(f"{where}: {kind} takes whole numbers, got {args!r} (use uniform for fractions)")
        numbers = [int(x) for x in numbers]
    low, high, *step = numbers
    if low == high:
        raise UsageError(
            f"{where}: empty range [{low}, {high}]; the upper bound must be above the lower one (to fix the value, "
            f"pass --{where.rsplit(': ', 1)[1]} {low} instead of searching it)"
        )
    if low > high:
        raise UsageError(f"{where}: inverted range [{low}, {high}]; write it as [{high}, {low}]")
    if kind in ("loguniform", "logint") and low <= 0:
        raise UsageError(f"{where}: {kind} needs a positive lower bound, got {low}")
    if step:
        size = step[0]
        if size <= 0:
            raise UsageError(f"{where}: the step must be positive, got {size}")
        n = (high - low) / size
        if abs(n - round(n)) > 1e-9 * max(1.0, abs(n)):
            raise UsageError(f"{where}: the step {size} does not divide the range [{low}, {high}] into whole steps")
    return tuple(numbers)
