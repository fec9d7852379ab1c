"""Free-energy differences: between regions of one ensemble, and between thermodynamic states (BAR/EXP).

All free energies are reduced (in kT) and ``Delta F = F_B - F_A``.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from numpy.typing import ArrayLike

from ..samples import SampleSet
from ._observables import observable_values
from ._pymbar import import_pymbar
from .pareto import attach_pareto_k, smoothed
from .result import Estimate, mark_unreliable, require_ess
from .uncertainty import Uncertainty, estimate_error
from .weights import ess, logsumexp

StateFunction = Callable[[np.ndarray], ArrayLike]


def free_energy_difference(
    samples: SampleSet,
    in_a: StateFunction,
    in_b: StateFunction,
    *,
    error: str = "analytic",
    n_bootstrap: int = 200,
    seed: int = 0,
    min_ess: float = 10.0,
    smooth: str | None = None,
) -> Estimate:
    """``Delta F_{B-A} = -ln(P_B / P_A)`` (kT) between two regions of configuration space.

    ``P_S`` is the Boltzmann probability of region ``S``, estimated from the (weighted) samples in
    log space. Zero-weight samples are dropped first (``in_a``/``in_b`` never see them).

    Parameters
    ----------
    samples : SampleSet
        The samples and their log-weights.
    in_a, in_b : callable
        ``in_s(x) -> (M,)`` booleans on ``(M, D)`` configurations: membership of states A and B.
    error : {"analytic", "bootstrap"}
        Error of independent samples: delta method (default; influence
        ``n (p_i a_i / P_A - p_i b_i / P_B)``) or bootstrap.
    n_bootstrap, seed : int
        Bootstrap settings.
    min_ess : float
        Each state needs at least this effective number of samples (Kish ESS of the weights in
        the state, divided by the statistical inefficiency for correlated chains); otherwise the
        estimate is flagged unreliable with a :class:`LowESSWarning` naming the state.
    smooth : {None, "psis"}
        ``"psis"``: Pareto-smooth the weights first.

    Returns
    -------
    Estimate
        ``ess`` is the smaller of the two states' effective counts. A state without weight gives
        ``+inf`` (B empty), ``-inf`` (A empty) or ``nan`` (both), with an ``inf`` error.
        ``pareto_k`` as in :func:`~boltzflow.estimate.expectation` (k̂ of all the weights).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.uniform(0.0, 1.0, size=(10_000, 1))  # exp(-u) with u = 0 on [0, 1/3), ln 2 on [1/3, 1]
    >>> u = np.where(x[:, 0] < 1 / 3, 0.0, np.log(2.0))
    >>> est = free_energy_difference(SampleSet(x, u, log_weights=-u), lambda v: v[:, 0] < 1 / 3,
    ...                              lambda v: v[:, 0] >= 1 / 3)   # exact: -ln(1/3 / (1/3)) = 0
    >>> abs(est.value) < 3 * est.error
    True
    """
    keep = np.isfinite(samples.log_weights)
    kept = samples[keep]
    if keep.any():
        a = observable_values(in_a, samples, keep, "state A function").astype(bool)
        b = observable_values(in_b, samples, keep, "state B function").astype(bool)
    else:
        a = b = np.zeros(0, dtype=bool)
    log_w = smoothed(samples.log_weights, smooth)[keep]
    log_a, log_b = logsumexp(log_w[a]), logsumexp(log_w[b])
    value = log_a - log_b
    if math.isfinite(value):
        m = len(kept)

        def statistic(idx: np.ndarray) -> float:
            lw = smoothed(kept.log_weights[idx], smooth)
            return logsumexp(lw[a[idx]]) - logsumexp(lw[b[idx]])

        influence = m * (np.exp(log_w - log_a) * a - np.exp(log_w - log_b) * b)
        uncertainty = estimate_error(kept, statistic, influence, error=error, n_bootstrap=n_bootstrap, seed=seed)
    else:
        uncertainty = Uncertainty(math.inf, 1.0, "no error (a state has no weight)")
    state_ess = {"A": ess(log_w[a]) / uncertainty.inefficiency, "B": ess(log_w[b]) / uncertainty.inefficiency}
    estimate = Estimate(
        value,
        uncertainty.error,
        ess=min(state_ess.values()),
        n=len(samples),
        method=f"log ratio of state weights{', PSIS' if smooth else ''}, {uncertainty.method}",
    )
    problems = [uncertainty.problem] if uncertainty.problem else []
    problems += [
        f"state {name} has no sample with nonzero weight" if e == 0
        else f"state {name} has only {e:.3g} effective samples (< min_ess={min_ess:g})"
        for name, e in state_ess.items()
        if e < min_ess
    ]
    if problems:
        empty = min(state_ess.values()) == 0
        estimate = mark_unreliable(estimate, "Delta F: " + "; ".join(problems), empty=empty)
    return attach_pareto_k(estimate, samples.log_weights, correlated=samples.correlated, what="Delta F",
                           smoothed=smooth is not None)


def _work(name: str, w: ArrayLike, allow_inf: bool) -> np.ndarray:
    w = np.asarray(w, dtype=np.float64).reshape(-1)
    if w.size == 0:
        raise ValueError(f"{name} is empty")
    bad = np.isnan(w) | np.isneginf(w)
    if not allow_inf:
        bad |= np.isposinf(w)
    if bad.any():
        allowed = "finite or +inf" if allow_inf else "finite"
        raise ValueError(f"{name} must be {allowed} reduced work values; {np.count_nonzero(bad)} are not")
    return w


def exp_average(w: ArrayLike, *, min_ess: float = 10.0) -> Estimate:
    """Exponential averaging (Zwanzig / EXP): ``Delta F = -ln <exp(-w)>_A`` via ``pymbar.exp``.

    Parameters
    ----------
    w : array_like
        Reduced work ``u_B(x) - u_A(x)`` on independent samples ``x`` of state A; ``+inf`` for
        configurations that state B forbids.
    min_ess : float
        Below this Kish effective sample size of the weights ``exp(-w)`` the estimate is flagged
        unreliable (EXP is then biased and its error bar meaningless).

    Returns
    -------
    Estimate
        ``Delta F = F_B - F_A`` with pymbar's delta-method error, and the Pareto k̂ of the weights
        ``exp(-w)`` (flagged above :func:`~boltzflow.estimate.pareto.pareto_k_threshold`).

    Examples
    --------
    >>> w = np.random.default_rng(0).normal(1.0, 0.5, size=5000)  # Gaussian work: Delta F = 1 - 0.5^2 / 2
    >>> est = exp_average(w)
    >>> abs(est.value - 0.875) < 3 * est.error, est.pareto_k < 0.5
    (True, True)
    """
    w = _work("w", w, allow_inf=True)
    n_eff = ess(-w)
    value, error = math.nan, math.inf
    if n_eff > 0:
        with np.errstate(divide="ignore", invalid="ignore"):
            result = import_pymbar().exp(w)
        value, error = result["Delta_f"], result["dDelta_f"]
    estimate = require_ess(Estimate(value, error, ess=n_eff, n=w.size, method="EXP (pymbar)"), min_ess, "EXP")
    return attach_pareto_k(estimate, -w, correlated=False, what="EXP")


def bar(w_forward: ArrayLike, w_reverse: ArrayLike) -> Estimate:
    """Bennett acceptance ratio via ``pymbar.bar``.

    Parameters
    ----------
    w_forward : array_like
        Reduced work ``u_B(x) - u_A(x)`` on independent samples ``x`` of state A (finite).
    w_reverse : array_like
        Reduced work ``u_A(x) - u_B(x)`` on independent samples ``x`` of state B (finite).

    Returns
    -------
    Estimate
        ``Delta F = F_B - F_A`` with BAR's asymptotic error; flagged unreliable (with a
        :class:`LowESSWarning`) when pymbar fails to converge or returns a non-finite result,
        which happens when the two states do not overlap.
    """
    w_f = _work("w_forward", w_forward, allow_inf=False)
    w_r = _work("w_reverse", w_reverse, allow_inf=False)
    pymbar = import_pymbar()
    n = w_f.size + w_r.size
    try:
        with np.errstate(divide="ignore", invalid="ignore"):
            result = pymbar.bar(w_f, w_r)
    except (pymbar.utils.BoundsError, pymbar.utils.ConvergenceError) as err:
        failed = Estimate(math.nan, math.inf, n=n, method="BAR (pymbar)")
        return mark_unreliable(failed, f"BAR failed (states do not overlap?): {err}", empty=True)
    estimate = Estimate(result["Delta_f"], result["dDelta_f"], n=n, method="BAR (pymbar)")
    if not (math.isfinite(estimate.value) and math.isfinite(estimate.error)):
        return mark_unreliable(estimate, "BAR gave a non-finite result (states do not overlap?)", empty=True)
    return estimate


def free_energy_difference_between_states(
    u_a_on_a: ArrayLike, u_b_on_a: ArrayLike, u_a_on_b: ArrayLike, u_b_on_b: ArrayLike
) -> Estimate:
    """``Delta F = F_B - F_A`` between two thermodynamic states by BAR, from samples of each.

    Parameters
    ----------
    u_a_on_a, u_b_on_a : array_like
        Reduced energies of state A and state B on independent samples of A.
    u_a_on_b, u_b_on_b : array_like
        Reduced energies of state A and state B on independent samples of B.

    Returns
    -------
    Estimate
        See :func:`bar`. Samples whose energy in their own state is not finite (failed) are
        dropped; an infinite energy in the other state is rejected (BAR cannot use it).

    Notes
    -----
    For two temperatures of one system, ``u_S = U / (k_B T_S)``. Correlated samples (MD) must be
    subsampled first (e.g. ``pymbar.timeseries.subsample_correlated_data``): BAR assumes
    independent samples.
    """
    arrays = [np.asarray(u, dtype=np.float64).reshape(-1) for u in (u_a_on_a, u_b_on_a, u_a_on_b, u_b_on_b)]
    aa, ba, ab, bb = arrays
    if aa.size != ba.size or ab.size != bb.size:
        raise ValueError("energies of the same samples must have the same length")
    on_a, on_b = np.isfinite(aa), np.isfinite(bb)
    return bar(ba[on_a] - aa[on_a], ab[on_b] - bb[on_b])
