"""What every system builder shares: option and parameter checks, and the final assembly of a System.

Its own module so that :mod:`.builders` (the table of builders) and the builders that live in
their own modules (:mod:`.ice`) both import it, without importing each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..energy.base import Energy
from .declared import declared_observables, declared_states
from .system import System


def check_options(kind: str, options: dict[str, Any], allowed: set[str]) -> None:
    """Refuse build options a system type does not take.

    Parameters
    ----------
    kind : str
        The system ``type`` (for the message).
    options : dict
        The options passed to the builder.
    allowed : set of str
        The option names this type takes.

    Raises
    ------
    TypeError
        Naming the unknown options and the allowed ones.
    """
    unknown = set(options) - allowed
    if unknown:
        known = ", ".join(sorted(allowed)) or "none"
        raise TypeError(f"unknown option(s) {', '.join(sorted(unknown))} for a '{kind}' system (allowed: {known})")


def merge_parameters(definition: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The definition's ``[parameters]`` over the type's defaults.

    Parameters
    ----------
    definition : dict
        The parsed ``system.toml``.
    defaults : dict
        Every parameter the type takes, with its default.

    Returns
    -------
    dict
        ``defaults`` updated by the declared parameters.

    Raises
    ------
    ValueError
        When the definition declares a parameter the type does not take.
    """
    params = dict(definition.get("parameters", {}))
    unknown = set(params) - set(defaults)
    if unknown:
        raise ValueError(f"system '{definition['name']}': unknown parameter(s) {', '.join(sorted(unknown))}")
    return {**defaults, **params}


def finish_system(
    folder: Path,
    definition: dict[str, Any],
    energy: Energy,
    x0: np.ndarray,
    **extra: Any,
) -> System:
    """Attach the common fields (declared observables and states, metadata) and check the definition.

    Parameters
    ----------
    folder : Path
        The system's folder (recorded as its source).
    definition : dict
        The parsed ``system.toml``; its ``x0`` replaces the builder's when present.
    energy : Energy
        The built energy.
    x0 : np.ndarray
        The builder's starting configuration.
    **extra
        Further :class:`System` fields (``topology``, ``rigid_bodies``, ``particles``, ...).

    Returns
    -------
    System

    Raises
    ------
    ValueError
        When the declared ``dim`` does not match the energy, or the start has a non-finite energy.
    """
    if "dim" in definition and int(definition["dim"]) != energy.dim:
        raise ValueError(
            f"system '{definition['name']}': definition says dim={definition['dim']}, energy has {energy.dim}"
        )
    observables = declared_observables(definition)
    states = declared_states(definition, observables)
    if "x0" in definition:
        x0 = np.asarray(definition["x0"], dtype=np.float64)
    system = System(
        name=definition["name"],
        energy=energy,
        temperature=float(definition["temperature"]),
        x0=x0,
        backend=definition.get("backend", "numba"),
        units=definition.get("units", "reduced"),
        observables=observables,
        states=states,
        description=definition.get("description", ""),
        source=folder,
        **extra,
    )
    u0 = energy.evaluate(system.x0.numpy()[None], need_gradient=False).energy[0]
    if not np.isfinite(u0):
        raise ValueError(f"system '{definition['name']}': the starting configuration has a non-finite energy")
    return system


__all__ = ["check_options", "finish_system", "merge_parameters"]
