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

from .observables import Observable, State, check_observables, observable_from_spec


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
    dim : int or None
        Coordinates per configuration, as the definition's ``dim`` says (``None`` without one).
    """

    name: str
    temperature: float
    observables: dict[str, Observable]
    states: dict[str, State]
    source: Path
    dim: int | None = None


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


def declared_dim(definition: dict[str, Any], where: str | None = None) -> int | None:
    """The definition's ``dim`` (coordinates per configuration), ``None`` if it has none.

    Raises
    ------
    ValueError
        If ``dim`` is not a positive integer (the message starts with ``where``).

    Examples
    --------
    >>> declared_dim({"name": "w", "dim": 2}), declared_dim({"name": "w"})
    (2, None)
    """
    if "dim" not in definition:
        return None
    dim = definition["dim"]
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"{where or _default_where(definition)}: 'dim' must be a positive integer, got {dim!r}")
    return dim


def _default_where(definition: dict[str, Any]) -> str:
    return f"system '{definition['name']}'"


def declared_observables(definition: dict[str, Any], where: str | None = None) -> dict[str, Observable]:
    """The observables of the definition's ``[observables]`` table, checked against its ``dim`` if it has one.

    Parameters
    ----------
    definition : dict
        A parsed ``system.toml``.
    where : str, optional
        Where the definition comes from (its path), for error messages; the system's name by default.

    Raises
    ------
    ValueError
        Naming ``where`` and the observable: an unknown kind, bad arguments, or indices outside the
        ``dim`` coordinates (see :func:`~boltzflow.systems.observables.check_observables`).

    Examples
    --------
    >>> definition = {"name": "w", "type": "double_well", "dim": 2, "observables": {"x3": {"coordinate": 2}}}
    >>> declared_observables(definition, "w/system.toml")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: w/system.toml: observable 'x3': coordinate index 2 is out of range: the system has 2 coordinates...
    """
    where = where or _default_where(definition)
    table = definition.get("observables", {})
    if not isinstance(table, dict):
        raise ValueError(f"{where}: [observables] must be a table of name = {{kind = ...}}")
    n_dims = spatial_dims(definition)
    try:
        observables = {name: observable_from_spec(name, spec, n_dims) for name, spec in table.items()}
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    dim = declared_dim(definition, where)
    if dim is not None:
        check_observables(observables, dim, where)
    return observables


def declared_states(
    definition: dict[str, Any], observables: dict[str, Observable], where: str | None = None
) -> dict[str, State]:
    """The states of the definition's ``[states]`` table, over ``observables``.

    Raises
    ------
    ValueError
        Naming ``where`` (the system's name by default) and the state, if an expression does not
        parse or names an unknown observable.

    Examples
    --------
    >>> declared_states({"name": "w", "states": {"A": "x1 <"}}, {"x1": lambda x: x[:, 0]})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: system 'w': state 'A': cannot parse state condition 'x1 <' in 'x1 <' (expected e.g. 'phi < 0'...
    """
    where = where or _default_where(definition)
    table = definition.get("states", {})
    if not isinstance(table, dict):
        raise ValueError(f"{where}: [states] must be a table of name = \"expression\"")
    states = {}
    for name, expression in table.items():
        if not isinstance(expression, str):
            raise ValueError(f"{where}: state '{name}' must be a string such as \"x1 < 0\", got {expression!r}")
        try:
            states[name] = State(expression, observables)
        except ValueError as err:
            raise ValueError(f"{where}: state '{name}': {err}") from None
    return states


def declare(folder: Path, definition: dict[str, Any]) -> DeclaredSystem | None:
    """The system that ``definition`` (read from ``folder``) declares; ``None`` where only building it tells.

    Observables and states are checked as they are read (indices within ``dim``, expressions that
    parse), with errors naming ``folder/system.toml``.
    """
    if not SYSTEM_TYPES[definition["type"]].observables_declared:
        return None
    where = str(folder / "system.toml")
    observables = declared_observables(definition, where)
    return DeclaredSystem(
        name=definition["name"],
        temperature=float(definition["temperature"]),
        observables=observables,
        states=declared_states(definition, observables, where),
        source=folder,
        dim=declared_dim(definition, where),
    )
