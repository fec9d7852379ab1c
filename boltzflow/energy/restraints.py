"""Restraints added to particle energies, e.g. to keep a Lennard-Jones cluster together."""

from __future__ import annotations

import numpy as np

from .particles import ParticleEnergy, check_finite


class CenterOfMassRestraint(ParticleEnergy):
    """Harmonic restraint of every particle to the centre of the configuration.

    .. math::

        U(x) = \\tfrac12 k \\sum_i \\lVert x_i - \\bar x \\rVert^2, \\qquad
        \\bar x = \\frac{1}{n} \\sum_i x_i, \\qquad u = U / kT

    This is the weak harmonic restraint usually added to Lennard-Jones clusters so that
    particles cannot evaporate (e.g. ``LennardJonesEnergy(13) + CenterOfMassRestraint(13, 3)``).
    It is translation invariant; its gradient is ``k (x_i - x̄) / kT`` (the dependence of ``x̄``
    on ``x_i`` cancels because the deviations sum to zero). All particles have equal weight.

    Parameters
    ----------
    n_particles : int
        Number of particles.
    n_dims : int
        Spatial dimension of each particle.
    k : float
        Force constant (energy per squared length, non-negative).
    kT : float
        Thermal energy in the units of ``U``.
    """

    def __init__(self, n_particles: int, n_dims: int, k: float = 1.0, kT: float = 1.0) -> None:
        super().__init__(n_particles, n_dims, kT)
        self.k = check_finite("k", k, non_negative=True)

    def _evaluate(self, x: np.ndarray, need_gradient: bool) -> tuple[np.ndarray, np.ndarray | None]:
        pos = x.reshape(-1, self.n_particles, self.n_dims)
        centred = pos - pos.mean(axis=1, keepdims=True)
        scale = self.k / self.kT
        energy = 0.5 * scale * np.einsum("bij,bij->b", centred, centred)
        gradient = scale * centred.reshape(x.shape) if need_gradient else None
        return energy, gradient

    def __repr__(self) -> str:
        return (
            f"CenterOfMassRestraint(n_particles={self.n_particles}, n_dims={self.n_dims}, "
            f"k={self.k:g}, kT={self.kT:g})"
        )
