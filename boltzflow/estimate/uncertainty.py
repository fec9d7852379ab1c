"""Standard errors: autocorrelation for chains, replica spread for SMC, delta method or bootstrap otherwise.

Every estimator in :mod:`boltzflow.estimate` is a smooth function of weighted sample means. It
hands :func:`estimate_error` two things: the estimator as a function of resampled indices (for the
bootstrap) and its per-sample *influence* series ``psi`` (the linearisation, delta method: the
estimate minus its value is ``mean(psi)`` to first order, and ``psi`` has mean zero), whose
mean's standard error is the estimate's standard error. :func:`estimate_error` then chooses:

* unweighted correlated samples (``metadata["correlated"]``: MD / MCMC chains), and weighted ones
  in a single chain (umbrella MD): ``SE = sqrt(var(psi) * g / n)`` with ``g = n / ESS`` the
  statistical inefficiency of ``psi`` from the multi-chain effective sample size of the mean
  (:func:`multichain_ess`; Vehtari, Gelman, Simpson, Carpenter & Bürkner 2021, as ``ess_mean`` in
  Stan / arviz): every chain (in time order) is split into two halves, and the autocorrelation
  ``rho_t = 1 - (W - mean_c gamma_{c,t}) / var+`` combines the within-chain autocovariances
  ``gamma_{c,t}`` with the between-chain variance (``var+ = (m-1)/m W + B/m``, half-chains of
  length ``m``, ``W`` their mean variance, ``B / m`` the variance of their means), summed with
  Geyer's initial positive and monotone sequence. Chains that disagree, because they are stuck in
  different states or have not forgotten different starts, or one chain whose halves disagree,
  raise ``B`` and with it ``g``; short chains whose autocorrelation is underestimated within
  each chain are corrected the same way. (For chains that sample the same distribution it is the
  usual ``g = 1 + 2 sum_t rho_t``.) When the chains disagree, ``rho_t`` stays near
  ``1 - W / var+`` up to the longest lag, and the error tends to the spread of the chain means,
  ``SE^2 ~ var(chain means) / C``: no separate test of that spread is needed, and it works with
  any number of chains, a single chain included (its two halves). ``g`` is floored at 1 (an
  antithetic ESS above ``n`` is not credited). That ESS is itself estimated from the chains, and
  when they disagree — split-R̂ of the influence series above :data:`MAX_R_HAT` (1.1,
  :func:`split_r_hat`) — it rests on a few transitions and so does the error bar: the estimate is
  then flagged (``Uncertainty.problem``). No error bar can see a state no chain has visited (see
  :func:`~boltzflow.estimate.summarize`).
* weighted correlated samples in at least 2 chains: SMC replicas (``chain`` = independent replica,
  ``time`` = initial ancestor; the final weights carry each replica's evidence). Particles of one
  replica share ancestors, and after many resamplings a replica may descend from a handful of
  them; an autocorrelation over ancestors sees only part of that (not the deeper genealogy, nor
  the scatter of the replicas' evidences: ``log Z``'s influence is constant within a replica whose
  final weights are equal). The replicas are independent, so the cluster-robust (between-replica,
  sandwich / jackknife) variance of the linearised estimator is honest: with
  ``S_r = sum_{i in r} psi_i / n``, ``SE^2 = R / (R - 1) * sum_r S_r^2`` (:func:`replica_error`;
  ``var(m_r) / R`` for replicas of equal total weight with estimates ``m_r``), itself uncertain
  with few replicas (``R - 1`` degrees of freedom): it is floored at the independent-sample error
  ``sqrt(var(psi) / n)`` (resampled particles are never worth more than independent draws, and a
  spread of few replicas can come out small by chance). Its implied inefficiency
  ``g = SE^2 n / var(psi) >= 1`` divides the Kish ESS, so an estimate that rests on the replicas'
  evidences alone (``log Z``) has an ESS near the number of replicas. The weight
  must also be shared: when it sits in fewer than :data:`MIN_EFFECTIVE_CHAINS` effective replicas
  (Kish over the replicas' total weights) no other replica checks it, so ``g`` is raised until the
  ESS is that effective number of replicas — the estimate is then flagged (replicas whose
  evidences disagree by many kT are the signature of an SMC that did not reach its target).
* independent samples: ``SE = std(psi) / sqrt(n)`` (``error="analytic"``, the default: the plain
  standard error for equal weights, the delta method for importance weights, e.g.
  ``SE^2 = n / (n - 1) * sum_i p_i^2 (f_i - f)^2`` for a self-normalised mean with normalised
  weights ``p_i``), or the bootstrap of the estimator itself (``error="bootstrap"``, resampling
  whole samples; slower, and better when the estimator is far from linear on few samples).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np

from ..samples import SampleSet
from .weights import ess


MIN_EFFECTIVE_CHAINS = 2.0
"""Fewest effective chains (Kish over the chains' total weights) that weighted chains must share their weight among."""

CONSTANT_CHAINS = ("the same value on every sample of correlated chains: with no fluctuation their "
                   "autocorrelation cannot be measured, so the error bar of 0 is no error bar (did the chains move?)")
"""Why an estimate from correlated chains whose values never change is flagged (its ESS is set to 1)."""

MAX_R_HAT = 1.1
"""Largest split-R̂ (:func:`split_r_hat`) of an estimator's influence series at which correlated chains' error is trusted.

The multi-chain ESS behind a chain error (:func:`multichain_ess`) is itself an estimate, from the
chains' fluctuations and the spread of their means; when the chains disagree — few crossings of a
barrier, or starts not yet forgotten — that spread rests on a handful of events, and the error
bar is as noisy as the estimate (on the four-well calibration target, HMC chains that crossed the
12 kT barrier a few times had R̂ 1.2–4 and ⟨a⟩ 1.4 σ off on average). Vehtari et al. (2021)
trust R̂ and the ESS-based Monte Carlo error only when R̂ < 1.01 and the bulk ESS exceeds 100 per
chain; since ``R̂² − 1 ≈ 1 / ESS`` per half-chain, the two ask for the same thing. That is too
strict for many short chains (16 chains of 125–250 stored samples: an honest error needs the
total ESS, not 100 per chain), so the classic bound of Gelman & Rubin (1992) / Brooks & Gelman
(1998), 1.1 — about 10 effective samples per chain — is used: the chains have then each forgotten
their start and sampled the quantity's fluctuations several times over, which the calibration
benchmark finds enough for honest error bars.
"""

ERROR_METHODS = ("analytic", "bootstrap")
"""Error methods of independent samples: delta method (influence series) or bootstrap."""


class Uncertainty(NamedTuple):
    """A standard error, the statistical inefficiency behind it (1 if independent) and the method.

    ``problem`` is empty, or says why the error cannot be trusted whatever the sample size (the
    estimators then flag the estimate unreliable).
    """

    error: float
    inefficiency: float
    method: str
    problem: str = ""


def _autocovariances(draws: np.ndarray) -> np.ndarray:
    """Biased autocovariances ``gamma_t = sum_i (x_i - m)(x_{i+t} - m) / n`` of each row, by FFT."""
    n = draws.shape[1]
    centred = draws - draws.mean(axis=1, keepdims=True)
    size = 1 << (2 * n - 1).bit_length()  # zero padding to >= 2n: no wrap-around
    spectrum = np.fft.rfft(centred, n=size, axis=1)
    return np.fft.irfft(spectrum * np.conj(spectrum), n=size, axis=1)[:, :n] / n


def _tau(draws: np.ndarray) -> float:
    """Geyer-truncated ``tau = -1 + 2 sum_t rho_t`` of the (already split) rows of ``draws`` (Vehtari et al. 2021)."""
    n = draws.shape[1]
    acov = _autocovariances(draws).mean(axis=0)
    within = acov[0] * n / (n - 1.0)
    var_plus = within * (n - 1.0) / n + float(np.var(draws.mean(axis=1), ddof=1))
    rho = 1.0 - (within - acov) / var_plus
    rho[0] = 1.0
    # Pairs P_k = rho_2k + rho_2k+1 while positive (initial positive sequence), at most up to the
    # lag that Stan / arviz reach; the pair sums are then made non-increasing (monotone sequence).
    n_pairs = max((n - 1) // 2, 1)
    pairs = rho[0 : 2 * n_pairs : 2] + rho[1 : 2 * n_pairs : 2]
    stop = np.flatnonzero(pairs[:-1] <= 0.0)
    last = int(stop[0]) if stop.size else n_pairs - 1  # pairs 0 .. last - 1 are summed
    tau = -1.0 + 2.0 * float(np.minimum.accumulate(pairs[:last]).sum())
    if last == 0 or rho[2 * last] > 0.0 or pairs[last] >= 0.0:
        tau += rho[2 * last]  # the first even lag past the positive pairs, as Stan does
    return tau


def multichain_ess(draws: np.ndarray) -> float:
    """Multi-chain effective sample size of the mean (split chains; Vehtari et al. 2021).

    The ``ess_mean`` of Stan and arviz (no rank normalisation): each chain is split into two
    halves (the middle value of an odd length is dropped), and with ``M`` half-chains of length
    ``m``, FFT autocovariances ``gamma_{c,t}``, ``W`` the mean half-chain variance and
    ``var+ = (m-1)/m W + var(half-chain means)``, the autocorrelation
    ``rho_t = 1 - (W - mean_c gamma_{c,t}) / var+`` is summed with Geyer's initial positive and
    monotone sequence into ``tau = -1 + 2 sum_t rho_t`` and ``ESS = M m / tau``. ``tau`` is floored
    at ``1 / log10(M m)``, so antithetic chains can give an ESS above the number of draws.

    Parameters
    ----------
    draws : np.ndarray
        ``(n_chains, n_draws)`` values, each row one chain in time order; a 1D array is one chain.

    Returns
    -------
    float
        The effective sample size; ``nan`` with fewer than 4 draws per chain; the number of draws
        (of the halves) when all values are equal.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> round(multichain_ess(rng.normal(size=(4, 1000))) / 4000, 1)  # independent draws
    1.0
    >>> stuck = rng.normal(size=(4, 1000)) + np.array([[0.0], [0.0], [5.0], [5.0]])
    >>> bool(multichain_ess(stuck) < 10)  # chains in different places: about one sample per chain
    True
    """
    draws = np.atleast_2d(np.asarray(draws, dtype=np.float64))
    half = draws.shape[1] // 2
    if half < 2:
        return math.nan
    split = np.concatenate([draws[:, :half], draws[:, draws.shape[1] - half :]])
    size = split.size
    if np.ptp(split) < np.finfo(np.float64).resolution:
        return float(size)
    return size / max(_tau(split), 1.0 / math.log10(size))


def statistical_inefficiency(
    series: np.ndarray, chain: np.ndarray | None = None, time: np.ndarray | None = None
) -> float:
    """Statistical inefficiency ``g = n / ESS`` of the mean of a (multi-chain) time series.

    ``ESS`` is the multi-chain effective sample size of the mean (:func:`multichain_ess`), so ``g``
    is the usual ``1 + 2 sum_t rho_t`` for chains that sample the same distribution, and larger
    when the chains (or the two halves of one chain) disagree. Chains of unequal lengths are cut
    to the shortest as R-hat is (each keeps its first and last ``n_min // 2`` values); the ``g`` of
    those parts stands for all the values.

    Parameters
    ----------
    series : np.ndarray
        ``(N,)`` values in stored order.
    chain : np.ndarray, optional
        ``(N,)`` chain index (one chain if None).
    time : np.ndarray, optional
        ``(N,)`` time of each value; a chain's values are put in time order first.

    Returns
    -------
    float
        ``g >= 1`` (an antithetic ESS above ``N`` is not credited); 1 when there are no values or
        no chain has 4. Chains shorter than 4 values are left out of the estimate of ``g``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = np.empty((8, 5000)); x[:, 0] = rng.normal(size=8)
    >>> for t in range(1, 5000):  # AR(1) with coefficient 0.9: g = (1 + 0.9) / (1 - 0.9) = 19
    ...     x[:, t] = 0.9 * x[:, t - 1] + rng.normal(scale=np.sqrt(1 - 0.81), size=8)
    >>> g = statistical_inefficiency(x.reshape(-1), np.repeat(np.arange(8), 5000))
    >>> bool(abs(g - 19) < 2)
    True
    """
    draws = _equal_chains(series, chain, time)
    if draws is None:
        return 1.0
    return max(1.0, draws.size / multichain_ess(draws))


def _equal_chains(series: np.ndarray, chain: np.ndarray | None, time: np.ndarray | None) -> np.ndarray | None:
    """``(n_chains, 2 h)`` array: each chain in time order cut to its first and last ``h = n_min // 2`` values.

    Chains of fewer than 4 values are left out; ``None`` when none is left.
    """
    series = np.asarray(series, dtype=np.float64).reshape(-1)
    chain = np.zeros(series.size, dtype=np.int64) if chain is None else np.asarray(chain)
    order = np.lexsort((np.arange(series.size) if time is None else time, chain))
    chains = [c for c in np.split(series[order], np.flatnonzero(np.diff(chain[order])) + 1) if c.size >= 4]
    if not chains:
        return None
    half = min(c.size for c in chains) // 2
    return np.stack([np.concatenate([c[:half], c[c.size - half :]]) for c in chains])


def split_r_hat(series: np.ndarray, chain: np.ndarray | None = None, time: np.ndarray | None = None) -> float:
    """Split-R̂ of a (multi-chain) time series (Gelman–Rubin on split chains, Vehtari et al. 2021, no ranks).

    Each chain (in time order, cut to the shortest as in :func:`statistical_inefficiency`) is split
    into two halves; with ``M`` half-chains of length ``m``, ``W`` the mean half-chain variance and
    ``B / m`` the variance of the half-chain means, ``R̂ = sqrt(((m − 1)/m · W + B/m) / W)``. For
    chains that sample one distribution ``R̂² − 1 ≈ 1 / ESS_h`` (``ESS_h`` the effective samples
    per half-chain), so ``R̂ ≤`` :data:`MAX_R_HAT` ``= 1.1`` asks for about 5 effective samples per
    half-chain, 10 per chain.

    Parameters
    ----------
    series : np.ndarray
        ``(N,)`` values in stored order.
    chain : np.ndarray, optional
        ``(N,)`` chain index (one chain if None: its two halves are compared).
    time : np.ndarray, optional
        ``(N,)`` time of each value; a chain's values are put in time order first.

    Returns
    -------
    float
        ``nan`` when no chain has 4 values; ``1.0`` when every value is equal; ``inf`` when each
        half-chain is constant but their values differ.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> round(split_r_hat(rng.normal(size=4000), np.repeat(np.arange(4), 1000)), 2)  # mixed chains
    1.0
    >>> stuck = rng.normal(size=4000) + np.repeat([0.0, 0.0, 3.0, 3.0], 1000)  # two chains in another place
    >>> bool(split_r_hat(stuck, np.repeat(np.arange(4), 1000)) > 1.5)
    True
    """
    draws = _equal_chains(series, chain, time)
    if draws is None:
        return math.nan
    half = draws.shape[1] // 2
    halves = np.concatenate([draws[:, :half], draws[:, half:]])
    within = float(halves.var(axis=1, ddof=1).mean())
    between = half * float(halves.mean(axis=1).var(ddof=1))
    if within == 0.0:
        return 1.0 if between == 0.0 else math.inf
    return math.sqrt(((half - 1) / half * within + between / half) / within)


def _chain_weight_shares(samples: SampleSet) -> np.ndarray:
    """Each chain's share of the total weight (finite log-weights)."""
    _, index = np.unique(samples.chain, return_inverse=True)
    w = np.exp(samples.log_weights - np.max(samples.log_weights))
    totals = np.bincount(index, weights=w)
    return totals / totals.sum()


def replica_error(influence: np.ndarray, chain: np.ndarray) -> float:
    """Cluster-robust standard error of a linearised estimator over independent replicas.

    ``SE^2 = R / (R - 1) * sum_r S_r^2`` with ``S_r = sum_{i in r} psi_i / n`` (``psi`` has mean
    zero): the sandwich / jackknife variance with the replicas as clusters, valid however the
    samples within a replica are correlated. (:func:`estimate_error` floors it at the
    independent-sample error.)

    Parameters
    ----------
    influence : np.ndarray
        ``(N,)`` influence series ``psi`` of the estimator (mean zero).
    chain : np.ndarray
        ``(N,)`` replica index.

    Returns
    -------
    float
        The standard error; ``nan`` with fewer than 2 replicas.

    Examples
    --------
    >>> psi = np.array([1.0, 1.0, -1.0, -1.0])  # two replicas, each of two identical copies
    >>> replica_error(psi, np.array([0, 0, 1, 1]))
    1.0
    """
    influence = np.asarray(influence, dtype=np.float64).reshape(-1)
    labels, index = np.unique(np.asarray(chain), return_inverse=True)
    if labels.size < 2:
        return math.nan
    totals = np.bincount(index, weights=influence, minlength=labels.size) / influence.size
    return math.sqrt(labels.size / (labels.size - 1) * float(totals @ totals))


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


def _replica_uncertainty(samples: SampleSet, influence: np.ndarray, n_chains: int) -> Uncertainty:
    """Between-replica error of weighted chains (SMC), flagged through ``g`` when one replica holds the weight."""
    n = influence.size
    variance = float(np.var(influence, ddof=1))
    error = max(replica_error(influence, samples.chain), math.sqrt(variance / n))
    g = error**2 * n / variance if variance > 0 else 1.0
    shares = _chain_weight_shares(samples)
    effective_chains = 1.0 / float(shares @ shares)
    if effective_chains < MIN_EFFECTIVE_CHAINS:
        g = max(g, ess(samples.log_weights) / effective_chains)
        error = max(error, math.sqrt(variance * g / n))
        return Uncertainty(error, g, f"weight in {effective_chains:.2g} of {n_chains} chains: no other chain checks it")
    return Uncertainty(error, g, f"spread of {n_chains} replicas")


def estimate_error(
    samples: SampleSet,
    statistic: Callable[[np.ndarray], float],
    influence: np.ndarray,
    *,
    error: str = "analytic",
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
    error : {"analytic", "bootstrap"}
        Method for independent samples; correlated samples always use their own (the bootstrap
        of single samples would ignore the correlation).
    n_bootstrap, seed : int
        Bootstrap settings.

    Returns
    -------
    Uncertainty
        For unweighted correlated samples whose influence series is constant (every chain gives
        the same value), the error is 0, the inefficiency ``n`` (one effective sample: the chains
        may never have moved) and ``problem`` says so (:data:`CONSTANT_CHAINS`); when the split-R̂
        of their influence series exceeds :data:`MAX_R_HAT`, ``problem`` says the chains disagree.

    Examples
    --------
    >>> chains = SampleSet(np.ones((8, 1)), np.zeros(8), chain=np.repeat([0, 1], 4), metadata={"correlated": True})
    >>> estimate_error(chains, lambda idx: 0.0, np.zeros(8)).problem == CONSTANT_CHAINS
    True
    >>> samples = SampleSet(np.zeros((4, 1)), np.zeros(4))
    >>> psi = np.array([1.0, -1.0, 1.0, -1.0])
    >>> round(estimate_error(samples, lambda idx: 0.0, psi).error, 4)  # sqrt(4/3) / sqrt(4)
    0.5774
    """
    if error not in ERROR_METHODS:
        raise ValueError(f"error must be one of {ERROR_METHODS}, got {error!r}")
    n = len(samples)
    influence = np.asarray(influence, dtype=np.float64)
    if n < 2:
        return Uncertainty(math.inf, 1.0, "fewer than 2 samples")
    if samples.correlated:
        n_chains = 1 if samples.chain is None else np.unique(samples.chain).size
        if samples.is_weighted and n_chains >= 2:
            return _replica_uncertainty(samples, influence, n_chains)
        if np.ptp(influence) == 0.0:
            return Uncertainty(0.0, float(n), f"no fluctuation in {n_chains} chains",
                               CONSTANT_CHAINS)
        g = statistical_inefficiency(influence, samples.chain, samples.time)
        se = math.sqrt(float(np.var(influence, ddof=1)) * g / n)
        r_hat = split_r_hat(influence, samples.chain, samples.time)
        problem = (f"the chains disagree (split R-hat {r_hat:.3g} > {MAX_R_HAT}): the effective sample size "
                   "behind the error bar rests on too few transitions to be trusted" if r_hat > MAX_R_HAT else "")
        return Uncertainty(se, g, f"autocorrelation of {n_chains} split chains (g={g:.3g}, R-hat {r_hat:.3g})",
                           problem)
    if error == "bootstrap":
        se = bootstrap_error(statistic, n, n_bootstrap=n_bootstrap, seed=seed)
        return Uncertainty(se, 1.0, f"bootstrap ({n_bootstrap})")
    method = "delta method" if samples.is_weighted else "standard error"
    return Uncertainty(float(np.std(influence, ddof=1)) / math.sqrt(n), 1.0, method)
