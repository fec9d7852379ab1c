"""Importance weights in log space: normalisation and Kish effective sample size."""

from __future__ import annotations

import math

import numpy as np

from ..samples import SampleSet


def logsumexp(log_values: np.ndarray) -> float:
    """``log(sum(exp(log_values)))`` without overflow; ``-inf`` for no or only ``-inf`` entries."""
    a = np.asarray(log_values, dtype=np.float64).reshape(-1)
    if a.size == 0:
        return -math.inf
    top = float(a.max())
    if not math.isfinite(top):
        return top
    return top + math.log(float(np.sum(np.exp(a - top))))


def as_log_weights(samples_or_log_weights: SampleSet | np.ndarray) -> np.ndarray:
    """The ``(N,)`` float64 log-weights of a :class:`SampleSet`, or the given array."""
    if isinstance(samples_or_log_weights, SampleSet):
        return samples_or_log_weights.log_weights
    log_w = np.asarray(samples_or_log_weights, dtype=np.float64).reshape(-1)
    if np.isnan(log_w).any() or np.isposinf(log_w).any():
        raise ValueError("log-weights must be finite or -inf (zero weight), got NaN/+inf")
    return log_w


def normalized_log_weights(log_w: SampleSet | np.ndarray) -> np.ndarray:
    """Log-weights shifted so that the weights sum to one.

    Parameters
    ----------
    log_w : SampleSet or np.ndarray
        ``(N,)`` log-weights, ``-inf`` for zero weight.

    Returns
    -------
    np.ndarray
        ``log_w - logsumexp(log_w)``; all ``-inf`` when every weight is zero.
    """
    log_w = as_log_weights(log_w)
    total = logsumexp(log_w)
    if total == -math.inf:
        return np.full_like(log_w, -np.inf)
    return log_w - total


def ess(samples_or_log_weights: SampleSet | np.ndarray) -> float:
    """Kish effective sample size ``(sum w)^2 / sum w^2``, computed in log space.

    Zero weights (``-inf`` log-weights) contribute nothing; returns ``0.0`` when all weights are zero.
    Correlation between samples is not accounted for here (see :mod:`.uncertainty`).
    """
    log_w = as_log_weights(samples_or_log_weights)
    log_sum = logsumexp(log_w)
    if log_sum == -math.inf:
        return 0.0
    return math.exp(2.0 * log_sum - logsumexp(2.0 * log_w))


def relative_ess(samples_or_log_weights: SampleSet | np.ndarray) -> float:
    """Kish effective sample size divided by the number of samples (failed ones included); 0 if none."""
    n = as_log_weights(samples_or_log_weights).size
    return ess(samples_or_log_weights) / n if n else 0.0
