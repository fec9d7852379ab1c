"""A correlated, anisotropic 10D Gaussian ``u = ½ (x − μ)ᵀ Σ⁻¹ (x − μ)`` (kT = 1).

``Σ_ij = s_i s_j ρ^|i−j|`` with scales ``s`` geometric from 0.3 to 3 and ``ρ = 0.8`` (condition
number ≈ 2·10³), ``μ = 1``. Exact: ``log Z = ½ log det(2πΣ)``, ``⟨u⟩ = 5``, ``⟨x_i⟩ = 1``,
``P(x9 < 0) = Φ(−1/3)``. A calibration target the samplers were not tuned on.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import boltzflow as bf

DIM, RHO = 10, 0.8
SCALES = np.geomspace(0.3, 3.0, DIM)
COVARIANCE = SCALES[:, None] * SCALES[None, :] * RHO ** np.abs(np.subtract.outer(np.arange(DIM), np.arange(DIM)))
PRECISION = np.linalg.inv(COVARIANCE)
MEAN = np.ones(DIM)


def energy(x: np.ndarray) -> np.ndarray:
    """``u(x)`` in kT for ``(B, 10)`` points."""
    d = x - MEAN
    return 0.5 * np.einsum("bi,ij,bj->b", d, PRECISION, d)


def gradient(x: np.ndarray) -> np.ndarray:
    """``∇u = Σ⁻¹ (x − μ)``."""
    return (x - MEAN) @ PRECISION


def build(definition: dict[str, Any], **options: Any) -> bf.System:
    """The system of this folder (no options)."""
    if options:
        raise TypeError(f"unknown option(s) {', '.join(sorted(options))} for gaussian_10d_correlated (allowed: none)")
    observables = {"x0": lambda x: np.asarray(x)[:, 0], "x9": lambda x: np.asarray(x)[:, 9]}
    return bf.System.from_energy(energy, dim=DIM, kT=1.0, name=definition["name"], x0=definition["x0"],
                                 gradient=gradient, observables=observables, states=definition["states"])
