"""Shared base of energies of ``n_particles`` points in ``n_dims`` dimensions at thermal energy kT."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .base import Energy

# Fast-math flags for the numba kernels that keep IEEE inf/nan semantics (no ``nnan``/``ninf``);
# kernels also use ``error_model="numpy"`` so that division by zero gives inf/nan, as the base
# class expects, instead of raising.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}


def call_kernel(
    kernel: Callable[..., None], x: np.ndarray, need_gradient: bool, *params: Any
) -> tuple[np.ndarray, np.ndarray | None]:
    """Run a numba kernel with the shared signature ``kernel(x, *params, need_gradient, energy, gradient)``.

    The kernel fills the preallocated ``energy`` (B,) and, when asked, ``gradient`` (B, D) in one
    pass; this returns them as ``_evaluate`` does (``None`` for the gradient when not requested).
    """
    energy = np.empty(x.shape[0])
    gradient = np.empty_like(x) if need_gradient else np.empty((0, x.shape[1]))
    kernel(x, *params, need_gradient, energy, gradient)
    return energy, (gradient if need_gradient else None)


def check_finite(name: str, value: float, positive: bool = False, non_negative: bool = False) -> float:
    """``float(value)``, or a ValueError naming the parameter if it is not finite (or out of range)."""
    value = float(value)
    if not np.isfinite(value) or (positive and value <= 0) or (non_negative and value < 0):
        need = "positive and finite" if positive else "non-negative and finite" if non_negative else "finite"
        raise ValueError(f"{name} must be {need}, got {value}")
    return value


class ParticleEnergy(Energy):
    """An energy of ``n_particles`` points in ``n_dims`` dimensions, event shape ``(n_particles, n_dims)``.

    Parameters
    ----------
    n_particles : int
        Number of particles (at least ``min_particles``).
    n_dims : int
        Spatial dimension of each particle.
    kT : float
        Thermal energy in the units of the potential; ``u = U / kT``.
    min_particles : int
        Smallest meaningful number of particles (2 for pair potentials).
    """

    def __init__(self, n_particles: int, n_dims: int, kT: float, min_particles: int = 1) -> None:
        if n_particles < min_particles:
            raise ValueError(f"{type(self).__name__} needs at least {min_particles} particles, got {n_particles}")
        if n_dims < 1:
            raise ValueError(f"n_dims must be positive, got {n_dims}")
        self.kT = check_finite("kT", kT, positive=True)
        super().__init__(n_particles * n_dims, (n_particles, n_dims))
        self.n_particles = int(n_particles)
        self.n_dims = int(n_dims)
