"""Convergence diagnostics of Markov chains: integrated autocorrelation time and split-R-hat.

Both read only the SampleSet's arrays (configurations, weights, ``chain`` and ``time``), like
every estimator, and take an observable in the same forms as :func:`~.importance.expectation`:
a function ``f(x) -> (M,)`` of the configurations or an ``(N,)`` array of per-sample values.
Samples of zero weight (failed ones) are left out. The chains are unweighted MCMC/MD chains;
for importance-weighted samples these diagnostics describe the draws, not the target.
"""

from __future__ import annotations

import math

import numpy as np

from ..samples import SampleSet
from ._observables import Observable, observable_values
from .uncertainty import split_r_hat, statistical_inefficiency


def _series(samples: SampleSet, f: Observable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Values of ``f`` on the weighted samples, with their chain labels and times (stored order if none)."""
    keep = np.isfinite(samples.log_weights)
    values = observable_values(f, samples, keep, "observable")
    n = len(samples)
    chain = np.zeros(n, dtype=np.int64) if samples.chain is None else np.asarray(samples.chain)
    time = np.arange(n) if samples.time is None else np.asarray(samples.time)
    return values, chain[keep], time[keep]


def integrated_autocorrelation_time(samples: SampleSet, f: Observable) -> float:
    """Integrated autocorrelation time ``τ = (g − 1) / 2`` of an observable along the chains.

    ``g = 1 + 2 Σ_{k≥1} ρ_k = n / ESS`` is the statistical inefficiency behind the error bars of
    correlated chains (:func:`~boltzflow.estimate.uncertainty.statistical_inefficiency`: the
    multi-chain ESS of the mean, split chains in time order, Vehtari et al. 2021), so
    ``τ = Σ_{k≥1} ρ_k``: 0 for independent samples, ``ρ / (1 − ρ)`` for an AR(1) series with
    coefficient ``ρ``, and ``n / (1 + 2τ)`` is the effective number of samples. The ``ρ_k`` include
    the between-chain variance, so chains that disagree (stuck in different states) give a large
    ``τ`` even when each looks well mixed on its own. (Sokal's convention ``1/2 + Σ ρ_k`` is this
    value plus 1/2.)

    Parameters
    ----------
    samples : SampleSet
        Chains (``chain`` labels; ``time`` orders each chain, stored order otherwise).
    f : callable or array_like
        ``f(x) -> (M,)`` on configurations, or ``(N,)`` per-sample values.

    Returns
    -------
    float
        τ in units of the stored sample spacing; ``nan`` when no sample has weight.
    """
    values, chain, time = _series(samples, f)
    if values.size == 0:
        return math.nan
    return (statistical_inefficiency(values, chain, time) - 1.0) / 2.0


def r_hat(samples: SampleSet, f: Observable) -> float:
    """Split-R-hat (Gelman–Rubin, split chains as in Vehtari et al. 2021, without rank normalisation).

    :func:`~boltzflow.estimate.uncertainty.split_r_hat` of the observable's values: each chain (in
    time order, all truncated to the shortest one) is cut into two halves; with ``m`` half-chains
    of length ``n``, within-chain variance ``W`` (mean of the half-chain variances) and
    between-chain variance ``B = n · var(half-chain means)``, ``R̂ = sqrt(((n − 1)/n · W + B/n) / W)``.
    Values near 1 say the chains agree; chains stuck in different states give ``R̂ ≫ 1``. Above
    :data:`~boltzflow.estimate.uncertainty.MAX_R_HAT` (1.1) the chains' estimates are flagged
    unreliable.

    Parameters
    ----------
    samples : SampleSet
        Chains (``chain`` labels; ``time`` orders each chain, stored order otherwise). A single
        chain is split into two halves too.
    f : callable or array_like
        ``f(x) -> (M,)`` on configurations, or ``(N,)`` per-sample values.

    Returns
    -------
    float
        ``nan`` when no chain has 4 values (shorter chains are left out); ``1.0`` when every value
        is equal; ``inf`` when each half-chain is constant but their values differ.
    """
    values, chain, time = _series(samples, f)
    return split_r_hat(values, chain, time)


def move_fractions(samples: SampleSet) -> np.ndarray:
    """Fraction of each chain's steps, between consecutive stored samples, that change the configuration.

    Read from the coordinates alone, so it applies to any sampler: an MCMC chain whose proposals
    are all rejected repeats its configuration, and its fraction is 0. With thinning, a stored
    step is many sampler steps, so the fraction is at least the acceptance rate.

    Parameters
    ----------
    samples : SampleSet
        Chains (``chain`` labels, one chain if None; ``time`` orders each chain, stored order otherwise).

    Returns
    -------
    np.ndarray
        One fraction per chain (sorted chain labels); ``nan`` for a chain with fewer than 2 samples.

    Examples
    --------
    >>> x = np.array([[0.0], [0.0], [1.0], [1.0], [2.0], [2.0], [2.0], [2.0]])
    >>> move_fractions(SampleSet(x, np.zeros(8), chain=np.repeat([0, 1], 4))).tolist()
    [0.3333333333333333, 0.0]
    """
    n = len(samples)
    labels, chain = np.unique(np.zeros(n, dtype=np.int64) if samples.chain is None else samples.chain,
                              return_inverse=True)
    order = np.lexsort((np.arange(n) if samples.time is None else samples.time, chain))
    chain = chain[order]
    x = samples.x if np.array_equal(order, np.arange(n)) else samples.x[order]  # samplers store chains in order
    moved = np.empty(max(n - 1, 0), dtype=bool)
    block = max(1, 10_000_000 // max(samples.dim, 1))  # rows compared at a time: bounded memory
    for start in range(0, n - 1, block):
        stop = min(start + block, n - 1)
        moved[start:stop] = np.any(x[start + 1 : stop + 1] != x[start:stop], axis=1)
    within = chain[1:] == chain[:-1]  # steps inside one chain
    steps = np.bincount(chain[1:][within], minlength=labels.size).astype(np.float64)
    moves = np.bincount(chain[1:][within], weights=moved[within], minlength=labels.size)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(steps > 0, moves / steps, math.nan)


__all__ = ["integrated_autocorrelation_time", "move_fractions", "r_hat"]
