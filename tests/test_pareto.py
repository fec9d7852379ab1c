"""Pareto k̂ and PSIS: against arviz-stats on the same weights, and against known tail shapes."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from arviz_stats.base import array_stats
from scipy.stats import genpareto

from boltzflow.estimate import (
    HeavyTailedWeightsWarning,
    LowESSWarning,
    expectation,
    format_table,
    free_energy_difference,
    free_energy_profile,
    log_partition_function,
    summarize,
)
from boltzflow.estimate.pareto import (
    fit_pareto_tail,
    pareto_k,
    pareto_k_threshold,
    psis_log_weights,
    tail_length,
)
from boltzflow.estimate.weights import normalized_log_weights
from boltzflow.samples import SampleSet

SEEDS = range(5)


def gpd_log_weights(k: float, n: int, seed: int) -> np.ndarray:
    return np.log(genpareto(k).rvs(n, random_state=seed))


def student_t_log_weights(nu: float, n: int, seed: int) -> np.ndarray:
    """``log |t_nu|``: the weights' tail index is ``nu``, so ``k = 1 / nu``."""
    return np.log(np.abs(np.random.default_rng(seed).standard_t(nu, n)))


def gaussian_ratio(sigma: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draws of q = N(0, 1) weighted to p = N(0, sigma^2).

    ``w ∝ exp(x^2 (1 - 1/sigma^2) / 2)`` has tail index ``1 / (1 - 1/sigma^2)``, so ``k = 1 - 1/sigma^2``.
    """
    x = np.random.default_rng(seed).normal(size=(n, 1))
    return x, 0.5 * x[:, 0] ** 2 * (1.0 - 1.0 / sigma**2)


# ----------------------------------------------------------------------------- the fit
@pytest.mark.parametrize("n", [60, 1000, 20_000])
@pytest.mark.parametrize(
    "make", [lambda n, s: gpd_log_weights(0.7, n, s), lambda n, s: student_t_log_weights(2.0, n, s),
             lambda n, s: np.random.default_rng(s).normal(0.0, 2.0, n)],
    ids=["gpd", "student-t", "lognormal"],
)
def test_matches_arviz_psis(make, n: int) -> None:
    """Same tail length, same Zhang–Stephens fit with the weak prior, same smoothed weights as arviz-stats."""
    for seed in SEEDS:
        log_w = make(n, seed) + 300.0  # far outside float range as weights: work in log space
        smoothed_ref, k_ref = array_stats.psislw(-(log_w - 300.0), r_eff=1)  # arviz takes -log w
        assert pareto_k(log_w) == pytest.approx(float(k_ref), abs=1e-9)
        assert fit_pareto_tail(log_w).n_tail == tail_length(n)
        mine = normalized_log_weights(psis_log_weights(log_w))
        assert np.allclose(mine, smoothed_ref, atol=1e-9)


@pytest.mark.parametrize("k", [0.3, 0.7, 1.2])
def test_exact_generalized_pareto_draws(k: float) -> None:
    estimates = np.array([pareto_k(gpd_log_weights(k, 20_000, seed)) for seed in SEEDS])
    assert abs(estimates.mean() - k) < 0.08, estimates
    assert np.all(np.abs(estimates - k) < 0.2), estimates


@pytest.mark.parametrize("nu", [1.0, 2.0, 4.0])
def test_student_t_weights_have_k_one_over_nu(nu: float) -> None:
    estimates = np.array([pareto_k(student_t_log_weights(nu, 20_000, seed)) for seed in SEEDS])
    assert abs(estimates.mean() - 1.0 / nu) < 0.1, estimates


def test_lognormal_weights_are_light_tailed_and_gaussian_ratios_have_known_k() -> None:
    for sigma, bound in ((0.5, 0.25), (1.0, 0.45)):
        estimates = [pareto_k(np.random.default_rng(seed).normal(0.0, sigma, 20_000)) for seed in SEEDS]
        assert max(estimates) < bound, estimates
    for sigma in (1.5, 2.0, 3.0):
        estimates = np.array([pareto_k(gaussian_ratio(sigma, 20_000, seed)[1]) for seed in SEEDS])
        assert abs(estimates.mean() - (1.0 - 1.0 / sigma**2)) < 0.1, (sigma, estimates)


def test_agrees_with_scipy_maximum_likelihood_on_a_large_sample() -> None:
    for seed in range(3):
        log_w = gpd_log_weights(0.4, 200_000, seed)
        m = tail_length(log_w.size)
        top = np.sort(np.exp(log_w))[-(m + 1):]
        k_mle = genpareto.fit(top[1:] - top[0], floc=0.0)[0]
        assert pareto_k(log_w) == pytest.approx(k_mle, abs=0.03)


def test_threshold_tail_length_and_degenerate_cases() -> None:
    assert pareto_k_threshold(100) == pytest.approx(0.5)
    assert pareto_k_threshold(1000) == pytest.approx(1 - 1 / 3)
    assert pareto_k_threshold(10**6) == 0.7
    assert tail_length(100) == 20 and tail_length(10_000) == 300
    assert math.isnan(pareto_k(np.random.default_rng(0).normal(size=40)))  # tail of 8 < 10
    assert math.isnan(pareto_k(np.zeros(1000)))  # equal weights: no tail
    log_w = student_t_log_weights(2.0, 5000, 0)
    assert pareto_k(log_w + 1e4) == pytest.approx(pareto_k(log_w), abs=1e-9)  # log-space invariance


def test_zero_weights_count_as_draws_but_never_reach_the_tail() -> None:
    log_w = student_t_log_weights(2.0, 5000, 1)
    failed = np.concatenate([log_w, np.full(500, -np.inf)])
    assert fit_pareto_tail(failed).n_tail == tail_length(5500)  # S counts every draw
    assert pareto_k(failed) == pytest.approx(pareto_k(log_w), abs=0.05)
    few = np.concatenate([log_w[:30], np.full(5000, -np.inf)])
    assert fit_pareto_tail(few).n_tail == 29  # all nonzero weights but the smallest
    assert math.isnan(pareto_k(np.concatenate([log_w[:10], np.full(5000, -np.inf)])))
    smoothed = psis_log_weights(failed)
    assert np.all(smoothed[5000:] == -np.inf) and smoothed.max() <= failed.max()


# ----------------------------------------------------------------------------- the estimators
def test_heavy_tailed_independent_weights_are_flagged_whatever_the_ess() -> None:
    x, log_w = gaussian_ratio(3.0, 5000, seed=0)  # k = 0.89
    samples = SampleSet(x, 0.5 * x[:, 0] ** 2, log_weights=log_w,
                        metadata={"correlated": False, "normalized_proposal": True})
    with pytest.warns(HeavyTailedWeightsWarning, match=r"Pareto k̂ = 0\.\d\d > 0\.50: the weights are heavy-tailed"):
        est = expectation(samples, lambda v: v[:, 0] ** 2)
    assert est.ess > 50 and not est.reliable and est.pareto_k > 0.7
    assert issubclass(HeavyTailedWeightsWarning, LowESSWarning)
    with pytest.warns(HeavyTailedWeightsWarning):
        others = [log_partition_function(samples), free_energy_difference(samples, lambda v: v[:, 0] < 0,
                                                                            lambda v: v[:, 0] > 0)]
    assert all(not e.reliable and e.pareto_k == est.pareto_k for e in others)
    with pytest.warns(HeavyTailedWeightsWarning, match="free-energy profile"):
        profile = free_energy_profile(samples, x[:, 0], np.linspace(-3, 3, 7))
    assert profile.pareto_k == est.pareto_k

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LowESSWarning)
        summary = summarize(samples, {"x": lambda v: v[:, 0]})
    assert summary["pareto_k"] == est.pareto_k and summary["pareto_k_threshold"] == 0.5
    assert "!! Pareto k̂" in format_table(summary) and "!! <x>" in format_table(summary)


def test_moderate_tails_flag_raw_weights_but_not_psis_and_light_tails_are_good() -> None:
    """0.5 < k̂ < 0.7: the raw weights' variance is infinite (the error bar assumes it finite), PSIS's is not."""
    x, log_w = gaussian_ratio(1.5, 20_000, seed=3)  # k = 0.56
    samples = SampleSet(x, np.zeros(len(x)), log_weights=log_w)
    with pytest.warns(HeavyTailedWeightsWarning, match=r"> 0\.50: the weights' variance is likely infinite"):
        est = expectation(samples, lambda v: v[:, 0] ** 2)
    assert 0.5 < est.pareto_k < 0.7 and not est.reliable and "smooth='psis'" in est.message
    smoothed = expectation(samples, lambda v: v[:, 0] ** 2, smooth="psis")
    assert smoothed.reliable and smoothed.pareto_k == est.pareto_k
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LowESSWarning)
        assert "!! Pareto k̂" in format_table(summarize(samples))
    x, log_w = gaussian_ratio(1.1, 20_000, seed=3)  # k = 0.17
    light = summarize(SampleSet(x, np.zeros(len(x)), log_weights=log_w))
    assert light["pareto_k"] < 0.5 and "good (unreliable above 0.50)" in format_table(light)


def test_unweighted_sets_have_no_k_and_correlated_weighted_sets_are_not_flagged_on_it() -> None:
    x = np.random.default_rng(0).normal(size=(4000, 1))
    plain = expectation(SampleSet(x, np.zeros(4000)), lambda v: v[:, 0])
    assert plain.pareto_k is None and "pareto_k" not in summarize(SampleSet(x, np.zeros(4000)))
    _, log_w = gaussian_ratio(3.0, 4000, seed=0)
    replicas = SampleSet(x, np.zeros(4000), log_weights=log_w, chain=np.repeat(np.arange(8), 500),
                         time=np.tile(np.arange(500), 8), metadata={"correlated": True})
    with warnings.catch_warnings():
        warnings.simplefilter("error", HeavyTailedWeightsWarning)
        est = expectation(replicas, lambda v: v[:, 0])
    assert est.pareto_k > 0.7 and "heavy-tailed" not in est.message
    assert "not a flag" in format_table(summarize(replicas))


def test_psis_lowers_the_error_of_heavy_tailed_estimates() -> None:
    """k = 0.75: PSIS trades a small bias for a smaller root-mean-square error (E x^2 = 4 exactly)."""
    raw, smoothed = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LowESSWarning)
        for seed in range(40):
            x, log_w = gaussian_ratio(2.0, 2000, seed)
            samples = SampleSet(x, np.zeros(len(x)), log_weights=log_w)
            raw.append(expectation(samples, lambda v: v[:, 0] ** 2).value)
            est = expectation(samples, lambda v: v[:, 0] ** 2, smooth="psis")
            assert "PSIS" in est.method
            smoothed.append(est.value)
    rmse = [math.sqrt(np.mean((np.array(v) - 4.0) ** 2)) for v in (raw, smoothed)]
    assert rmse[1] < 0.8 * rmse[0], rmse
    with pytest.raises(ValueError, match="smooth"):
        expectation(samples, lambda v: v[:, 0], smooth="truncate")


def test_estimate_command_prints_and_writes_k(tmp_path, capsys) -> None:
    import json

    from boltzflow.cli import main

    x, log_w = gaussian_ratio(3.0, 5000, seed=0)
    SampleSet(x, 0.5 * x[:, 0] ** 2, log_weights=log_w, metadata={"correlated": False}).save(tmp_path / "run")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LowESSWarning)
        assert main(["estimate", str(tmp_path / "run"), "--json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["pareto_k"] == pytest.approx(pareto_k(log_w)) and summary["pareto_k_threshold"] == 0.5
        assert summary["mean_energy"]["pareto_k"] == summary["pareto_k"] and not summary["mean_energy"]["reliable"]
        assert main(["estimate", str(tmp_path / "run"), "--json", "--error", "bootstrap", "--n-bootstrap", "20"]) == 0
        assert json.loads(capsys.readouterr().out)["mean_energy"]["method"].endswith("bootstrap (20)")
        assert main(["estimate", str(tmp_path / "run")]) == 0
    assert "!! Pareto k̂" in capsys.readouterr().out
