"""`System`: an energy function at a temperature, with its dimension, topology and a start point."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from ..energy.base import Energy, ScaledEnergy
from ..energy.function import FunctionEnergy
from .observables import Observable, State


@dataclass
class System:
    """A Boltzmann distribution ``p(x) ∝ exp(-u(x))`` to sample.

    Attributes
    ----------
    name : str
        Registry name (or the user's name for custom systems).
    energy : Energy
        Reduced energy ``u = U / kT`` at ``temperature``.
    temperature : float
        Kelvin for molecular (OpenMM) systems; the reduced temperature ``kT`` for toy systems.
    x0 : torch.Tensor
        ``(dim,)`` float64 starting configuration with finite energy.
    topology : mdtraj.Topology or None
        Molecular topology (``None`` for toy systems).
    openmm_system : openmm.System or None
        The OpenMM system for OpenMM-backed systems.
    backend : str
        ``"numba"``, ``"openmm"`` or ``"torch"`` (user functions).
    units : str
        ``"nm, kJ/mol, K"`` at the OpenMM boundary, or ``"reduced"``.
    observables : dict[str, callable]
        Named functions ``(N, D) ndarray -> (N,)`` declared by the system (e.g. ``phi``).
    states : dict[str, State]
        Named regions (e.g. ``A = "phi < 0"``) for free-energy differences.
    description : str
        One line for ``boltzflow systems``.
    source : Path or None
        The system folder it was loaded from.
    particles : tuple of int or None
        ``(n_particles, n_dims)`` for systems of point particles whose energy depends only on
        relative positions (DW4, LJ clusters): translating every particle leaves it unchanged, so
        the centre of mass is a free direction that a density model must leave out.
    rigid_bodies : RigidBodySpec or None
        For systems of rigid molecules (:class:`boltzflow.geometry.RigidBodySpec`): the
        molecules' geometry, centres and box. Their configurations are the sites' Cartesian
        coordinates, and flows for them live on positions and orientations (``build_flow``).
    """

    name: str
    energy: Energy
    temperature: float
    x0: torch.Tensor
    topology: Any = None
    openmm_system: Any = None
    backend: str = "torch"
    units: str = "reduced"
    observables: dict[str, Observable] = field(default_factory=dict)
    states: dict[str, State] = field(default_factory=dict)
    description: str = ""
    source: Path | None = None
    particles: tuple[int, int] | None = None
    rigid_bodies: Any = None

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        x0 = torch.as_tensor(self.x0, dtype=torch.float64).reshape(-1)
        if x0.shape[0] != self.energy.dim:
            raise ValueError(f"x0 has {x0.shape[0]} coordinates, the energy expects {self.energy.dim}")
        self.x0 = x0

    @property
    def dim(self) -> int:
        """Number of degrees of freedom."""
        return self.energy.dim

    @property
    def event_shape(self) -> tuple[int, ...]:
        """Natural shape of one configuration, e.g. ``(n_atoms, 3)``."""
        return self.energy.event_shape

    @property
    def is_molecular(self) -> bool:
        """True when the system has a molecular topology (coordinates in nm)."""
        return self.topology is not None

    def at_temperature(self, temperature: float) -> "System":
        """The same system at another temperature (reduced energy scaled by ``T_old / T_new``)."""
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        return replace(
            self,
            energy=ScaledEnergy(self.energy, self.temperature / temperature),
            temperature=float(temperature),
        )

    @classmethod
    def from_energy(
        cls,
        fn: Callable,
        dim: int,
        kT: float = 1.0,
        name: str = "user",
        x0: Any = None,
        gradient: Callable | None = None,
        event_shape: tuple[int, ...] | None = None,
        observables: dict[str, Observable] | None = None,
        states: dict[str, str] | None = None,
    ) -> "System":
        """A system from a plain Python energy function.

        Parameters
        ----------
        fn : callable
            ``U(x)``: torch ``(B, dim) -> (B,)`` (gradient by autograd), or numpy with ``gradient``.
        dim : int
            Number of degrees of freedom.
        kT : float
            Thermal energy in the units of ``fn``; ``u = fn(x) / kT``. Also the system's
            (reduced) temperature.
        name : str
            Name stored in sample metadata.
        x0 : array-like, optional
            Starting configuration; zeros by default.
        gradient : callable, optional
            ``dU/dx`` for a numpy ``fn``.
        event_shape : tuple of int, optional
            Natural shape of one configuration.
        observables : dict, optional
            Named observables ``(N, dim) -> (N,)``.
        states : dict[str, str], optional
            Named states as expressions over ``observables`` (e.g. ``{"A": "x1 < 0"}``).

        Examples
        --------
        >>> import boltzflow as bf
        >>> s = bf.System.from_energy(lambda x: (x ** 2).sum(-1) / 2, dim=3)
        >>> float(s.energy(s.x0[None])[0])
        0.0
        """
        energy = FunctionEnergy(fn, dim=dim, kT=kT, gradient=gradient, event_shape=event_shape)
        observables = dict(observables or {})
        return cls(
            name=name,
            energy=energy,
            temperature=float(kT),
            x0=torch.zeros(dim, dtype=torch.float64) if x0 is None else x0,
            backend="torch" if gradient is None else "numpy",
            observables=observables,
            states={k: State(v, observables) for k, v in (states or {}).items()},
            description="user-defined energy",
        )

    def __repr__(self) -> str:
        return (
            f"System({self.name!r}, dim={self.dim}, temperature={self.temperature:g}"
            f"{' K' if self.units.endswith('K') else ''}, backend={self.backend!r})"
        )

