"""Lennard-Jones clusters: a numba kernel for energy and forces of a batch in one pass."""

from __future__ import annotations

import numpy as np
from numba import get_num_threads, njit, prange

from .particles import FASTMATH, ParticleEnergy, call_kernel, check_finite


@njit(parallel=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _lennard_jones_kernel(
    x: np.ndarray,
    n_chunks: int,
    n_particles: int,
    n_dims: int,
    rm2: float,
    energy_scale: float,
    need_gradient: bool,
    energy: np.ndarray,
    gradient: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Fill ``energy`` (B,) and, if requested, ``gradient`` (B, D) for the pair sum counted once.

    The batch is split into ``n_chunks`` contiguous chunks (a few per thread); each chunk owns
    its scratch arrays, so nothing is allocated per configuration. Within a configuration the
    coordinates are transposed to ``(n_dims, n_particles)`` so that the loops over partners
    ``j > i`` run over contiguous memory and vectorise (SIMD over ``j``). Those loops use an
    unsigned index: with a signed one numba emits negative-index wraparound code that stops LLVM
    from vectorising them (about 2x slower). Only ``r**2`` is needed: ``s = rm**2 / r**2`` gives
    ``(rm/r)**6 = s**3`` with one division per pair.
    """
    n_batch = x.shape[0]
    gradient_scale = -12.0 * energy_scale
    for chunk in prange(n_chunks):
        start = chunk * n_batch // n_chunks
        stop = (chunk + 1) * n_batch // n_chunks
        pos = np.empty((n_dims, n_particles))
        grad = np.empty((n_dims, n_particles))
        r2 = np.empty(n_particles)
        w = np.empty(n_particles)
        for b in range(start, stop):
            for i in range(n_particles):
                for k in range(n_dims):
                    pos[k, i] = x[b, i * n_dims + k]
                    grad[k, i] = 0.0
            u = 0.0
            hi = np.uint64(n_particles)
            for i in range(n_particles - 1):
                lo = np.uint64(i + 1)
                for j in range(lo, hi):
                    r2[j] = 0.0
                for k in range(n_dims):
                    xi = pos[k, i]
                    for j in range(lo, hi):
                        dx = pos[k, j] - xi
                        r2[j] += dx * dx
                for j in range(lo, hi):
                    inv_r2 = 1.0 / r2[j]
                    s = rm2 * inv_r2
                    s3 = s * s * s
                    s6 = s3 * s3
                    u += s6 - 2.0 * s3
                    # dU/dx_j = -12 eps (s6 - s3) / r^2 * (x_j - x_i); the constant is applied below.
                    w[j] = (s6 - s3) * inv_r2
                if need_gradient:
                    for k in range(n_dims):
                        xi = pos[k, i]
                        gi = 0.0
                        for j in range(lo, hi):
                            f = w[j] * (pos[k, j] - xi)
                            grad[k, j] += f
                            gi += f
                        grad[k, i] -= gi
            energy[b] = energy_scale * u
            if need_gradient:
                for i in range(n_particles):
                    for k in range(n_dims):
                        gradient[b, i * n_dims + k] = gradient_scale * grad[k, i]


class LennardJonesEnergy(ParticleEnergy):
    """Lennard-Jones cluster of identical particles (numba kernel, float64).

    .. math::

        U(x) = \\varepsilon \\sum_{i<j} \\left[ \\left(\\frac{r_m}{r_{ij}}\\right)^{12}
               - 2 \\left(\\frac{r_m}{r_{ij}}\\right)^{6} \\right],
        \\qquad u = U / kT

    **Convention: every pair is counted ONCE** (``i < j``), so a pair at the minimum distance
    ``r_m`` contributes exactly ``-epsilon``. Published codes differ here: some sum over all
    ordered pairs ``i != j`` and report energies twice as large (or halve them afterwards).
    With this convention the known global minima are LJ13 = -44.326801 and LJ55 = -279.248470
    (in units of ``epsilon``). ``r_m = 2**(1/6) * sigma`` is the position of the pair minimum.

    There is no cutoff, no periodic box and no restraint; add a
    :class:`~boltzflow.energy.restraints.CenterOfMassRestraint` for the usual cluster target.
    Overlapping particles (``r = 0``) give a non-finite energy, reported as ``+inf`` by
    :meth:`~boltzflow.energy.base.Energy.evaluate`.

    Parameters
    ----------
    n_particles : int
        Number of particles (at least 2).
    n_dims : int
        Spatial dimension of each particle.
    epsilon : float
        Well depth (energy unit of ``U``).
    rm : float
        Distance of the pair minimum.
    kT : float
        Thermal energy in the units of ``epsilon``.

    Examples
    --------
    >>> lj = LennardJonesEnergy(2, n_dims=3)
    >>> float(lj.evaluate([0.0, 0.0, 0.0, 1.0, 0.0, 0.0]).energy[0])
    -1.0
    """

    def __init__(
        self,
        n_particles: int,
        n_dims: int = 3,
        epsilon: float = 1.0,
        rm: float = 1.0,
        kT: float = 1.0,
    ) -> None:
        super().__init__(n_particles, n_dims, kT, min_particles=2)
        self.epsilon = check_finite("epsilon", epsilon, positive=True)
        self.rm = check_finite("rm", rm, positive=True)

    def _evaluate(self, x: np.ndarray, need_gradient: bool) -> tuple[np.ndarray, np.ndarray | None]:
        chunks = min(x.shape[0], 4 * get_num_threads())
        return call_kernel(
            _lennard_jones_kernel, x, need_gradient,
            chunks, self.n_particles, self.n_dims, self.rm**2, self.epsilon / self.kT,
        )

    def __repr__(self) -> str:
        return (
            f"LennardJonesEnergy(n_particles={self.n_particles}, n_dims={self.n_dims}, "
            f"epsilon={self.epsilon:g}, rm={self.rm:g}, kT={self.kT:g})"
        )
