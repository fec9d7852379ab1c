"""Checks that samples fit the system they are estimated for, before any number is computed."""

from __future__ import annotations

from typing import Any, Callable, Protocol

import numpy as np

from ..samples import SampleSet, SampleSetError


class SystemLike(Protocol):
    """What :func:`check_samples` reads of a system: a :class:`~boltzflow.System` or a ``DeclaredSystem``."""

    @property
    def name(self) -> str:
        """The system's name."""

    @property
    def dim(self) -> int | None:
        """Coordinates per configuration (``None`` where the definition does not say)."""

    @property
    def observables(self) -> dict[str, Callable[[np.ndarray], Any]]:
        """Named observables; those with a ``check(dim)`` method (the declared kinds) are checked."""


def check_samples(samples: SampleSet, system: SystemLike) -> None:
    """Refuse samples that cannot be of ``system``: wrong number of coordinates, another system's name,
    or an observable of the system that reads coordinates the samples do not have.

    Parameters
    ----------
    samples : SampleSet
        The samples.
    system : System or DeclaredSystem
        The system whose observables and states will be evaluated on them (its ``dim`` is not
        checked when it is ``None``: a definition without ``dim`` of a system not built; its
        declared observables are then checked against the samples' coordinates).

    Raises
    ------
    SampleSetError
        Naming the mismatch, e.g. "samples have 66 coordinates per frame but system
        'double_well_2d' has 2".

    Examples
    --------
    >>> import numpy as np
    >>> from types import SimpleNamespace
    >>> samples = SampleSet(np.zeros((5, 66)), np.zeros(5), metadata={"system": "double_well_2d"})
    >>> check_samples(samples, SimpleNamespace(name="double_well_2d", dim=2, observables={}))
    Traceback (most recent call last):
    ...
    boltzflow.samples.SampleSetError: samples have 66 coordinates per frame but system 'double_well_2d' has 2
    """
    if system.dim is not None and samples.dim != system.dim:
        raise SampleSetError(
            f"samples have {samples.dim} coordinates per frame but system '{system.name}' has {system.dim}"
        )
    named = samples.metadata.get("system")
    if named is not None and named != system.name:
        raise SampleSetError(f"samples are of system '{named}' (their metadata), not of system '{system.name}'")
    for name, observable in system.observables.items():
        check = getattr(observable, "check", None)
        if check is None:
            continue
        try:
            check(samples.dim)
        except ValueError as err:
            problem = f"system '{system.name}': observable '{name}' does not fit the samples: {err}"
            raise SampleSetError(problem) from None


__all__ = ["SystemLike", "check_samples"]
