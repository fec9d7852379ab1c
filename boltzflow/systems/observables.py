"""Observables (functions of configurations) and states (boolean regions) declared by systems.

A system folder declares them in its ``system.toml``::

    [observables]
    phi = { dihedral = [4, 6, 8, 14] }   # radians, atoms 0-based
    x1  = { coordinate = 0 }

    [states]
    A = "phi < 0"
    B = "phi > 0 & psi < 2"

Every observable maps an ``(N, D)`` numpy array to ``(N,)`` values; every state maps it to an
``(N,)`` boolean mask. Both are plain callables, so the estimation layer never needs to know
where they came from.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

Observable = Callable[[np.ndarray], np.ndarray]


def _points(x: np.ndarray, n_dims: int) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(x.shape[0], -1, n_dims)


def _check_particles(indices: tuple[int, ...], n_dims: int, dim: int) -> None:
    """Raise ValueError unless ``indices`` are distinct particles of a ``dim``-coordinate configuration."""
    if dim % n_dims:
        raise ValueError(f"{dim} coordinates are not points of {n_dims} coordinates each")
    n_particles = dim // n_dims
    bad = [i for i in indices if not 0 <= i < n_particles]
    if bad:
        raise ValueError(f"particle index {bad[0]} is out of range: the system has {n_particles} particles "
                         f"(indices 0 to {n_particles - 1})")
    if len(set(indices)) != len(indices):
        raise ValueError(f"particle indices {list(indices)} repeat a particle")


@dataclass(frozen=True)
class Coordinate:
    """The ``index``-th degree of freedom."""

    index: int

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x)[:, self.index]

    def check(self, dim: int) -> None:
        """Raise ValueError unless the index is one of ``dim`` coordinates."""
        if not 0 <= self.index < dim:
            raise ValueError(f"coordinate index {self.index} is out of range: the system has {dim} coordinates "
                             f"(indices 0 to {dim - 1})")


@dataclass(frozen=True)
class Distance:
    """Distance between particles ``i`` and ``j`` (nm for molecules)."""

    i: int
    j: int
    n_dims: int = 3

    def __call__(self, x: np.ndarray) -> np.ndarray:
        p = _points(x, self.n_dims)
        return np.linalg.norm(p[:, self.i] - p[:, self.j], axis=-1)

    def check(self, dim: int) -> None:
        """Raise ValueError unless ``i`` and ``j`` are two particles of a ``dim``-coordinate configuration."""
        _check_particles((self.i, self.j), self.n_dims, dim)


@dataclass(frozen=True)
class Angle:
    """Bond angle i-j-k in radians, in [0, π]."""

    i: int
    j: int
    k: int

    def __call__(self, x: np.ndarray) -> np.ndarray:
        p = _points(x, 3)
        a, b = p[:, self.i] - p[:, self.j], p[:, self.k] - p[:, self.j]
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
        return np.arccos(np.clip(cos, -1.0, 1.0))

    def check(self, dim: int) -> None:
        """Raise ValueError unless ``i, j, k`` are three atoms of a ``dim``-coordinate configuration."""
        _check_particles((self.i, self.j, self.k), 3, dim)


@dataclass(frozen=True)
class Dihedral:
    """Dihedral (torsion) angle i-j-k-l in radians, in (−π, π], IUPAC sign convention."""

    i: int
    j: int
    k: int
    l: int  # noqa: E741 - the conventional name of the fourth atom

    def __call__(self, x: np.ndarray) -> np.ndarray:
        p = _points(x, 3)
        b0 = p[:, self.i] - p[:, self.j]
        b1 = p[:, self.k] - p[:, self.j]
        b2 = p[:, self.l] - p[:, self.k]
        b1 = b1 / np.linalg.norm(b1, axis=-1, keepdims=True)
        v = b0 - (b0 * b1).sum(-1, keepdims=True) * b1
        w = b2 - (b2 * b1).sum(-1, keepdims=True) * b1
        return np.arctan2((np.cross(b1, v) * w).sum(-1), (v * w).sum(-1))

    def check(self, dim: int) -> None:
        """Raise ValueError unless ``i, j, k, l`` are four atoms of a ``dim``-coordinate configuration."""
        _check_particles((self.i, self.j, self.k, self.l), 3, dim)


@dataclass(frozen=True)
class RadiusOfGyration:
    """Radius of gyration of all particles (equal masses)."""

    n_dims: int = 3

    def __call__(self, x: np.ndarray) -> np.ndarray:
        p = _points(x, self.n_dims)
        return np.sqrt(((p - p.mean(axis=1, keepdims=True)) ** 2).sum(-1).mean(-1))

    def check(self, dim: int) -> None:
        """Raise ValueError unless ``dim`` coordinates are points of ``n_dims`` coordinates."""
        _check_particles((), self.n_dims, dim)


@dataclass(frozen=True)
class PairDistances:
    """All ``n (n - 1) / 2`` interparticle distances, shape ``(N, n_pairs)`` (pairs ``i < j`` in order).

    A multi-valued observable, not declared in ``system.toml`` (declared observables give one value
    per configuration): for pooled marginals of identical particles, e.g.
    ``free_energy_profile(samples, PairDistances(2), edges)``.
    """

    n_dims: int = 3

    def __call__(self, x: np.ndarray) -> np.ndarray:
        p = _points(x, self.n_dims)
        i, j = np.triu_indices(p.shape[1], k=1)
        return np.linalg.norm(p[:, i] - p[:, j], axis=-1)


def _indices(value: object, count: int) -> list[int]:
    """``value`` as ``count`` integer indices (one bare integer when ``count`` is 1), else ValueError."""
    items = [value] if count == 1 and not isinstance(value, list) else value
    if not isinstance(items, list) or len(items) != count:
        raise ValueError(f"expected {'an integer' if count == 1 else f'a list of {count} integers'}")
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
        raise ValueError("indices must be integers")
    return items


_KINDS: dict[str, Callable[..., Observable]] = {
    "coordinate": lambda v, n_dims: Coordinate(*_indices(v, 1)),
    "distance": lambda v, n_dims: Distance(*_indices(v, 2), n_dims),
    "angle": lambda v, n_dims: Angle(*_indices(v, 3)),
    "dihedral": lambda v, n_dims: Dihedral(*_indices(v, 4)),
    "radius_of_gyration": lambda v, n_dims: RadiusOfGyration(n_dims),
}


def observable_from_spec(name: str, spec: dict, n_dims: int) -> Observable:
    """Build an observable from its ``system.toml`` entry, e.g. ``{dihedral = [4, 6, 8, 14]}``.

    Parameters
    ----------
    name : str
        Name used in error messages.
    spec : dict
        Exactly one key among ``coordinate``, ``distance``, ``angle``, ``dihedral``,
        ``radius_of_gyration``.
    n_dims : int
        Spatial dimension of particles (2 or 3) for distances.
    """
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ValueError(f"observable '{name}' must have exactly one kind, got {spec!r}")
    kind, value = next(iter(spec.items()))
    if kind not in _KINDS:
        raise ValueError(f"observable '{name}': unknown kind '{kind}' (known: {', '.join(_KINDS)})")
    try:
        return _KINDS[kind](value, n_dims)
    except (TypeError, ValueError, IndexError) as err:
        raise ValueError(f"observable '{name}': bad arguments {value!r} for '{kind}': {err}") from None


def check_observables(observables: dict[str, Observable], dim: int, where: str) -> None:
    """Check that every observable declared in ``system.toml`` fits configurations of ``dim`` coordinates.

    Observables made in code (plain functions) are not checked: only their code knows what they read.

    Parameters
    ----------
    observables : dict
        Name to observable.
    dim : int
        Coordinates per configuration.
    where : str
        Where the observables come from (e.g. the ``system.toml`` path), for the message.

    Raises
    ------
    ValueError
        Naming ``where`` and the observable, e.g. ``"my/system.toml: observable 'x3': coordinate
        index 5 is out of range: the system has 2 coordinates (indices 0 to 1)"``.

    Examples
    --------
    >>> check_observables({"x1": Coordinate(0)}, 2, "system.toml")
    >>> check_observables({"x3": Coordinate(5)}, 2, "system.toml")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: system.toml: observable 'x3': coordinate index 5 is out of range: the system has 2 coordinates...
    """
    for name, observable in observables.items():
        check = getattr(observable, "check", None)
        if check is None:
            continue
        try:
            check(dim)
        except ValueError as err:
            raise ValueError(f"{where}: observable '{name}': {err}") from None


_COMPARISONS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_CONDITION = re.compile(r"^\s*([A-Za-z_]\w*)\s*(<=|>=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class State:
    """A region of configuration space: a conjunction of ``observable <op> value`` conditions.

    Parameters
    ----------
    expression : str
        E.g. ``"phi < 0"`` or ``"phi > 0 & psi < 2"``.
    observables : dict
        Observables the expression may name.
    """

    expression: str
    observables: dict

    def __post_init__(self) -> None:
        for part in self.expression.split("&"):
            match = _CONDITION.match(part)
            if match is None:
                raise ValueError(
                    f"cannot parse state condition '{part.strip()}' in '{self.expression}' "
                    "(expected e.g. 'phi < 0'; join conditions with '&')"
                )
            if match.group(1) not in self.observables:
                known = ", ".join(sorted(self.observables)) or "none"
                raise ValueError(
                    f"state '{self.expression}' uses unknown observable '{match.group(1)}' (known: {known})"
                )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        mask = np.ones(np.asarray(x).shape[0], dtype=bool)
        for part in self.expression.split("&"):
            name, op, value = _CONDITION.match(part).groups()  # type: ignore[union-attr]
            mask &= _COMPARISONS[op](self.observables[name](x), float(value))
        return mask
