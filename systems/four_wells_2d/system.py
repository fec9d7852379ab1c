"""Four wells on a curved valley: ``u(a, b) = 3 (a²−1)² (a²−4)² / 4 + 0.6 a + 2 (b − 0.4 sin 1.5a)²``.

Wells at a ≈ ±1, ±2 (tilted by 0.6 a), the valley's floor bends with ``b = 0.4 sin 1.5a``; the
conditional of ``b`` given ``a`` is Gaussian (variance 1/4), so every exact answer is a 1D
quadrature over ``a`` (data/make_reference.py). A calibration target the samplers were not tuned on.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import boltzflow as bf


def energy(x: np.ndarray) -> np.ndarray:
    """``u(a, b)`` in kT for ``(B, 2)`` points."""
    a, b = x[:, 0], x[:, 1]
    return 0.75 * (a**2 - 1.0) ** 2 * (a**2 - 4.0) ** 2 + 0.6 * a + 2.0 * (b - 0.4 * np.sin(1.5 * a)) ** 2


def gradient(x: np.ndarray) -> np.ndarray:
    """``∇u`` for ``(B, 2)`` points."""
    a, b = x[:, 0], x[:, 1]
    p, q = a**2 - 1.0, a**2 - 4.0
    r = b - 0.4 * np.sin(1.5 * a)
    da = 0.75 * (4.0 * a * p * q**2 + 4.0 * a * p**2 * q) + 0.6 + 4.0 * r * (-0.6 * np.cos(1.5 * a))
    return np.stack([da, 4.0 * r], axis=1)


def build(definition: dict[str, Any], **options: Any) -> bf.System:
    """The system of this folder (no options)."""
    if options:
        raise TypeError(f"unknown option(s) {', '.join(sorted(options))} for four_wells_2d (allowed: none)")
    observables = {"a": lambda x: np.asarray(x)[:, 0], "b": lambda x: np.asarray(x)[:, 1]}
    return bf.System.from_energy(energy, dim=2, kT=1.0, name=definition["name"], x0=definition["x0"],
                                 gradient=gradient, observables=observables, states=definition["states"])
