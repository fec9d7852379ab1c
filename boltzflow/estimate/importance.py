"""Weighted averages ``<f>`` and the log partition function from (importance-weighted) samples."""

from __future__ import annotations

import math

import numpy as np

from ..samples import SampleSet
from ._observables import Observable, observable_values
from .result import Estimate, require_ess
from .uncertainty import estimate_error
from .weights import ess, logsumexp, normalized_log_weights


def expectation(
    samples: SampleSet,
    f: Observable,
    *,
    n_bootstrap: int = 200,
    seed: int = 0,
    min_ess: float = 10.0,
) -> Estimate:
    """Self-normalised importance estimate of the Boltzmann average ``<f>``.

    ``<f> ~ sum_i w_i f(x_i) / sum_i w_i``; with equal weights (MCMC / MD / exact samples) this is
    the plain mean. Samples of zero weight (failed ones included) are dropped first: ``f`` is never
    evaluated on them, and the estimate equals that from the set without them.

    Parameters
    ----------
    samples : SampleSet
        The samples and their log-weights.
    f : callable or array_like
        ``f(x) -> (M,)`` on ``(M, D)`` configurations, or ``(N,)`` per-sample values
        (e.g. ``samples.energies``).
    n_bootstrap : int
        Bootstrap resamples for the error of independent weighted samples.
    seed : int
        Seed of the bootstrap.
    min_ess : float
        Below this effective sample size the estimate is flagged unreliable (with a
        :class:`LowESSWarning`).

    Returns
    -------
    Estimate
        ``ess`` is the Kish ESS divided by the statistical inefficiency for correlated chains.
        ``nan`` value and ``inf`` error when no sample has weight.

    Raises
    ------
    ValueError
        If ``f`` gives values of the wrong shape or non-finite values on weighted samples.
    """
    keep = np.isfinite(samples.log_weights)
    n = len(samples)
    if not keep.any():
        empty = Estimate(math.nan, math.inf, ess=0.0, n=n, method="weighted mean")
        return require_ess(empty, min_ess, "expectation")
    values = observable_values(f, samples, keep, "observable")
    kept = samples[keep]
    log_w = kept.log_weights
    p = np.exp(normalized_log_weights(log_w))
    value = float(p @ values)

    def statistic(idx: np.ndarray) -> float:
        return float(np.exp(normalized_log_weights(log_w[idx])) @ values[idx])

    influence = len(kept) * p * (values - value)
    uncertainty = estimate_error(kept, statistic, influence, n_bootstrap=n_bootstrap, seed=seed)
    method = "self-normalised importance sampling" if kept.is_weighted else "mean"
    estimate = Estimate(
        value,
        uncertainty.error,
        ess=ess(log_w) / uncertainty.inefficiency,
        n=n,
        method=f"{method}, {uncertainty.method}",
    )
    return require_ess(estimate, min_ess, "expectation")


def log_partition_function(
    samples: SampleSet,
    *,
    n_bootstrap: int = 200,
    seed: int = 0,
    min_ess: float = 10.0,
) -> Estimate:
    """Importance estimate of ``log Z = log mean(w)`` (reduced units, ``Z = int exp(-u) dx``).

    Needs ``log w = -u - log q`` with a *normalised* proposal ``q``
    (``metadata["normalized_proposal"]`` True). Failed samples are real draws of zero weight: they
    count in the mean.

    Parameters
    ----------
    samples : SampleSet
        Importance-weighted samples from a normalised proposal.
    n_bootstrap, seed : int
        Bootstrap settings (error of independent samples; correlated ones use the autocorrelation
        of the linearised estimator ``w / mean(w) - 1``).
    min_ess : float
        Below this Kish effective sample size the estimate is flagged unreliable.

    Returns
    -------
    Estimate
        ``nan`` value and ``inf`` error when every weight is zero.

    Raises
    ------
    ValueError
        If the proposal is not marked as normalised.
    """
    if not samples.metadata.get("normalized_proposal", False):
        raise ValueError(
            "log Z needs log-weights -u - log q from a normalised proposal q "
            "(metadata['normalized_proposal'] is not True); MCMC/MD samples do not estimate Z"
        )
    n = len(samples)
    log_w = samples.log_weights
    log_sum = logsumexp(log_w)
    if log_sum == -math.inf:
        empty = Estimate(math.nan, math.inf, ess=0.0, n=n, method="log mean weight")
        return require_ess(empty, min_ess, "log Z")
    log_n = math.log(n)

    def statistic(idx: np.ndarray) -> float:
        return logsumexp(log_w[idx]) - log_n

    influence = np.exp(log_w - log_sum + log_n) - 1.0
    uncertainty = estimate_error(samples, statistic, influence, n_bootstrap=n_bootstrap, seed=seed)
    estimate = Estimate(
        log_sum - log_n,
        uncertainty.error,
        ess=ess(log_w) / uncertainty.inefficiency,
        n=n,
        method=f"log mean weight, {uncertainty.method}",
    )
    return require_ess(estimate, min_ess, "log Z")
