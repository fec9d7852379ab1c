"""Two-dimensional double well (the toy system of Boltzmann generators / SNF), numba kernel."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .base import Energy
from .particles import FASTMATH, call_kernel, check_finite


@njit(parallel=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _double_well_kernel(
    x: np.ndarray,
    a: float,
    b: float,
    c: float,
    inv_kT: float,
    need_gradient: bool,
    energy: np.ndarray,
    gradient: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Fill ``energy`` (B,) and, if requested, ``gradient`` (B, 2) in one pass."""
    for row in prange(x.shape[0]):
        x1 = x[row, 0]
        x2 = x[row, 1]
        x1sq = x1 * x1
        energy[row] = (a * x1 + b * x1sq + c * x1sq * x1sq + 0.5 * x2 * x2) * inv_kT
        if need_gradient:
            gradient[row, 0] = (a + 2.0 * b * x1 + 4.0 * c * x1sq * x1) * inv_kT
            gradient[row, 1] = x2 * inv_kT


class DoubleWellEnergy(Energy):
    """Double well in ``x1`` times a harmonic ``x2`` (numba kernel, float64).

    .. math::

        U(x) = a\\,x_1 + b\\,x_1^2 + c\\,x_1^4 + \\tfrac12 x_2^2, \\qquad u = U / kT

    The defaults give the double well of Stochastic Normalizing Flows (Wu, Köhler & Noé 2020),
    ``u = -0.5 x1 - 6 x1**2 + x1**4 + 0.5 x2**2`` at ``kT = 1``: two wells near ``x1 = ±1.7``,
    the left one deeper because of the tilt ``a``.

    Parameters
    ----------
    a : float
        Linear tilt in ``x1``.
    b : float
        Quadratic coefficient in ``x1`` (negative for a barrier at ``x1 = 0``).
    c : float
        Quartic coefficient in ``x1`` (positive for a bounded-below potential).
    kT : float
        Thermal energy in the units of ``U``.
    """

    def __init__(self, a: float = -0.5, b: float = -6.0, c: float = 1.0, kT: float = 1.0) -> None:
        super().__init__(2)
        self.a, self.b, self.c = (check_finite(name, v) for name, v in (("a", a), ("b", b), ("c", c)))
        self.kT = check_finite("kT", kT, positive=True)

    def _evaluate(self, x: np.ndarray, need_gradient: bool) -> tuple[np.ndarray, np.ndarray | None]:
        return call_kernel(_double_well_kernel, x, need_gradient, self.a, self.b, self.c, 1.0 / self.kT)

    def __repr__(self) -> str:
        return f"DoubleWellEnergy(a={self.a:g}, b={self.b:g}, c={self.c:g}, kT={self.kT:g})"
