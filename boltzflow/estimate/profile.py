"""Free-energy profiles ``F(s) = -ln p(s)`` along an observable, with per-bin errors."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from ..samples import SampleSet
from ._observables import Observable
from .importance import expectation
from .pareto import heavy_tail_message
from .result import HeavyTailedWeightsWarning, LowESSWarning


@dataclass(frozen=True)
class FreeEnergyProfile:
    """A free-energy profile on fixed bins.

    Attributes
    ----------
    edges : ndarray, shape (K + 1,)
        Bin edges.
    free_energy : ndarray, shape (K,)
        ``-ln(p_k / width_k)`` in kT, shifted so that the minimum is 0; ``inf`` for empty bins.
    error : ndarray, shape (K,)
        1σ error of each bin, ``σ(p_k) / p_k`` (``inf`` for empty bins).
    probability : ndarray, shape (K,)
        Estimated Boltzmann probability of each bin (those outside the edges are not counted).
    pareto_k : float or None
        Pareto k̂ of the importance weights (None for unweighted samples).
    """

    edges: np.ndarray
    free_energy: np.ndarray
    error: np.ndarray
    probability: np.ndarray
    pareto_k: float | None = None

    @property
    def centres(self) -> np.ndarray:
        """Bin centres."""
        return 0.5 * (self.edges[1:] + self.edges[:-1])

    def difference(self, reference: ArrayLike, where: ArrayLike | None = None) -> np.ndarray:
        """``F - F_ref`` on the bins ``where``, after the best constant shift (profiles are defined up to one).

        The shift is the inverse-variance weighted mean difference over the selected bins.

        Parameters
        ----------
        reference : array_like, shape (K,)
            Reference free energies on the same bins (kT).
        where : array_like of bool, shape (K,), optional
            Bins to compare (default: every bin finite in both).

        Returns
        -------
        ndarray
            The aligned differences on the selected bins.
        """
        reference = np.asarray(reference, dtype=np.float64)
        if reference.shape != self.free_energy.shape:
            raise ValueError(f"reference has shape {reference.shape}, the profile {self.free_energy.shape}")
        mask = np.isfinite(self.free_energy) & np.isfinite(reference)
        if where is not None:
            mask &= np.asarray(where, dtype=bool)
        if not mask.any():
            raise ValueError("no bin is finite in both profiles")
        delta = self.free_energy[mask] - reference[mask]
        weights = 1.0 / np.maximum(self.error[mask], 1e-12) ** 2
        return delta - np.sum(weights * delta) / np.sum(weights)


def free_energy_profile(
    samples: SampleSet,
    f: Observable,
    edges: ArrayLike,
    *,
    error: str = "analytic",
    seed: int = 0,
    n_bootstrap: int = 200,
    smooth: str | None = None,
) -> FreeEnergyProfile:
    """Reweighted free-energy profile along an observable.

    Each bin's probability is the weighted average of an indicator, so its error has the same
    treatment as any :func:`~boltzflow.estimate.expectation` (delta method or bootstrap for
    independent samples, statistical inefficiency for MD/MCMC chains, replica spread for SMC).
    Independent weighted samples whose Pareto k̂ exceeds
    :func:`~boltzflow.estimate.pareto.flag_threshold` warn with a
    :class:`~boltzflow.estimate.HeavyTailedWeightsWarning` (the sparse bins' low-ESS warnings are
    silenced: their errors show it).

    Parameters
    ----------
    samples : SampleSet
        Samples with log-weights.
    f : callable or array_like
        ``f(x) -> (M,)`` or ``(M, k)``: with ``k`` values per configuration (e.g. all pair
        distances of identical particles) each value counts ``1/k`` — the pooled marginal.
        Or the per-sample values themselves, ``(N,)`` / ``(N, k)``.
    edges : array_like, shape (K + 1,)
        Increasing bin edges.
    error : {"analytic", "bootstrap"}
        Error method of independent samples (see :func:`~boltzflow.estimate.expectation`).
    seed, n_bootstrap : int
        Bootstrap settings.
    smooth : {None, "psis"}
        ``"psis"``: Pareto-smooth the weights first.

    Returns
    -------
    FreeEnergyProfile

    Examples
    --------
    >>> x = np.random.default_rng(0).normal(size=(5000, 1))
    >>> profile = free_energy_profile(SampleSet(x, 0.5 * x[:, 0] ** 2), x[:, 0], np.linspace(-2, 2, 5))
    >>> np.round(profile.free_energy, 1), profile.pareto_k
    (array([0.9, 0. , 0.1, 0.9]), None)
    """
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or not np.all(np.diff(edges) > 0):
        raise ValueError("edges must be a 1-D increasing array of at least 2 values")
    keep = np.isfinite(samples.log_weights)
    n_bins = edges.size - 1
    fractions = np.zeros((len(samples), n_bins))
    if keep.any():
        if callable(f):
            values = np.asarray(f(samples.x[keep]), dtype=np.float64)
        else:
            values = np.asarray(f, dtype=np.float64)
            if values.shape[0] != len(samples):
                raise ValueError(f"observable has {values.shape[0]} rows for {len(samples)} samples")
            values = values[keep]
        if values.size % int(keep.sum()):
            raise ValueError(f"profile observable gave {values.size} values for {int(keep.sum())} configurations")
        flat = values.reshape(int(keep.sum()), -1)
        bad = np.count_nonzero(~np.isfinite(flat))
        if bad:
            raise ValueError(f"profile observable is not finite on {bad} values of samples with nonzero weight")
        index = np.searchsorted(edges, flat, side="right") - 1
        inside = (index >= 0) & (index < n_bins)
        rows = np.broadcast_to(np.arange(flat.shape[0])[:, None], flat.shape)
        counts = np.zeros((flat.shape[0], n_bins))
        np.add.at(counts, (rows[inside], index[inside]), 1.0)
        fractions[keep] = counts / flat.shape[1]
    probability, errors = np.zeros(n_bins), np.full(n_bins, np.inf)
    pareto_k = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LowESSWarning)  # sparse tail bins are expected; errors show it
        for k in range(n_bins):
            est = expectation(samples, fractions[:, k], error=error, seed=seed, n_bootstrap=n_bootstrap, smooth=smooth)
            probability[k], errors[k], pareto_k = est.value, est.error, est.pareto_k
    if pareto_k is not None and not samples.correlated:
        message = heavy_tail_message(pareto_k, len(samples), "free-energy profile")
        if message is not None:
            warnings.warn(message, HeavyTailedWeightsWarning, stacklevel=2)
    width = np.diff(edges)
    with np.errstate(divide="ignore", invalid="ignore"):
        free = -np.log(probability / width)
        rel_error = np.where(probability > 0, errors / probability, np.inf)
    finite = np.isfinite(free)
    if finite.any():
        free = free - free[finite].min()
    return FreeEnergyProfile(edges=edges, free_energy=free, error=rel_error, probability=probability, pareto_k=pareto_k)


__all__ = ["FreeEnergyProfile", "free_energy_profile"]
