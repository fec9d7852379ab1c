"""Standard errors: autocorrelation for chains, bootstrap for weighted samples, plain SE otherwise.

Every estimator in :mod:`boltzflow.estimate` is a smooth function of weighted sample means. It
hands :func:`estimate_error` two things: the estimator as a function of resampled indices (for the
bootstrap) and its per-sample *influence* series ``psi`` (the linearisation, delta method), whose
mean's standard error is the estimate's standard error. :func:`estimate_error` then chooses:

* correlated samples (``metadata["correlated"]``: MD / MCMC chains): ``SE = sqrt(var(psi) * g / n)``
  with ``g`` the statistical inefficiency of ``psi`` (pymbar), estimated per chain (in time order)
  and combined as the length-weighted mean ``g = sum_c n_c g_c / n``. This is exact for chains
  sampling the same stationary distribution, but blind to chains stuck in different states. So
  with at least :data:`MIN_CHAINS_FOR_SPREAD` chains, the spread of the chain means
  (:func:`between_chain_error`) is compared with that error: if it is larger than chance allows
  (a chi-square test at level :data:`SPREAD_TEST_LEVEL`, the idea behind R-hat), the chains
  disagree and the spread becomes the error. No error bar can see a state no chain has visited.
  Weighted chains (SMC replicas, whose weights carry each replica's evidence) must also share the
  weight: when it sits in fewer than :data:`MIN_EFFECTIVE_CHAINS` effective chains (Kish over the
  chains' total weights) nothing checks that chain, so the inefficiency is raised until the ESS is
  that effective number of chains — the estimate is then flagged (replicas whose evidences
  disagree by many kT are the signature of an SMC that did not reach its target).
* independent weighted samples: bootstrap (resampling whole samples) of the estimator itself;
* independent unweighted samples: ``SE = std(psi) / sqrt(n)``.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np
from scipy.stats import chi2

from ..samples import SampleSet
from ._pymbar import import_pymbar
from .weights import ess


MIN_CHAINS_FOR_SPREAD = 8
"""Fewest chains for which the spread of chain means is checked against the error."""

SPREAD_TEST_LEVEL = 0.999
"""Quantile of the chi-square test that decides whether chain means disagree."""

MIN_EFFECTIVE_CHAINS = 2.0
"""Fewest effective chains (Kish over the chains' total weights) that weighted chains must share their weight among."""


class Uncertainty(NamedTuple):
    """A standard error, the statistical inefficiency behind it (1 if independent) and the method."""

    error: float
    inefficiency: float
    method: str


def statistical_inefficiency(
    series: np.ndarray, chain: np.ndarray | None = None, time: np.ndarray | None = None
) -> float:
    """Statistical inefficiency ``g = 1 + 2 tau`` of a (multi-chain) time series.

    Parameters
    ----------
    series : np.ndarray
        ``(N,)`` values in stored order.
    chain : np.ndarray, optional
        ``(N,)`` chain index; each chain is analysed separately.
    time : np.ndarray, optional
        ``(N,)`` time of each value; a chain's values are put in time order first.

    Returns
    -------
    float
        Length-weighted mean of the per-chain ``g`` (pymbar's ``statistical_inefficiency``).
        Chains shorter than 3 values or constant ones count as ``g = 1``.
    """
    series = np.asarray(series, dtype=np.float64).reshape(-1)
    if series.size == 0:
        return 1.0
    timeseries = import_pymbar().timeseries
    chain = np.zeros(series.size, dtype=np.int64) if chain is None else np.asarray(chain)
    order = np.lexsort((np.arange(series.size) if time is None else time, chain))
    total = 0.0
    for values in np.split(series[order], np.flatnonzero(np.diff(chain[order])) + 1):
        varies = values.size >= 3 and np.ptp(values) > 0
        total += values.size * (timeseries.statistical_inefficiency(values) if varies else 1.0)
    return total / series.size


def _chain_weight_shares(samples: SampleSet) -> np.ndarray:
    """Each chain's share of the total weight (finite log-weights)."""
    _, index = np.unique(samples.chain, return_inverse=True)
    w = np.exp(samples.log_weights - np.max(samples.log_weights))
    totals = np.bincount(index, weights=w)
    return totals / totals.sum()


def between_chain_error(series: np.ndarray, chain: np.ndarray) -> float:
    """Standard error of the mean of ``series`` from the spread of its per-chain means.

    Treats each chain's mean as one independent estimate, weighted by chain length ``n_c``:
    ``SE^2 = C / (C - 1) * sum_c (n_c / n)^2 (m_c - m)^2`` (``var(m_c) / C`` for equal lengths).

    Parameters
    ----------
    series : np.ndarray
        ``(N,)`` values.
    chain : np.ndarray
        ``(N,)`` chain index.

    Returns
    -------
    float
        The standard error; ``nan`` with fewer than 2 chains.
    """
    series = np.asarray(series, dtype=np.float64).reshape(-1)
    labels, index = np.unique(np.asarray(chain), return_inverse=True)
    n_chains = labels.size
    if n_chains < 2:
        return math.nan
    counts = np.bincount(index, minlength=n_chains).astype(np.float64)
    means = np.bincount(index, weights=series, minlength=n_chains) / counts
    weights = counts / counts.sum()
    mean = float(weights @ means)
    return math.sqrt(n_chains / (n_chains - 1) * float((weights**2) @ (means - mean) ** 2))


def bootstrap_error(
    statistic: Callable[[np.ndarray], float], n: int, *, n_bootstrap: int = 200, seed: int = 0
) -> float:
    """Bootstrap standard error of ``statistic`` over ``n`` independent samples.

    Parameters
    ----------
    statistic : callable
        ``statistic(indices) -> float`` evaluates the estimator on the samples ``indices``
        (an ``(n,)`` integer array drawn with replacement).
    n : int
        Number of samples.
    n_bootstrap : int
        Number of resamples (at least 2).
    seed : int
        Seed of the ``numpy.random.Generator``.

    Returns
    -------
    float
        Standard deviation of the resampled statistic; ``inf`` if any resample gives a non-finite
        value (e.g. a resample without weight in a state).
    """
    if n_bootstrap < 2:
        raise ValueError(f"n_bootstrap must be at least 2, got {n_bootstrap}")
    rng = np.random.default_rng(seed)
    replicates = np.array([statistic(rng.integers(0, n, size=n)) for _ in range(n_bootstrap)])
    if not np.isfinite(replicates).all():
        return math.inf
    return float(np.std(replicates, ddof=1))


def estimate_error(
    samples: SampleSet,
    statistic: Callable[[np.ndarray], float],
    influence: np.ndarray,
    *,
    n_bootstrap: int = 200,
    seed: int = 0,
) -> Uncertainty:
    """Standard error of an estimator, by the method suited to ``samples`` (see module docstring).

    Parameters
    ----------
    samples : SampleSet
        The samples the estimator was computed from (only arrays and ``correlated`` are read).
    statistic : callable
        ``statistic(indices) -> float``: the estimator on a resample, for the bootstrap.
    influence : np.ndarray
        ``(N,)`` influence series of the estimator (its linearisation; mean zero).
    n_bootstrap, seed : int
        Bootstrap settings.
    """
    n = len(samples)
    influence = np.asarray(influence, dtype=np.float64)
    if n < 2:
        return Uncertainty(math.inf, 1.0, "fewer than 2 samples")
    if samples.correlated:
        g = statistical_inefficiency(influence, samples.chain, samples.time)
        n_chains = 1 if samples.chain is None else np.unique(samples.chain).size
        if samples.is_weighted and n_chains >= 2:
            shares = _chain_weight_shares(samples)
            effective_chains = 1.0 / float(shares @ shares)
            if effective_chains < MIN_EFFECTIVE_CHAINS:
                g = max(g, ess(samples.log_weights) / effective_chains)
                error = math.sqrt(float(np.var(influence, ddof=1)) * g / n)
                return Uncertainty(error, g, f"weight in {effective_chains:.2g} of {n_chains} chains: "
                                             "no other chain checks it")
        error = math.sqrt(float(np.var(influence, ddof=1)) * g / n)
        if n_chains >= MIN_CHAINS_FOR_SPREAD:
            spread = between_chain_error(influence, samples.chain)
            # Same distribution in every chain: (C - 1) * (spread / error)^2 ~ chi2(C - 1).
            threshold = chi2.ppf(SPREAD_TEST_LEVEL, n_chains - 1) / (n_chains - 1)
            if spread**2 > threshold * error**2:
                # Chains disagree more than their autocorrelation explains: trust the spread.
                g = g * (spread / error) ** 2 if error > 0 else math.inf
                return Uncertainty(spread, g, f"spread of {n_chains} chain means")
        return Uncertainty(error, g, f"autocorrelation (g={g:.3g})")
    if samples.is_weighted:
        error = bootstrap_error(statistic, n, n_bootstrap=n_bootstrap, seed=seed)
        return Uncertainty(error, 1.0, f"bootstrap ({n_bootstrap})")
    return Uncertainty(float(np.std(influence, ddof=1)) / math.sqrt(n), 1.0, "standard error")
