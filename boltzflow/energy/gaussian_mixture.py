"""Mixture of isotropic Gaussians: a toy target with exact answers (mode fractions, moments, Z = 1).

``u(x) = −log Σ_k w_k N(x; μ_k, σ_k² I) / kT`` with normalised weights, so at ``kT = 1`` the
Boltzmann density *is* the mixture: ``Z = 1``, exact samples can be drawn, and the probability of
any half-space along a coordinate is a sum of normal CDFs.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import log_softmax, logsumexp, ndtr

from .base import Energy
from .particles import check_finite


class GaussianMixtureEnergy(Energy):
    """Reduced energy of a mixture of isotropic Gaussians (numpy, vectorised over the batch).

    .. math::

        U(x) = -\\log \\sum_k w_k\\, \\mathcal N(x;\\, \\mu_k, \\sigma_k^2 I), \\qquad u = U / kT

    Parameters
    ----------
    means : array_like
        ``(K, D)`` component means.
    sigmas : array_like
        ``(K,)`` component standard deviations (positive).
    weights : array_like
        ``(K,)`` positive component weights; normalised to sum to 1 (``[1, 3]`` means 1:3).
    kT : float
        Thermal energy in the units of ``U``. The exact helpers (:meth:`sample`,
        :meth:`coordinate_cdf`) describe the Boltzmann distribution only at ``kT = 1``.
    """

    def __init__(self, means: np.ndarray, sigmas: np.ndarray, weights: np.ndarray, kT: float = 1.0) -> None:
        means = np.atleast_2d(np.asarray(means, dtype=np.float64))
        sigmas = np.asarray(sigmas, dtype=np.float64).reshape(-1)
        weights = np.asarray(weights, dtype=np.float64).reshape(-1)
        if not (means.shape[0] == sigmas.size == weights.size) or means.shape[0] < 1:
            raise ValueError(
                f"means {means.shape}, sigmas {sigmas.shape} and weights {weights.shape} must describe the same "
                "number (>= 1) of components"
            )
        if not np.isfinite(means).all():
            raise ValueError("means must be finite")
        if not (np.isfinite(sigmas).all() and (sigmas > 0).all()):
            raise ValueError(f"sigmas must be positive and finite, got {sigmas}")
        if not (np.isfinite(weights).all() and (weights > 0).all()):
            raise ValueError(f"weights must be positive and finite, got {weights}")
        super().__init__(means.shape[1])
        self.means, self.sigmas = means, sigmas
        self.weights = weights / weights.sum()
        self.kT = check_finite("kT", kT, positive=True)
        # log w_k − (D/2) log(2π σ_k²): the x-independent part of each component's log density
        self._log_norm = np.log(self.weights) - 0.5 * self.dim * np.log(2 * np.pi * sigmas**2)

    def component_log_densities(self, x: np.ndarray) -> np.ndarray:
        """``(B, K)`` values ``log w_k + log N(x; μ_k, σ_k² I)`` of finite rows ``x (B, D)``."""
        x = np.asarray(x, dtype=np.float64)
        sq = (x * x).sum(1)[:, None] - 2.0 * x @ self.means.T + (self.means * self.means).sum(1)[None, :]
        return self._log_norm[None, :] - 0.5 * np.maximum(sq, 0.0) / self.sigmas[None, :] ** 2

    def _evaluate(self, x: np.ndarray, need_gradient: bool) -> tuple[np.ndarray, np.ndarray | None]:
        log_c = self.component_log_densities(x)
        energy = -logsumexp(log_c, axis=1) / self.kT
        if not need_gradient:
            return energy, None
        r = np.exp(log_softmax(log_c, axis=1)) / self.sigmas[None, :] ** 2  # responsibilities / σ²
        gradient = (r.sum(1)[:, None] * x - r @ self.means) / self.kT
        return energy, gradient

    def _require_unit_temperature(self, what: str) -> None:
        if not math.isclose(self.kT, 1.0):
            raise ValueError(f"{what} describes the Boltzmann distribution only at kT = 1 (this energy has kT={self.kT:g})")

    def sample(
        self, n: int, rng: np.random.Generator, weights: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact draws of the mixture (the Boltzmann distribution at ``kT = 1``).

        Parameters
        ----------
        n : int
            Number of draws.
        rng : numpy.random.Generator
            Random source.
        weights : array_like, optional
            Other component weights (e.g. ``[1, 1]`` for a deliberately mis-weighted training set);
            default: the energy's own.

        Returns
        -------
        x : np.ndarray
            ``(n, D)`` configurations.
        component : np.ndarray
            ``(n,)`` index of the component each draw came from.
        """
        if weights is None:
            self._require_unit_temperature("sample()")
            p = self.weights
        else:
            p = np.asarray(weights, dtype=np.float64).reshape(-1)
            if p.size != self.weights.size or not (np.isfinite(p).all() and (p > 0).all()):
                raise ValueError(f"weights must be {self.weights.size} positive numbers, got {weights}")
            p = p / p.sum()
        component = rng.choice(p.size, size=n, p=p)
        x = self.means[component] + self.sigmas[component, None] * rng.standard_normal((n, self.dim))
        return x, component

    def coordinate_cdf(self, index: int, value: float) -> float:
        """Exact ``P(x[index] < value)`` under the Boltzmann distribution (``kT = 1``)."""
        self._require_unit_temperature("coordinate_cdf()")
        if not 0 <= index < self.dim:
            raise IndexError(f"coordinate {index} out of range for dimension {self.dim}")
        return float(self.weights @ ndtr((value - self.means[:, index]) / self.sigmas))

    def __repr__(self) -> str:
        return (
            f"GaussianMixtureEnergy(dim={self.dim}, components={self.weights.size}, "
            f"weights={np.round(self.weights, 4).tolist()}, sigmas={self.sigmas.tolist()}, kT={self.kT:g})"
        )


__all__ = ["GaussianMixtureEnergy"]
