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
from .uncertainty import statistical_inefficiency


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

    Each chain (in time order) is cut into two halves of equal length (all chains are truncated
    to the shortest one); with ``m`` half-chains of length ``n``, within-chain variance ``W``
    (mean of the half-chain variances) and between-chain variance ``B = n · var(half-chain means)``,
    ``R̂ = sqrt(((n − 1)/n · W + B/n) / W)``. Values near 1 (below about 1.01–1.05) say the chains
    agree; chains stuck in different states give ``R̂ ≫ 1``.

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
        ``nan`` with fewer than 4 values per chain; ``1.0`` when every value is equal; ``inf``
        when each half-chain is constant but their values differ.
    """
    values, chain, time = _series(samples, f)
    halves = []
    labels = np.unique(chain)
    lengths = [int(np.count_nonzero(chain == c)) for c in labels]
    if not lengths:
        return math.nan
    length = min(lengths) // 2
    if length < 2:
        return math.nan
    for c in labels:
        rows = np.flatnonzero(chain == c)
        rows = rows[np.argsort(time[rows], kind="stable")]
        series = values[rows]
        halves.append(series[:length])
        halves.append(series[len(series) - length:])
    halves = np.asarray(halves)  # (m, n)
    within = float(halves.var(axis=1, ddof=1).mean())
    between = length * float(halves.mean(axis=1).var(ddof=1))
    if within == 0.0:
        return 1.0 if between == 0.0 else math.inf
    return math.sqrt(((length - 1) / length * within + between / length) / within)


__all__ = ["integrated_autocorrelation_time", "r_hat"]
