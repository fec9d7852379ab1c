"""Tests of boltzflow.estimate: values against exact results, and error bars that are honest."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from scipy import integrate

from boltzflow.estimate import (
    Estimate,
    LowESSWarning,
    bar,
    ess,
    exp_average,
    expectation,
    format_table,
    free_energy_difference,
    free_energy_difference_between_states,
    free_energy_profile,
    log_partition_function,
    normalized_log_weights,
    multichain_ess,
    relative_ess,
    statistical_inefficiency,
    summarize,
)
from boltzflow.samples import SampleSet

SEEDS = range(30)


def assert_calibrated(estimates: list[Estimate], exact: float) -> None:
    """Across seeds, the reported errors must match the actual scatter around the exact value."""
    values = np.array([e.value for e in estimates])
    errors = np.array([e.error for e in estimates])
    assert np.all(np.isfinite(errors)) and np.all(errors > 0)
    z = (values - exact) / errors
    assert np.mean(np.abs(z) < 2.0) >= 0.8, z
    assert 0.3 < np.mean(z**2) < 2.5, z


def importance_samples(x: np.ndarray, u: np.ndarray, log_q: np.ndarray) -> SampleSet:
    return SampleSet(x, u, log_weights=-u - log_q, metadata={"correlated": False, "normalized_proposal": True})


def gaussian_proposal(seed: int, n: int, dim: int, sigma_q: float) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(seed).normal(0.0, sigma_q, size=(n, dim))
    log_q = np.sum(-0.5 * x**2 / sigma_q**2 - 0.5 * math.log(2 * math.pi * sigma_q**2), axis=1)
    return x, log_q


def gaussian_target(seed: int, mu: np.ndarray, sigma: np.ndarray, n: int = 1000) -> SampleSet:
    x, log_q = gaussian_proposal(seed, n, len(mu), sigma_q=2.0)
    u = np.sum((x - mu) ** 2 / (2 * sigma**2), axis=1)
    return importance_samples(x, u, log_q)


def double_well_u(x: np.ndarray) -> np.ndarray:
    return -0.5 * x - 6.0 * x**2 + x**4


def double_well(seed: int, n: int = 4000) -> SampleSet:
    x, log_q = gaussian_proposal(seed, n, 1, sigma_q=1.5)
    return importance_samples(x, double_well_u(x[:, 0]), log_q)


def in_left(x: np.ndarray) -> np.ndarray:
    return x[:, 0] < 0


def in_right(x: np.ndarray) -> np.ndarray:
    return x[:, 0] > 0


def first_coordinate(x: np.ndarray) -> np.ndarray:
    return x[:, 0]


# ----------------------------------------------------------------------------- weights / ESS
def test_kish_ess_hand_computed_cases() -> None:
    assert ess(np.zeros(7)) == pytest.approx(7.0)
    assert ess(np.array([0.0, -np.inf, -np.inf])) == pytest.approx(1.0)
    assert ess(np.array([0.0, 0.0, math.log(2.0), -np.inf])) == pytest.approx(16 / 6)
    assert ess(np.array([0.0, 0.0, -np.inf])) == pytest.approx(2.0)
    for offset in (1e4, -1e4):
        assert ess(np.log([1.0, 1.0, 2.0]) + offset) == pytest.approx(16 / 6)
    assert ess(np.full(3, -np.inf)) == 0.0
    assert relative_ess(np.array([0.0, 0.0, math.log(2.0), -np.inf])) == pytest.approx(16 / 24)


def test_normalized_log_weights_and_sample_set_input() -> None:
    log_w = np.log([1.0, 1.0, 2.0]) + 1e4
    assert np.exp(normalized_log_weights(log_w)) == pytest.approx([0.25, 0.25, 0.5])
    assert np.all(normalized_log_weights(np.full(2, -np.inf)) == -np.inf)
    samples = SampleSet(np.zeros((4, 1)), [0.0, 0.0, 0.0, np.inf], log_weights=np.log([1.0, 1.0, 2.0, 5.0]))
    assert ess(samples) == pytest.approx(16 / 6)  # the failed sample has zero weight
    with pytest.raises(ValueError):
        ess(np.array([0.0, np.nan]))


# ----------------------------------------------------------------------------- Estimate
def test_estimate_formatting_and_dict() -> None:
    assert str(Estimate(4.7123, 0.0812)) == "4.71 ± 0.08"
    assert str(Estimate(4.7123, 0.0123)) == "4.712 ± 0.012"
    assert str(Estimate(1.3e-249, 3e-146)) == "0 ± 3e-146"  # below the error's last digit
    assert str(Estimate(2.5e-12, 1.3e-12)) == "2.5e-12 ± 1.3e-12"
    loud = Estimate(float("nan"), float("inf"), reliable=False, message="no weight")
    assert "UNRELIABLE: no weight" in str(loud)
    assert json.loads(json.dumps(Estimate(1.0, 0.1, ess=3, n=5, method="m").to_dict()))["ess"] == 3.0


# ----------------------------------------------------------------------------- importance sampling
@pytest.mark.parametrize(
    "mu, sigma", [(np.array([1.0]), np.array([1.0])), (np.array([1.0, -0.5]), np.array([1.0, 0.7]))]
)
def test_gaussian_importance_sampling_is_calibrated(mu: np.ndarray, sigma: np.ndarray) -> None:
    sets = [gaussian_target(seed, mu, sigma) for seed in SEEDS]
    log_z = [log_partition_function(s, seed=seed) for seed, s in enumerate(sets)]
    mean_x = [expectation(s, first_coordinate, seed=seed) for seed, s in enumerate(sets)]
    assert all(e.reliable for e in log_z + mean_x)
    assert_calibrated(log_z, float(np.sum(0.5 * np.log(2 * math.pi * sigma**2))))
    assert_calibrated(mean_x, mu[0])


def test_double_well_against_quadrature() -> None:
    def weight(x: float) -> float:
        return math.exp(-double_well_u(x))

    z_left = integrate.quad(weight, -5, 0)[0]
    z_right = integrate.quad(weight, 0, 5)[0]
    z = z_left + z_right
    mean_x = integrate.quad(lambda x: x * weight(x), -5, 5, points=[0.0])[0] / z

    sets = [double_well(seed) for seed in SEEDS]
    delta_f = [free_energy_difference(s, in_left, in_right, seed=seed) for seed, s in enumerate(sets)]
    means = [expectation(s, first_coordinate, seed=seed) for seed, s in enumerate(sets)]
    log_z = [log_partition_function(s, seed=seed) for seed, s in enumerate(sets)]
    assert all(e.reliable for e in delta_f + means + log_z)
    assert_calibrated(delta_f, -math.log(z_right / z_left))
    assert_calibrated(means, mean_x)
    assert_calibrated(log_z, math.log(z))


def test_log_z_needs_a_normalised_proposal() -> None:
    samples = SampleSet(np.zeros((3, 1)), np.zeros(3), metadata={"correlated": True})
    with pytest.raises(ValueError, match="normalized_proposal"):
        log_partition_function(samples)


# ----------------------------------------------------------------------------- correlated chains
def ar1_chains(seed: int, n_chains: int = 4, length: int = 2000, rho: float = 0.9) -> SampleSet:
    rng = np.random.default_rng(seed)
    x = np.empty((n_chains, length))
    x[:, 0] = rng.normal(size=n_chains)
    noise = math.sqrt(1 - rho**2) * rng.normal(size=(n_chains, length))
    for t in range(1, length):
        x[:, t] = rho * x[:, t - 1] + noise[:, t]
    return SampleSet(
        x.reshape(-1, 1),
        0.5 * x.reshape(-1) ** 2,
        chain=np.repeat(np.arange(n_chains), length),
        time=np.tile(np.arange(length), n_chains),
        metadata={"correlated": True},
    )


def test_correlated_chains_error_uses_autocorrelation() -> None:
    sets = [ar1_chains(seed) for seed in SEEDS]
    estimates = [expectation(s, first_coordinate) for s in sets]
    assert_calibrated(estimates, 0.0)
    for s, est in zip(sets, estimates):
        naive = np.std(s.x[:, 0], ddof=1) / math.sqrt(len(s))
        assert est.error >= 2.0 * naive
        assert 0.5 < est.ess / (len(s) / 19.0) < 1.5  # g = (1 + rho) / (1 - rho) = 19
    assert np.median([est.ess for est in estimates]) == pytest.approx(len(sets[0]) / 19.0, rel=0.1)


def test_statistical_inefficiency_and_time_order() -> None:
    samples = ar1_chains(0, n_chains=2, length=20000)
    assert statistical_inefficiency(samples.x[:, 0], samples.chain) == pytest.approx(19.0, rel=0.2)
    shuffled = samples[np.random.default_rng(1).permutation(len(samples))]
    a, b = expectation(samples, first_coordinate), expectation(shuffled, first_coordinate)
    assert b.value == pytest.approx(a.value, abs=1e-12)
    assert b.error == pytest.approx(a.error, rel=1e-9)


def ar1_draws(seed: int, rho: float, n_chains: int, length: int, start: np.ndarray | None = None) -> np.ndarray:
    """``(n_chains, length)`` AR(1) chains of stationary law N(0, 1), started at ``start`` (stationary if None)."""
    rng = np.random.default_rng(seed)
    x = np.empty((n_chains, length))
    x[:, 0] = rng.normal(size=n_chains) if start is None else start
    noise = math.sqrt(1 - rho**2) * rng.normal(size=(n_chains, length))
    for t in range(1, length):
        x[:, t] = rho * x[:, t - 1] + noise[:, t]
    return x


def chain_samples(draws: np.ndarray) -> SampleSet:
    """Unweighted correlated samples of the chains ``draws (n_chains, length)`` (x = the draws)."""
    n_chains, length = draws.shape
    return SampleSet(draws.reshape(-1, 1), 0.5 * draws.reshape(-1) ** 2, chain=np.repeat(np.arange(n_chains), length),
                     time=np.tile(np.arange(length), n_chains), metadata={"correlated": True})


@pytest.mark.parametrize("rho", [-0.6, 0.0, 0.5, 0.9, 0.98])
@pytest.mark.parametrize("shape", [(1, 1001), (4, 250), (8, 33), (2, 7)])
def test_multichain_ess_matches_arviz(rho: float, shape: tuple[int, int]) -> None:
    """Split-chain ESS of the mean (Vehtari et al. 2021) equals arviz-stats' ``ess(method="mean")``."""
    array_stats = pytest.importorskip("arviz_stats.base").array_stats
    draws = ar1_draws(int(100 * rho) % 7, rho, *shape)
    shifted = draws + 0.3 * np.arange(shape[0])[:, None]  # chains with different means
    walk = np.cumsum(draws, axis=1)  # non-stationary
    for x in (draws, shifted, walk):
        expected = array_stats.ess(x, chain_axis=0, draw_axis=1, method="mean")
        assert multichain_ess(x) == pytest.approx(expected, rel=1e-8)


def test_statistical_inefficiency_is_n_over_the_multichain_ess() -> None:
    draws = ar1_draws(3, 0.8, 4, 300)
    chain, series = np.repeat(np.arange(4), 300), draws.reshape(-1)
    assert statistical_inefficiency(series, chain) == pytest.approx(1200 / multichain_ess(draws), rel=1e-12)
    # unequal lengths: every chain is cut to its first and last n_min // 2 values, as R-hat does
    lengths = [300, 251, 280, 3]  # the last chain is too short to split and is left out
    cut = [np.concatenate([d[:125], d[n - 125 : n]]) for d, n in zip(draws[:3], lengths)]
    ragged = np.concatenate([d[:n] for d, n in zip(draws, lengths)])
    g = statistical_inefficiency(ragged, np.repeat(np.arange(4), lengths))
    assert g == pytest.approx(750 / multichain_ess(np.stack(cut)), rel=1e-12)
    # antithetic chains (ESS > n) are not credited; a chain whose halves disagree is penalised
    assert statistical_inefficiency(ar1_draws(0, -0.9, 4, 500).reshape(-1), np.repeat(np.arange(4), 500)) == 1.0
    drift = np.linspace(0.0, 3.0, 2000) + np.random.default_rng(0).normal(size=2000)
    assert statistical_inefficiency(drift) > 50 and statistical_inefficiency(drift[:3]) == 1.0


def z_scores(draw_sets: list[np.ndarray]) -> np.ndarray:
    """``(mean - 0) / error`` of the mean of each set of chains (exact mean 0)."""
    estimates = [expectation(chain_samples(draws), first_coordinate) for draws in draw_sets]
    return np.array([e.value / e.error for e in estimates])


def test_short_slow_chains_get_honest_error_bars() -> None:
    """8 chains of 250 with tau ~ 100 (rho = 0.98): per-chain autocorrelation alone covered ~84 %."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LowESSWarning)  # a few runs have ESS < 10
        z = z_scores([ar1_draws(seed, 0.98, 8, 250) for seed in range(300)])
    assert np.mean(np.abs(z) < 2.0) >= 0.88, np.mean(np.abs(z) < 2.0)
    assert abs(np.mean(z)) < 0.15 and 0.6 < np.sqrt(np.mean(z**2)) < 1.3


def telegraph_draws(seed: int, n_chains: int = 8, length: int = 250, p_switch: float = 0.01) -> np.ndarray:
    """Two metastable states ``s = ±1`` (switching with probability ``p_switch`` a step) plus fast noise.

    Chains start alternately in the two states (their stationary law); the exact mean is 0. Within a
    state the values look nearly independent, so a chain's own autocorrelation hides the slow switching.
    """
    rng = np.random.default_rng(seed)
    state = np.empty((n_chains, length))
    state[:, 0] = np.tile([-1.0, 1.0], n_chains // 2)
    flips = rng.random((n_chains, length)) < p_switch
    for t in range(1, length):
        state[:, t] = np.where(flips[:, t], -state[:, t - 1], state[:, t - 1])
    return state + 0.5 * rng.normal(size=(n_chains, length))


def test_chains_started_in_different_places_of_a_slow_process_get_honest_error_bars() -> None:
    """Metastable chains started in different states (per-chain autocorrelation + spread test covered ~86 %),
    and AR(1) chains started across the distribution (-3 ... 3) that have not forgotten their starts."""
    for draw_sets in ([telegraph_draws(seed) for seed in range(300)],
                      [ar1_draws(seed, 0.99, 8, 250, start=np.linspace(-3.0, 3.0, 8)) for seed in range(300)]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LowESSWarning)  # a few runs have ESS < 10
            z = z_scores(draw_sets)
        assert np.mean(np.abs(z) < 2.0) >= 0.88, np.mean(np.abs(z) < 2.0)
        assert abs(np.mean(z)) < 0.15


# ----------------------------------------------------------------------------- failed samples
def with_failures(samples: SampleSet, n_failed: int, seed: int) -> SampleSet:
    """``samples`` in the same order, with failed draws (NaN coordinates, +inf energy) interleaved."""
    n = len(samples) + n_failed
    failed = np.zeros(n, dtype=bool)
    failed[np.random.default_rng(seed).choice(n, size=n_failed, replace=False)] = True
    x = np.full((n, samples.dim), np.nan)
    energies = np.full(n, np.inf)
    log_weights = np.zeros(n)
    x[~failed], energies[~failed], log_weights[~failed] = samples.x, samples.energies, samples.log_weights
    return SampleSet(x, energies, log_weights=log_weights, metadata=samples.metadata)


def test_failed_samples_have_zero_weight_and_count_as_draws() -> None:
    clean = double_well(0, n=2000)
    dirty = with_failures(clean, 50, seed=1)
    assert dirty.n_failed == 50 and np.isnan(dirty.x).any()

    def strict_x(x: np.ndarray) -> np.ndarray:
        assert np.isfinite(x).all(), "observable evaluated on a failed sample"
        return x[:, 0]

    def strict_left(x: np.ndarray) -> np.ndarray:
        return strict_x(x) < 0

    for estimator in (
        lambda s: expectation(s, strict_x),
        lambda s: expectation(s, s.energies),
        lambda s: free_energy_difference(s, strict_left, in_right),
    ):
        a, b = estimator(clean), estimator(dirty)
        assert (b.value, b.error, b.ess) == (a.value, a.error, a.ess)
    z_clean, z_dirty = log_partition_function(clean), log_partition_function(dirty)
    assert z_dirty.value == pytest.approx(z_clean.value + math.log(2000 / 2050), abs=1e-12)
    assert z_dirty.n == 2050


# ----------------------------------------------------------------------------- low ESS
def test_one_dominant_weight_is_unreliable() -> None:
    log_w = np.full(100, -50.0)
    log_w[0] = 0.0
    samples = SampleSet(np.arange(100.0)[:, None], np.zeros(100), log_weights=log_w)
    with pytest.warns(LowESSWarning):
        est = expectation(samples, first_coordinate)
    assert not est.reliable and est.ess < 2 and "effective samples" in est.message
    assert "UNRELIABLE" in str(est)


def test_all_zero_weights_give_nan_with_infinite_error() -> None:
    samples = SampleSet(
        np.full((5, 1), np.nan), np.full(5, np.inf), metadata={"correlated": False, "normalized_proposal": True}
    )
    with pytest.warns(LowESSWarning):
        estimates = [
            expectation(samples, first_coordinate),
            log_partition_function(samples),
            free_energy_difference(samples, in_left, in_right),
        ]
    for est in estimates:
        assert math.isnan(est.value) and est.error == math.inf and not est.reliable and est.ess == 0.0


def test_empty_state_is_flagged_by_name() -> None:
    samples = double_well(0, n=1000)
    with pytest.warns(LowESSWarning, match="state B has no sample"):
        est = free_energy_difference(samples, in_left, lambda x: x[:, 0] > 100.0)
    assert est.value == math.inf and est.error == math.inf and not est.reliable
    with pytest.warns(LowESSWarning, match="state A has only"):
        est = free_energy_difference(samples, lambda x: x[:, 0] < -2.6, in_right)
    assert not est.reliable and math.isfinite(est.value)


# ----------------------------------------------------------------------------- BAR / EXP
def harmonic_works(seed: int, k_a: float = 1.0, k_b: float = 4.0, n: int = 500) -> tuple[np.ndarray, ...]:
    """Reduced energies ``u_a(x_a), u_b(x_a), u_a(x_b), u_b(x_b)`` of two harmonic oscillators."""
    rng = np.random.default_rng(seed)
    x_a = rng.normal(0.0, 1 / math.sqrt(k_a), n)
    x_b = rng.normal(0.0, 1 / math.sqrt(k_b), n)
    return 0.5 * k_a * x_a**2, 0.5 * k_b * x_a**2, 0.5 * k_a * x_b**2, 0.5 * k_b * x_b**2


def test_bar_and_exp_on_harmonic_oscillators() -> None:
    exact = 0.5 * math.log(4.0)
    bar_estimates, exp_estimates = [], []
    for seed in SEEDS:
        aa, ba, ab, bb = harmonic_works(seed)
        bar_estimates.append(bar(ba - aa, ab - bb))
        exp_estimates.append(exp_average(ba - aa))
        assert free_energy_difference_between_states(aa, ba, ab, bb) == bar_estimates[-1]
    assert all(e.reliable for e in bar_estimates + exp_estimates)
    assert_calibrated(bar_estimates, exact)
    assert_calibrated(exp_estimates, exact)
    assert np.geterr()["over"] == "warn"  # pymbar.bar's np.seterr must not leak


def test_bar_without_overlap_is_not_confident() -> None:
    aa, ba, ab, bb = harmonic_works(0)
    with pytest.warns(LowESSWarning):
        est = bar(ba - aa + 1000.0, ab - bb + 1000.0)
    assert not est.reliable and est.error == math.inf
    with pytest.raises(ValueError):
        bar(np.array([np.inf, 1.0]), ab - bb)


# ----------------------------------------------------------------------------- report
def test_summarize_and_format_table() -> None:
    samples = double_well(3)
    observables = {"x": first_coordinate, "x^2": lambda x: x[:, 0] ** 2}
    summary = summarize(samples, observables, states=(in_left, in_right), seed=3)
    json.dumps(summary)
    assert {"n", "n_failed", "ess", "relative_ess", "mean_energy", "observables", "delta_f", "log_z"} <= set(summary)
    assert summary["ess"] == ess(samples)
    assert summary["mean_energy"] == expectation(samples, samples.energies, seed=3).to_dict()
    assert summary["observables"]["x"] == expectation(samples, first_coordinate, seed=3).to_dict()
    assert summary["delta_f"] == free_energy_difference(samples, in_left, in_right, seed=3).to_dict()
    assert summary["log_z"] == log_partition_function(samples, seed=3).to_dict()
    assert summary["state_samples"] == {"A": int(np.sum(samples.x[:, 0] < 0)), "B": int(np.sum(samples.x[:, 0] > 0))}

    table = format_table(summary)
    lines = table.splitlines()
    assert lines[0].split() == ["quantity", "value", "error", "notes"]
    for label in ("<x>", "<x^2>", "Delta F B-A (kT)", "log Z", "ESS (Kish)"):
        assert label in table
    assert "!!" not in table

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LowESSWarning)
        poor = summarize(samples[:3], {"x": first_coordinate})
    assert "!! <x>" in format_table(poor)
    assert "log_z" in poor and "delta_f" not in poor


def test_a_state_the_run_never_visited_flags_every_estimate() -> None:
    """8 chains that all stayed in the left well of the double well: no error bar can show the right one."""
    draws = -1.75 + 0.3 * ar1_draws(0, 0.9, 8, 500)  # never near x > 0 (6 sigma away)
    stuck = SampleSet(draws.reshape(-1, 1), double_well_u(draws.reshape(-1)), chain=np.repeat(np.arange(8), 500),
                      time=np.tile(np.arange(500), 8), metadata={"correlated": True})
    alone = expectation(stuck, first_coordinate)
    assert alone.reliable and alone.error < 0.05  # the chains agree: a confident <x> of the left well alone
    with pytest.warns(LowESSWarning, match="state B has no sample: the run never visited it"):
        summary = summarize(stuck, {"x": first_coordinate}, states=(in_left, in_right))
    assert summary["state_samples"] == {"A": 4000, "B": 0}
    flagged = [summary["mean_energy"], summary["observables"]["x"], summary["delta_f"]]
    assert not any(est["reliable"] for est in flagged)
    assert all(est["message"].startswith("state B has no sample") for est in flagged)
    assert "; Delta F: state B has no sample with nonzero weight" in summary["delta_f"]["message"]  # own reason kept
    assert summary["observables"]["x"]["value"] == alone.value and summary["observables"]["x"]["error"] == alone.error
    table = format_table(summary)
    assert "!! <u> (kT)" in table and "!! <x>" in table and "never visited it" in table
    with pytest.warns(LowESSWarning, match="states A and B have no sample: the run visited neither"):
        summarize(stuck, states=(lambda x: x[:, 0] < -5, lambda x: x[:, 0] > 5))

    # a visit, however short, is data: the other estimates are not flagged for it (Delta F is, for its ESS)
    visited = stuck.x.copy()
    visited[100, 0] = 1.7
    briefly = SampleSet(visited, double_well_u(visited[:, 0]), chain=stuck.chain, time=stuck.time,
                        metadata={"correlated": True})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LowESSWarning)
        summary = summarize(briefly, {"x": first_coordinate}, states=(in_left, in_right))
    assert summary["state_samples"]["B"] == 1 and summary["mean_energy"]["reliable"]
    assert summary["observables"]["x"]["reliable"] and not summary["delta_f"]["reliable"]

    # weighted samples: a state whose samples all have zero weight counts as unvisited
    weighted = double_well(0)
    log_w = np.where(weighted.x[:, 0] > 0, -np.inf, weighted.log_weights)
    zero_b = SampleSet(weighted.x, weighted.energies, log_weights=log_w, metadata=weighted.metadata)
    with pytest.warns(LowESSWarning, match="state B has no sample"):
        summary = summarize(zero_b, states=(in_left, in_right))
    assert summary["state_samples"]["B"] == 0
    assert not summary["mean_energy"]["reliable"] and not summary["log_z"]["reliable"]


def test_chains_stuck_in_different_states_inflate_the_error():
    """8 well-mixed-looking chains, half stuck around 0 and half around 3: the error must show it.

    The multi-chain autocorrelation sees the chains' disagreement (``B`` in ``var+``): the error is
    then about the spread of the chain means, each chain counting as about one sample.
    """
    rng = np.random.default_rng(0)
    n_per, centres = 1000, np.repeat([0.0, 3.0], 4)
    x = np.concatenate([c + rng.normal(size=n_per) for c in centres])[:, None]
    chain = np.repeat(np.arange(8), n_per)
    samples = SampleSet(x=x, energies=np.zeros(x.shape[0]), chain=chain, metadata={"correlated": True})
    est = expectation(samples, lambda x: x[:, 0])
    naive = x.std() / np.sqrt(x.shape[0])
    assert "autocorrelation of 8 split chains" in est.method
    assert est.error > 10 * naive
    spread = np.std(x.reshape(8, n_per).mean(1), ddof=1) / np.sqrt(8)
    assert est.error == pytest.approx(spread, rel=0.15)
    assert est.ess < 16  # two halves per chain
    # the summary's chain diagnostics see it too, and the table flags it
    summary = summarize(samples, observables={"x": lambda v: v[:, 0]})
    assert summary["chain_diagnostics"]["n_chains"] == 8 and summary["chain_diagnostics"]["x"]["r_hat"] > 1.5
    assert "!! chains" in format_table(summary) and "chains disagree" in format_table(summary)
    mixed = SampleSet(x=rng.normal(size=(8000, 1)), energies=np.zeros(8000), chain=chain, metadata={"correlated": True})
    assert "!! chains" not in format_table(summarize(mixed, observables={"x": lambda v: v[:, 0]}))



def test_chains_that_disagree_are_flagged_by_r_hat_and_flag_the_whole_run():
    """Split R-hat above 1.1 flags a chain estimate; in ``summarize`` it flags every estimate of the run.

    Chains that agree on ``y`` (each is white noise) but not on ``x`` (half of them around 3): the
    estimate of ``<x>`` is flagged by its own R-hat, ``<y>`` and ``<u>`` only by the run's rule, since
    chains that have not converged in one quantity may bias the others through it.
    """
    rng = np.random.default_rng(1)
    n_per = 500
    chain = np.repeat(np.arange(8), n_per)
    x = np.stack([rng.normal(size=8 * n_per) + np.repeat([0.0, 3.0], 4 * n_per), rng.normal(size=8 * n_per)], 1)
    samples = SampleSet(x=x, energies=0.5 * x[:, 1] ** 2, chain=chain, metadata={"correlated": True})
    with pytest.warns(LowESSWarning, match="chains disagree"):
        est = expectation(samples, lambda v: v[:, 0])
    assert not est.reliable and "R-hat" in est.message
    assert expectation(samples, lambda v: v[:, 1]).reliable  # its chains agree
    with pytest.warns(LowESSWarning, match="have not converged: split R-hat of x"):
        summary = summarize(samples, observables={"x": lambda v: v[:, 0], "y": lambda v: v[:, 1]})
    assert not summary["observables"]["y"]["reliable"] and not summary["mean_energy"]["reliable"]
    y = rng.normal(size=(8 * n_per, 2))
    mixed = SampleSet(x=y, energies=0.5 * (y**2).sum(1), chain=chain, metadata={"correlated": True})
    with warnings.catch_warnings():
        warnings.simplefilter("error", LowESSWarning)
        summary = summarize(mixed, observables={"x": lambda v: v[:, 0]})
    assert summary["observables"]["x"]["reliable"] and summary["chain_diagnostics"]["x"]["r_hat"] < 1.1

def test_free_energy_profile_of_reweighted_gaussian_matches_exact_bins():
    from scipy.stats import norm

    rng = np.random.default_rng(3)
    x = rng.normal(scale=1.5, size=(40_000, 1))  # proposal N(0, 1.5²), target N(0, 1)
    log_w = -0.5 * x[:, 0] ** 2 - norm.logpdf(x[:, 0], scale=1.5)
    samples = SampleSet(x=x, energies=0.5 * x[:, 0] ** 2, log_weights=log_w)
    edges = np.linspace(-2.5, 2.5, 26)
    profile = free_energy_profile(samples, lambda v: v[:, 0], edges)
    exact = -np.log(np.diff(norm.cdf(edges)) / np.diff(edges))
    z = profile.difference(exact) / profile.error
    assert np.mean(z**2) < 2.0 and np.abs(z).max() < 4.0  # errors are honest, bins agree
    assert profile.probability.sum() == pytest.approx(norm.cdf(2.5) - norm.cdf(-2.5), abs=0.01)
    assert np.allclose(profile.centres, 0.5 * (edges[1:] + edges[:-1])) and profile.free_energy.min() == 0


def test_free_energy_profile_pools_multivalued_observables_and_rejects_bad_input():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3000, 2))
    samples = SampleSet(x=x, energies=np.zeros(3000))
    edges = np.linspace(-3, 3, 13)
    pooled = free_energy_profile(samples, lambda v: v, edges)
    stacked = SampleSet(x=x.reshape(-1, 1), energies=np.zeros(6000))
    single = free_energy_profile(stacked, lambda v: v[:, 0], edges)
    assert np.allclose(pooled.probability, single.probability)
    assert np.allclose(pooled.free_energy, single.free_energy)
    with pytest.raises(ValueError, match="increasing"):
        free_energy_profile(samples, lambda v: v[:, 0], [1.0, 0.0])
    with pytest.raises(ValueError, match="not finite"):
        free_energy_profile(samples, lambda v: np.full(len(v), np.nan), edges)
    with pytest.raises(ValueError, match="no bin"):
        pooled.difference(np.full(12, np.inf))


def test_weighted_chains_whose_weight_sits_in_one_chain_are_flagged():
    """SMC replicas carry their evidence in the weights: one replica holding all of it cannot be checked."""
    rng = np.random.default_rng(5)
    chain = np.repeat(np.arange(8), 50)
    x = rng.normal(size=(400, 1))
    shared = SampleSet(x=x, energies=np.zeros(400), log_weights=rng.normal(0, 0.3, 400), chain=chain,
                          time=np.tile(np.arange(50), 8), metadata={"correlated": True})
    ok = expectation(shared, lambda v: v[:, 0])
    assert ok.reliable and ok.ess > 100
    one = SampleSet(x=x, energies=np.zeros(400), log_weights=np.where(chain == 3, 0.0, -40.0), chain=chain,
                       time=np.tile(np.arange(50), 8), metadata={"correlated": True})
    with pytest.warns(LowESSWarning, match="effective samples"):
        flagged = expectation(one, lambda v: v[:, 0])
    assert not flagged.reliable and flagged.ess < 2 and flagged.error > ok.error


# ----------------------------------------------------------------------------- analytic errors
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delta_method_errors_agree_with_the_bootstrap(seed: int) -> None:
    """The default (influence-function) errors of independent weighted samples match a 400-resample bootstrap.

    The bootstrap's own Monte Carlo scatter is ~4 % here (relative ESS 0.14, k̂ < 0).
    """
    samples = double_well(seed, n=10_000)
    for estimator in (
        lambda **kw: expectation(samples, first_coordinate, **kw),
        lambda **kw: free_energy_difference(samples, in_left, in_right, **kw),
        lambda **kw: log_partition_function(samples, **kw),
    ):
        analytic = estimator()
        bootstrap = estimator(error="bootstrap", n_bootstrap=400, seed=seed)
        assert "delta method" in analytic.method and "bootstrap (400)" in bootstrap.method
        assert analytic.value == bootstrap.value
        assert analytic.error == pytest.approx(bootstrap.error, rel=0.1)
    with pytest.raises(ValueError, match="error must be one of"):
        expectation(samples, first_coordinate, error="jackknife")


def test_delta_method_error_of_a_self_normalised_mean_by_hand() -> None:
    """SE^2 = n / (n - 1) * sum_i p_i^2 (f_i - f)^2 with normalised weights p_i."""
    samples = double_well(4, n=500)
    f = samples.x[:, 0]
    p = np.exp(normalized_log_weights(samples.log_weights))
    mean = p @ f
    expected = math.sqrt(500 / 499 * np.sum(p**2 * (f - mean) ** 2))
    assert expectation(samples, first_coordinate).error == pytest.approx(expected, rel=1e-9)


# ----------------------------------------------------------------------------- SMC replicas
def smc_replicas(seed: int, n_replicas: int = 8, n_ancestors: int = 30, n_copies: int = 300) -> SampleSet:
    """Independent degenerate "SMC replicas" of the target N(1, 1) with Z = 1.

    Each replica importance-samples ``n_ancestors`` draws of q = N(0, 1.5^2), resamples them into
    ``n_copies`` equal-weight copies (a handful of distinct ancestors, as after many resamplings)
    and gives every copy the replica's evidence ``mean(w)`` as its weight.
    """
    rng = np.random.default_rng(seed)
    x, log_w, chain, time = [], [], [], []
    for r in range(n_replicas):
        draws = rng.normal(0.0, 1.5, n_ancestors)
        log_w_draws = -0.5 * (draws - 1.0) ** 2 + 0.5 * draws**2 / 1.5**2 + math.log(1.5)  # log p - log q
        p = np.exp(log_w_draws - log_w_draws.max())
        ancestor = rng.choice(n_ancestors, size=n_copies, p=p / p.sum())
        x.append(draws[ancestor])
        log_w.append(np.full(n_copies, np.log(np.mean(np.exp(log_w_draws)))))
        chain.append(np.full(n_copies, r))
        time.append(ancestor)
    x = np.concatenate(x)[:, None]
    return SampleSet(x, 0.5 * (x[:, 0] - 1.0) ** 2, log_weights=np.concatenate(log_w), chain=np.concatenate(chain),
                     time=np.concatenate(time), metadata={"correlated": True, "normalized_proposal": True})


def test_smc_replica_errors_cover_the_truth() -> None:
    z_mean, z_log_z = [], []
    for seed in range(400):
        samples = smc_replicas(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LowESSWarning)  # log Z rests on 8 evidences: ESS ~ 7 < min_ess
            mean, log_z = expectation(samples, first_coordinate), log_partition_function(samples)
        assert "spread of 8 replicas" in mean.method and mean.reliable
        z_mean.append((mean.value - 1.0) / mean.error)
        z_log_z.append(log_z.value / log_z.error)
    for z in (np.array(z_mean), np.array(z_log_z)):
        assert np.mean(np.abs(z) < 2.0) >= 0.88, np.mean(np.abs(z) < 2.0)
        assert abs(np.mean(z)) < 0.15


def test_smc_replicas_of_equal_evidence_get_the_plain_between_replica_error() -> None:
    rng = np.random.default_rng(7)
    chain = np.repeat(np.arange(10), 200)
    log_w = rng.normal(0.0, 0.5, 2000)
    log_w -= np.log(np.bincount(chain, weights=np.exp(log_w)))[chain]  # every replica's total weight is 1
    x = rng.normal(size=(2000, 1)) + rng.normal(0.0, 0.3, 10)[chain, None]  # replica-level offsets
    samples = SampleSet(x, np.zeros(2000), log_weights=log_w, chain=chain, time=np.tile(np.arange(200), 10),
                        metadata={"correlated": True})
    p = np.exp(log_w)
    replica_means = np.bincount(chain, weights=p * x[:, 0])  # self-normalised mean of each replica
    est = expectation(samples, first_coordinate)
    assert est.value == pytest.approx(replica_means.mean(), rel=1e-12)
    assert est.error == pytest.approx(np.std(replica_means, ddof=1) / math.sqrt(10), rel=1e-9)
