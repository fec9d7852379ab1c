"""Adaptive flow-MCMC (flow trained on the chains, then frozen) and the chain diagnostics.

The main test starts every chain in the *left* well of ``double_well_2d`` with an untrained flow
built from those states (``model="new"``, no data): the sampler must discover the right well and
reproduce the exact P(x1 > 0), where plain MALA with the same energy-evaluation budget stays put.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest
import torch

import boltzflow as bf
from boltzflow.estimate import integrated_autocorrelation_time, r_hat
from boltzflow.flows import build_flow
from boltzflow.samplers.adaptive import flow_hash

P_B = 0.8443070962111392  # exact P(x1 > 0) of double_well_2d (data/reference.json, quadrature)
FAST_FLOW = {"n_layers": 4, "hidden": (32, 32)}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks and batches: one torch and one numba thread are much faster on a busy machine."""
    threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    numba.set_num_threads(numba_threads)


def _right(x: np.ndarray) -> np.ndarray:
    return (x[:, 0] > 0).astype(float)


@pytest.fixture(scope="module")
def double_well():
    return bf.load_system("double_well_2d")


@pytest.fixture(scope="module")
def adaptive_run(double_well):
    """Adaptive IMH + MALA from the left well only, with a new (untrained) flow."""
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    return bf.sample(
        double_well, "adaptive", n=2400, seed=0, model="new", n_chains=16, global_move="imh",
        local_steps=1, local_warmup=50, adapt_iterations=150, train_every=5, train_steps=5,
        batch_size=128, lr=3e-3, flow_options=FAST_FLOW, progress=False,
    )


# ---------------------------------------------------------------- double well from one basin


def test_adaptive_finds_the_second_well_and_the_exact_mode_weight(double_well, adaptive_run):
    assert double_well.energy.evaluate(double_well.x0[None].numpy()).energy.shape == (1,)
    assert double_well.x0[0] < 0  # every chain starts in the left well
    samples = adaptive_run
    estimate = bf.estimate.expectation(samples, _right)
    assert estimate.error > 0
    assert abs(estimate.value - P_B) < 4 * estimate.error, (estimate.value, estimate.error)
    assert estimate.error < 0.03  # informative, not a vacuous pass
    md = samples.metadata
    assert md["sampler"] == "adaptive" and md["correlated"] and not md["normalized_proposal"]
    assert md["global_acceptance_rate"] > 0.2  # the adapted flow is a good proposal
    assert 0.2 < md["local_acceptance_rate"] < 0.9
    for key in ("adaptation_global_acceptance_rate", "adaptation_local_acceptance_rate", "adaptation_seconds"):
        assert md[key] > 0
    assert md["n_energy_evaluations"] == md["n_energy_evaluations_adaptation"] + md["n_energy_evaluations_production"]
    # every chain mixes between the wells: split-R-hat near 1
    assert r_hat(samples, lambda x: x[:, 0]) < 1.05


def test_plain_mala_with_the_same_budget_stays_in_the_left_well(double_well, adaptive_run):
    budget = adaptive_run.metadata["n_energy_evaluations"]
    n_chains, thin = 16, 10
    steps = budget // n_chains  # one energy (and force) evaluation per chain and step
    warmup = steps // 4
    n = (steps - warmup) // thin * n_chains
    mala = bf.sample(double_well, "mala", n=n, seed=0, n_chains=n_chains, thin=thin, warmup=warmup,
                     progress=False)
    assert (warmup + n // n_chains * thin) * n_chains <= budget
    estimate = bf.estimate.expectation(mala, _right)
    assert abs(estimate.value - P_B) > 0.5  # far off: MALA never crosses the ~9 kT barrier


def test_production_flow_is_frozen_and_a_user_flow_is_adapted_in_place(double_well, adaptive_run, tmp_path):
    md = adaptive_run.metadata
    assert len(md["flow_sha256_production_start"]) == 64
    assert md["flow_sha256_production_start"] == md["flow_sha256_production_end"]
    assert md["n_training_steps"] == 150 // 5 * 5
    # a flow object is adapted in place (documented): it ends as the production flow
    torch.manual_seed(0)
    flow = build_flow(double_well, kind="affine", n_layers=2, hidden=(8,),
                      data=torch.randn(256, 2, dtype=torch.float64) * 2.0)
    before = flow_hash(flow)
    options = {"n": 64, "seed": 1, "model": flow, "n_chains": 8, "global_move": "isir", "n_proposals": 4,
               "local_warmup": 10, "adapt_iterations": 10, "train_every": 2, "train_steps": 2, "batch_size": 32,
               "progress": False}
    out = bf.sample(double_well, "adaptive", checkpoint=tmp_path / "ckpt.npz", **options)
    after = flow_hash(flow)
    assert before != after
    assert out.metadata["flow_sha256_production_start"] == out.metadata["flow_sha256_production_end"] == after
    # the finished run's checkpoint is resumed, not redone: same samples, no further training
    again = bf.sample(double_well, "adaptive", checkpoint=tmp_path / "ckpt.npz", **options)
    assert flow_hash(flow) == after
    np.testing.assert_array_equal(again.x, out.x)


def test_non_finite_energies_never_crash_and_runs_are_deterministic():
    def energy(x: torch.Tensor) -> torch.Tensor:
        u = -0.5 * x[:, 0] - 6 * x[:, 0] ** 2 + x[:, 0] ** 4 + 0.5 * x[:, 1] ** 2
        return torch.where(x[:, 1].abs() > 2.0, torch.full_like(u, math.nan), u)  # a hole: NaN energies

    system = bf.System.from_energy(energy, dim=2, x0=torch.tensor([-1.7, 0.0], dtype=torch.float64))
    options = {"n": 128, "seed": 0, "model": "new", "n_chains": 8, "global_move": "isir", "n_proposals": 4,
               "local_warmup": 20, "adapt_iterations": 20, "train_every": 5, "train_steps": 2, "batch_size": 32,
               "w_kl": 0.5, "flow_options": {"n_layers": 2, "hidden": (8,)}, "progress": False}
    out = bf.sample(system, "adaptive", **options)
    assert out.metadata["n_nonfinite_proposals"] > 0  # the broad new flow proposes into the hole
    assert np.isfinite(out.energies).all() and np.all(np.abs(out.x[:, 1]) <= 2.0)
    assert out.metadata["n_skipped_training_steps"] < out.metadata["n_training_steps"]
    # deterministic: the seed fixes everything, including the new flow's initial weights
    torch.manual_seed(12345)
    again = bf.sample(system, "adaptive", **options)
    np.testing.assert_array_equal(again.x, out.x)


def test_unknown_and_invalid_options(double_well):
    with pytest.raises(TypeError, match="no option.*bogus"):
        bf.sample(double_well, "adaptive", n=10, bogus=1)
    with pytest.raises(ValueError, match="global_move"):
        bf.sample(double_well, "adaptive", n=10, global_move="hmc", progress=False)
    with pytest.raises(ValueError, match="local_warmup"):
        bf.sample(double_well, "adaptive", n=10, model="new", local_warmup=0, progress=False)


# ---------------------------------------------------------------- diagnostics


def _chains(values: np.ndarray) -> bf.SampleSet:
    """A SampleSet of scalar chains ``values (n_chains, length)``."""
    n_chains, length = values.shape
    return bf.SampleSet(
        x=values.reshape(-1, 1), energies=np.zeros(values.size),
        chain=np.repeat(np.arange(n_chains), length), time=np.tile(np.arange(length), n_chains),
        metadata={"correlated": True},
    )


def _ar1(rho: float, n_chains: int, length: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n_chains, length)) * math.sqrt(1 - rho**2)
    x = np.empty((n_chains, length))
    x[:, 0] = rng.standard_normal(n_chains)
    for t in range(1, length):
        x[:, t] = rho * x[:, t - 1] + noise[:, t]
    return x


@pytest.mark.parametrize("rho", [0.5, 0.9])
def test_iat_of_ar1_matches_theory(rho):
    samples = _chains(_ar1(rho, 16, 20000, seed=0))
    tau = integrated_autocorrelation_time(samples, lambda x: x[:, 0])
    exact = rho / (1 - rho)  # tau = (g - 1) / 2 with g = (1 + rho) / (1 - rho)
    assert abs(tau - exact) < 0.15 * exact, (tau, exact)
    # shuffling the stored order must not matter: time orders each chain
    perm = np.random.default_rng(1).permutation(len(samples))
    assert integrated_autocorrelation_time(samples[perm], samples.x[perm, 0]) == pytest.approx(tau)


def test_r_hat_near_one_for_mixed_chains_and_large_for_stuck_ones():
    rng = np.random.default_rng(0)
    mixed = _chains(rng.standard_normal((4, 2000)))
    assert abs(r_hat(mixed, lambda x: x[:, 0]) - 1) < 0.01
    stuck = rng.standard_normal((4, 2000)) * 0.1 + np.array([[-1.0], [-1.0], [1.0], [1.0]])
    assert r_hat(_chains(stuck), lambda x: x[:, 0]) > 3
    # a chain that drifts within itself: its two halves disagree
    drift = _chains(np.linspace(0, 1, 2000)[None] + 0.01 * rng.standard_normal((1, 2000)))
    assert r_hat(drift, lambda x: x[:, 0]) > 1.5
    # time-ordered IAT of independent samples is about zero
    assert integrated_autocorrelation_time(mixed, lambda x: x[:, 0]) < 0.1


def test_production_proposals_set_the_i_sir_candidates_of_production_only(double_well):
    options = {"n": 64, "seed": 2, "model": "new", "n_chains": 8, "global_move": "isir", "n_proposals": 4,
               "local_steps": 0, "local_warmup": 10, "adapt_iterations": 10, "train_every": 5, "train_steps": 1,
               "batch_size": 32, "progress": False}
    plain = bf.sample(double_well, "adaptive", **options)
    more = bf.sample(double_well, "adaptive", production_proposals=16, **options)
    assert plain.metadata["production_proposals"] == 4 and more.metadata["production_proposals"] == 16
    # identical adaptation; production costs (candidates − 1) energy evaluations per chain and iteration
    assert more.metadata["n_energy_evaluations_adaptation"] == plain.metadata["n_energy_evaluations_adaptation"]
    assert more.metadata["n_energy_evaluations_production"] == 8 * 8 * 15
    assert plain.metadata["n_energy_evaluations_production"] == 8 * 8 * 3
    with pytest.raises(ValueError, match="production_proposals"):
        bf.sample(double_well, "adaptive", production_proposals=1, **options)
