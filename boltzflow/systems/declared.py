"""What a ``system.toml`` declares, read without building the system's energy (so without torch or OpenMM).

:data:`SYSTEM_TYPES` lists every system ``type`` with the spatial dimension of its points (what
distance-like observables see) and whether its declared observables are all it has. The builders
(:mod:`boltzflow.systems.builders`) and :func:`boltzflow.systems.registry.declared_system` (used by
``boltzflow estimate``) both take the observables and states from here, so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .observables import Observable, State, observable_from_spec


@dataclass(frozen=True)
class SystemType:
    """What is known about a system ``type`` before building one.

    Attributes
    ----------
    n_dims : int or None
        Spatial dimension of the configuration's points (1 for a plain vector); for particle
        types, the default of their ``n_dims`` parameter. ``None`` where code decides it.
    n_dims_parameter : bool
        Whether the ``[parameters]`` entry ``n_dims`` overrides ``n_dims``.
    observables_declared : bool
        Whether ``system.toml`` declares all of the system's observables; ``False`` where the
        builder adds some in code (``python`` systems, the tetrahedron's ``up0`` … ``up3``, the
        ice crystals' ``energy_per_molecule``).
    """

    n_dims: int | None
    n_dims_parameter: bool = False
    observables_declared: bool = True


SYSTEM_TYPES: dict[str, SystemType] = {
    "double_well": SystemType(n_dims=2),
    "gaussian_mixture": SystemType(n_dims=1),
    "multi_double_well": SystemType(n_dims=2, n_dims_parameter=True),
    "lennard_jones": SystemType(n_dims=3, n_dims_parameter=True),
    "openmm": SystemType(n_dims=3),
    "tetrahedron_field": SystemType(n_dims=3, observables_declared=False),
    "ice": SystemType(n_dims=3, observables_declared=False),
    "python": SystemType(n_dims=None, observables_declared=False),
}


@dataclass(frozen=True)
class DeclaredSystem:
    """A system as its ``system.toml`` declares it: enough to estimate from its samples, no energy.

    Attributes
    ----------
    name : str
        The system's name.
    temperature : float
        Kelvin for molecular systems, the reduced ``kT`` for toy systems.
    observables : dict[str, callable]
        The declared observables, as :class:`boltzflow.System` has them.
    states : dict[str, State]
        The declared states over them.
    source : Path
        The system folder.
    """

    name: str
    temperature: float
    observables: dict[str, Observable]
    states: dict[str, State]
    source: Path


def spatial_dims(definition: dict[str, Any]) -> int:
    """Spatial dimension of a system's points, from its definition (e.g. 3 for molecules, 1 for a plain vector).

    Raises
    ------
    ValueError
        For a type whose dimension only its code knows (``python``).
    """
    kind = SYSTEM_TYPES[definition["type"]]
    if kind.n_dims is None:
        raise ValueError(f"system '{definition['name']}': a '{definition['type']}' system has no declared n_dims")
    if kind.n_dims_parameter:
        return int(definition.get("parameters", {}).get("n_dims", kind.n_dims))
    return kind.n_dims


def declared_observables(definition: dict[str, Any]) -> dict[str, Observable]:
    """The observables of the definition's ``[observables]`` table."""
    n_dims = spatial_dims(definition)
    return {name: observable_from_spec(name, spec, n_dims) for name, spec in definition.get("observables", {}).items()}


def declared_states(definition: dict[str, Any], observables: dict[str, Observable]) -> dict[str, State]:
    """The states of the definition's ``[states]`` table, over ``observables``."""
    return {name: State(expression, observables) for name, expression in definition.get("states", {}).items()}


def declare(folder: Path, definition: dict[str, Any]) -> DeclaredSystem | None:
    """The system that ``definition`` (read from ``folder``) declares; ``None`` where only building it tells."""
    if not SYSTEM_TYPES[definition["type"]].observables_declared:
        return None
    observables = declared_observables(definition)
    return DeclaredSystem(
        name=definition["name"],
        temperature=float(definition["temperature"]),
        observables=observables,
        states=declared_states(definition, observables),
        source=folder,
    )
