"""Multi-particle double-well pair potential (the DW4 benchmark), numba kernel."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .particles import FASTMATH, ParticleEnergy, call_kernel, check_finite


@njit(parallel=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _multi_double_well_kernel(
    x: np.ndarray,
    n_particles: int,
    n_dims: int,
    a: float,
    b: float,
    d0: float,
    inv_kT: float,
    need_gradient: bool,
    energy: np.ndarray,
    gradient: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Fill ``energy`` (B,) and, if requested, ``gradient`` (B, D) in one pass over the pairs.

    At coinciding particles (``d = 0``) the energy is finite but the pair gradient has no
    direction; its contribution is taken as zero (the subgradient torch uses for the norm).
    """
    for row in prange(x.shape[0]):
        if need_gradient:
            for m in range(n_particles * n_dims):
                gradient[row, m] = 0.0
        u = 0.0
        for i in range(n_particles - 1):
            for j in range(i + 1, n_particles):
                r2 = 0.0
                for k in range(n_dims):
                    dx = x[row, j * n_dims + k] - x[row, i * n_dims + k]
                    r2 += dx * dx
                r = np.sqrt(r2)
                t = r - d0
                t2 = t * t
                u += a * t2 * t2 + b * t2
                if need_gradient and r > 0.0:
                    coef = (4.0 * a * t2 * t + 2.0 * b * t) / r * inv_kT
                    for k in range(n_dims):
                        f = coef * (x[row, j * n_dims + k] - x[row, i * n_dims + k])
                        gradient[row, j * n_dims + k] += f
                        gradient[row, i * n_dims + k] -= f
        energy[row] = u * inv_kT


class MultiDoubleWellEnergy(ParticleEnergy):
    """Double-well pair potential of ``n_particles`` particles, the DW4 benchmark (numba, float64).

    .. math::

        U(x) = \\sum_{i<j} a\\,(d_{ij} - d_0)^4 + b\\,(d_{ij} - d_0)^2, \\qquad
        d_{ij} = \\lVert x_i - x_j \\rVert, \\qquad u = U / kT

    Each pair is counted once. The defaults are the DW4 benchmark (Köhler, Klein & Noé 2020,
    equivariant flows) with the parameters and pair convention of bgflow / DEM: 4 particles in
    2D, ``a = 0.9``, ``b = -4``, ``d0 = 4`` (bgflow's constant ``c = 0``). The energy is invariant
    under translations, rotations, reflections and particle permutations.

    Parameters
    ----------
    n_particles : int
        Number of particles (at least 2).
    n_dims : int
        Spatial dimension of each particle.
    a : float
        Quartic coefficient.
    b : float
        Quadratic coefficient (negative for two distance wells around ``d0``).
    d0 : float
        Centre of the double well in the pair distance.
    kT : float
        Thermal energy in the units of ``U``.
    """

    def __init__(
        self,
        n_particles: int = 4,
        n_dims: int = 2,
        a: float = 0.9,
        b: float = -4.0,
        d0: float = 4.0,
        kT: float = 1.0,
    ) -> None:
        super().__init__(n_particles, n_dims, kT, min_particles=2)
        self.a = check_finite("a", a)
        self.b = check_finite("b", b)
        self.d0 = check_finite("d0", d0)

    def _evaluate(self, x: np.ndarray, need_gradient: bool) -> tuple[np.ndarray, np.ndarray | None]:
        return call_kernel(
            _multi_double_well_kernel, x, need_gradient,
            self.n_particles, self.n_dims, self.a, self.b, self.d0, 1.0 / self.kT,
        )

    def __repr__(self) -> str:
        return (
            f"MultiDoubleWellEnergy(n_particles={self.n_particles}, n_dims={self.n_dims}, "
            f"a={self.a:g}, b={self.b:g}, d0={self.d0:g}, kT={self.kT:g})"
        )
