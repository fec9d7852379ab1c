"""Weighted averages ``<f>`` and the log partition function from (importance-weighted) samples."""

from __future__ import annotations

import math

import numpy as np

from ..samples import SampleSet
from ._observables import Observable, observable_values
from .pareto import attach_pareto_k, smoothed
from .result import Estimate, mark_unreliable, require_ess
from .uncertainty import estimate_error
from .weights import ess, logsumexp, normalized_log_weights


def expectation(
    samples: SampleSet,
    f: Observable,
    *,
    error: str = "analytic",
    n_bootstrap: int = 200,
    seed: int = 0,
    min_ess: float = 10.0,
    smooth: str | None = None,
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
    error : {"analytic", "bootstrap"}
        Error of independent samples: delta method (default) or bootstrap (see
        :mod:`~boltzflow.estimate.uncertainty`; correlated samples use their own).
    n_bootstrap : int
        Bootstrap resamples (``error="bootstrap"``).
    seed : int
        Seed of the bootstrap.
    min_ess : float
        Below this effective sample size the estimate is flagged unreliable (with a
        :class:`LowESSWarning`).
    smooth : {None, "psis"}
        ``"psis"``: Pareto-smooth the weights first (:func:`~boltzflow.estimate.pareto.psis_log_weights`;
        lower variance, small bias). k̂ is that of the raw weights either way.

    Returns
    -------
    Estimate
        ``ess`` is the Kish ESS divided by the statistical inefficiency for correlated chains.
        ``pareto_k`` is the Pareto k̂ of the weights (None if unweighted); independent weighted
        samples with k̂ above :func:`~boltzflow.estimate.pareto.pareto_k_threshold` are flagged.
        ``nan`` value and ``inf`` error when no sample has weight. Flagged unreliable when ``f``
        takes one value on every sample of correlated chains (their error bar would be 0).

    Raises
    ------
    ValueError
        If ``f`` gives values of the wrong shape or non-finite values on weighted samples.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(0.0, 2.0, size=(20_000, 1))  # proposal N(0, 4), target N(1, 1)
    >>> log_w = -0.5 * (x[:, 0] - 1.0) ** 2 + x[:, 0] ** 2 / 8.0
    >>> est = expectation(SampleSet(x, 0.5 * (x[:, 0] - 1) ** 2, log_weights=log_w), lambda v: v[:, 0])
    >>> abs(est.value - 1.0) < 3 * est.error, est.method, est.pareto_k < 0.5
    (True, 'self-normalised importance sampling, delta method', True)
    """
    keep = np.isfinite(samples.log_weights)
    n = len(samples)
    if not keep.any():
        empty = Estimate(math.nan, math.inf, ess=0.0, n=n, method="weighted mean")
        return require_ess(empty, min_ess, "expectation")
    values = observable_values(f, samples, keep, "observable")
    kept = samples[keep]
    log_w = smoothed(samples.log_weights, smooth)[keep]
    p = np.exp(normalized_log_weights(log_w))
    value = float(p @ values)

    def statistic(idx: np.ndarray) -> float:
        return float(np.exp(normalized_log_weights(smoothed(kept.log_weights[idx], smooth))) @ values[idx])

    influence = len(kept) * p * (values - value)
    uncertainty = estimate_error(kept, statistic, influence, error=error, n_bootstrap=n_bootstrap, seed=seed)
    method = "self-normalised importance sampling" if kept.is_weighted else "mean"
    estimate = Estimate(
        value,
        uncertainty.error,
        ess=ess(log_w) / uncertainty.inefficiency,
        n=n,
        method=f"{method}{', PSIS' if smooth else ''}, {uncertainty.method}",
    )
    estimate = (mark_unreliable(estimate, f"expectation: {uncertainty.problem}") if uncertainty.problem
                else require_ess(estimate, min_ess, "expectation"))
    return attach_pareto_k(estimate, samples.log_weights, correlated=samples.correlated, what="expectation",
                           smoothed=smooth is not None)


def log_partition_function(
    samples: SampleSet,
    *,
    error: str = "analytic",
    n_bootstrap: int = 200,
    seed: int = 0,
    min_ess: float = 10.0,
    smooth: str | None = None,
) -> Estimate:
    """Importance estimate of ``log Z = log mean(w)`` (reduced units, ``Z = int exp(-u) dx``).

    Needs ``log w = -u - log q`` with a *normalised* proposal ``q``
    (``metadata["normalized_proposal"]`` True). Failed samples are real draws of zero weight: they
    count in the mean.

    Parameters
    ----------
    samples : SampleSet
        Importance-weighted samples from a normalised proposal.
    error : {"analytic", "bootstrap"}
        Error of independent samples: delta method on the linearised estimator ``w / mean(w) - 1``
        (``SE^2 = var(w) / (n mean(w)^2)``, the default) or bootstrap.
    n_bootstrap, seed : int
        Bootstrap settings.
    min_ess : float
        Below this Kish effective sample size the estimate is flagged unreliable.
    smooth : {None, "psis"}
        ``"psis"``: Pareto-smoothed weights (their mean still estimates ``Z``).

    Returns
    -------
    Estimate
        With ``pareto_k`` (flagged above the threshold for independent samples, as in
        :func:`expectation`); ``nan`` value and ``inf`` error when every weight is zero.

    Raises
    ------
    ValueError
        If the proposal is not marked as normalised.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(0.0, 2.0, size=(20_000, 1))  # q = N(0, 4); u = x^2 / 2, so log Z = log sqrt(2 pi)
    >>> log_q = -x[:, 0] ** 2 / 8.0 - np.log(np.sqrt(2 * np.pi) * 2.0)
    >>> s = SampleSet(x, 0.5 * x[:, 0] ** 2, log_weights=-0.5 * x[:, 0] ** 2 - log_q,
    ...               metadata={"normalized_proposal": True})
    >>> est = log_partition_function(s)
    >>> bool(abs(est.value - 0.5 * np.log(2 * np.pi)) < 3 * est.error)
    True
    """
    if not samples.metadata.get("normalized_proposal", False):
        raise ValueError(
            "log Z needs log-weights -u - log q from a normalised proposal q "
            "(metadata['normalized_proposal'] is not True); MCMC/MD samples do not estimate Z"
        )
    n = len(samples)
    log_w = smoothed(samples.log_weights, smooth)
    log_sum = logsumexp(log_w)
    if log_sum == -math.inf:
        empty = Estimate(math.nan, math.inf, ess=0.0, n=n, method="log mean weight")
        return require_ess(empty, min_ess, "log Z")
    log_n = math.log(n)

    def statistic(idx: np.ndarray) -> float:
        return logsumexp(smoothed(samples.log_weights[idx], smooth)) - log_n

    influence = np.exp(log_w - log_sum + log_n) - 1.0
    uncertainty = estimate_error(samples, statistic, influence, error=error, n_bootstrap=n_bootstrap, seed=seed)
    estimate = Estimate(
        log_sum - log_n,
        uncertainty.error,
        ess=ess(log_w) / uncertainty.inefficiency,
        n=n,
        method=f"log mean weight{', PSIS' if smooth else ''}, {uncertainty.method}",
    )
    estimate = (mark_unreliable(estimate, f"log Z: {uncertainty.problem}") if uncertainty.problem
                else require_ess(estimate, min_ess, "log Z"))
    return attach_pareto_k(estimate, samples.log_weights, correlated=samples.correlated, what="log Z",
                           smoothed=smooth is not None)
