"""Adaptive flow-MCMC (flow trained on the chains, then frozen) and the chain diagnostics.

The main test starts every chain in the *left* well of ``double_well_2d`` with an untrained flow
built from those states (``model="new"``, no data): the sampler must discover the right well and
reproduce the exact P(x1 > 0), where plain MALA with the same energy-evaluation budget stays put.

The importance-reweighted maximum-likelihood term (the anti-mode-collapse option) is checked on a
replay buffer that is deliberately 97 % in the left well: the term on fresh flow draws (weights
exp(−u − log q), self-normalised) pulls the flow's mode weight back toward the Boltzmann one.
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
from boltzflow.samplers.adaptive import _new_flow, _train, flow_hash, reweighted_draws
from boltzflow.samplers.checkpoint import CheckpointError

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


# ---------------------------------------------------------------- importance-reweighted ML
@pytest.fixture(scope="module")
def biased_buffer(double_well):
    """4000 states, 97 % in the left well (MALA from x0) and 3 % mirrored into the right one."""
    torch.set_num_threads(1)
    states = bf.sample(double_well, "mala", n=4800, seed=0, n_chains=16, warmup=200, progress=False).x
    left = states[states[:, 0] < 0]
    assert len(left) > 3880
    right = left[:120] * np.array([-1.0, 1.0])
    return np.concatenate([left[:3880], right])


def _flow_right_mass(double_well, buffer, w_reweighted, rounds=30):
    """Train a new flow on ``buffer`` as the adaptation does (10 steps a round), return its P(x1 > 0)."""
    flow = _new_flow(double_well, buffer, 1.0, FAST_FLOW, seed=0)
    optimizer = torch.optim.Adam([p for p in flow.parameters() if p.requires_grad], lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    counts = {"evals_adapt": 0, "train_steps": 0, "skipped": 0}
    ess = []
    for _ in range(rounds):
        draws = None
        if w_reweighted > 0:
            draws = reweighted_draws(double_well, flow, 512, generator, power=1.0, clip=0.01)
            ess.append(draws.relative_ess)
        _train(double_well, flow, optimizer, buffer, 10, 128, 0.0, 100.0, generator, counts, draws, w_reweighted)
        flow.eval()
    assert counts["train_steps"] == 10 * rounds and counts["skipped"] == 0
    with torch.no_grad():
        x, _ = flow.sample(20_000, generator)
    return float((x[:, 0] > 0).double().mean()), ess


def test_reweighted_ml_restores_the_mode_weight_that_a_biased_buffer_loses(double_well, biased_buffer):
    share = float((biased_buffer[:, 0] > 0).mean())
    assert share == pytest.approx(0.03)
    ml_only, _ = _flow_right_mass(double_well, biased_buffer, 0.0)
    reweighted, ess = _flow_right_mass(double_well, biased_buffer, 5.0)
    # maximum likelihood on the buffer learns the buffer's mode weight, far from the Boltzmann one
    assert ml_only < 0.2, ml_only
    # the reweighted term moves it most of the way to the exact 0.844 (the buffer term still pulls back;
    # 0.67-0.72 over seeds 0-3, with the ML-only flow at 0.02-0.03)
    assert reweighted > 0.6, reweighted
    assert abs(reweighted - P_B) < 0.5 * abs(ml_only - P_B), (ml_only, reweighted)
    # and the flow becomes a better importance sampler of the target while doing so (the last five rounds:
    # one round's 512 draws are noisy; over seeds 0-3 their mean was 0.81-0.90, the first round 0.004-0.31)
    assert np.mean(ess[-5:]) > 2 * ess[0], ess


def test_reweighted_draws_weights_are_self_normalised_tempered_clipped_and_skip_non_finite():
    def energy(x: torch.Tensor) -> torch.Tensor:
        u = 0.5 * (x**2).sum(dim=1) * 4.0
        return torch.where(x[:, 0] > 1.5, torch.full_like(u, math.nan), u)  # a NaN region

    system = bf.System.from_energy(energy, dim=2, x0=torch.zeros(2, dtype=torch.float64))
    torch.manual_seed(0)
    flow = bf.flows.build_flow(system, kind="affine", n_layers=2, hidden=(8,),
                               data=torch.randn(256, 2, dtype=torch.float64))
    flow.eval()
    exact = reweighted_draws(system, flow, 2000, torch.Generator().manual_seed(1), power=1.0, clip=0.0)
    assert exact.n_nonfinite > 0 and exact.x.shape[0] == 2000 - exact.n_nonfinite
    assert (exact.x[:, 0] <= 1.5).all()  # NaN-energy draws are dropped (zero weight)
    assert float(exact.weights.sum()) == pytest.approx(1.0)
    # the exact self-normalised weights exp(−u − log q)
    with torch.no_grad():
        log_w = -energy(exact.x) - flow.log_prob(exact.x)
    np.testing.assert_allclose(exact.weights.numpy(), torch.softmax(log_w, 0).numpy(), rtol=1e-6, atol=1e-12)
    w = exact.weights.numpy()
    kish = w.sum() ** 2 / (w**2).sum() / 2000
    assert exact.relative_ess == pytest.approx(kish, rel=1e-6)
    # same stream: the same draws; tempering and clipping flatten the weights, the ESS stays that of the raw ones
    soft = reweighted_draws(system, flow, 2000, torch.Generator().manual_seed(1), power=0.5, clip=0.05)
    torch.testing.assert_close(soft.x, exact.x)
    assert soft.relative_ess == pytest.approx(exact.relative_ess)
    assert float(soft.weights.max()) < float(exact.weights.max())
    tempered = 0.5 * log_w.numpy()
    clipped = np.minimum(tempered, np.quantile(tempered, 0.95))
    expected = np.exp(clipped - clipped.max())
    np.testing.assert_allclose(soft.weights.numpy(), expected / expected.sum(), rtol=1e-6, atol=1e-12)
    top = soft.weights.numpy()
    assert np.sum(top >= top.max() * (1 - 1e-9)) >= int(0.05 * top.size)  # the top 5 % share the clipped value

def test_reweighted_option_is_recorded_and_round_trips_through_the_checkpoint(double_well, tmp_path):
    options = {"n": 64, "seed": 2, "model": "new", "n_chains": 8, "global_move": "isir", "n_proposals": 4,
               "local_warmup": 10, "adapt_iterations": 10, "train_every": 2, "train_steps": 2, "batch_size": 32,
               "w_reweighted": 2.0, "reweighted_batch_size": 64, "reweighted_power": 0.8, "reweighted_clip": 0.02,
               "flow_options": {"n_layers": 2, "hidden": (8,)}, "progress": False}
    plain = bf.sample(double_well, "adaptive", **{**options, "w_reweighted": 0.0})
    out = bf.sample(double_well, "adaptive", checkpoint=tmp_path / "ckpt.npz", **options)
    md = out.metadata
    assert (md["w_reweighted"], md["reweighted_batch_size"], md["reweighted_power"], md["reweighted_clip"]) == (
        2.0, 64, 0.8, 0.02)
    rounds = 10 // 2
    assert len(md["adaptation_reweighted_ess_history"]) == rounds
    assert all(0 < e <= 1 for e in md["adaptation_reweighted_ess_history"])
    assert plain.metadata["adaptation_reweighted_ess_history"] == [] and plain.metadata["w_reweighted"] == 0.0
    assert plain.metadata["reweighted_batch_size"] is None
    # the fresh draws are counted as adaptation energy evaluations
    assert md["n_energy_evaluations_adaptation"] >= rounds * 64
    assert md["flow_sha256_production_start"] == md["flow_sha256_production_end"]
    # resumed from the finished run's checkpoint: same samples and metadata, nothing redone
    again = bf.sample(double_well, "adaptive", checkpoint=tmp_path / "ckpt.npz", **options)
    np.testing.assert_array_equal(again.x, out.x)
    assert again.metadata["adaptation_reweighted_ess_history"] == md["adaptation_reweighted_ess_history"]
    assert again.metadata["n_energy_evaluations"] == md["n_energy_evaluations"]
    # a checkpoint is only resumed by the same run: other reweighting settings are refused
    with pytest.raises(CheckpointError, match="different run"):
        bf.sample(double_well, "adaptive", checkpoint=tmp_path / "ckpt.npz", **{**options, "w_reweighted": 1.0})
    with pytest.raises(CheckpointError, match="different run"):
        bf.sample(double_well, "adaptive", checkpoint=tmp_path / "ckpt.npz", **{**options, "reweighted_clip": 0.0})


@pytest.mark.parametrize("bad", [{"w_reweighted": -1.0}, {"reweighted_batch_size": 0},
                                 {"reweighted_power": 0.0}, {"reweighted_power": 1.5}, {"reweighted_clip": 1.0}])
def test_invalid_reweighted_options(double_well, bad):
    with pytest.raises(ValueError, match="reweighted"):
        bf.sample(double_well, "adaptive", n=10, progress=False, **bad)


def test_a_new_molecular_flow_is_rebuilt_from_its_checkpoint(tmp_path):
    """The new flow's circular dihedrals depend on the warmed-up states: resuming rebuilds that architecture."""
    system = bf.load_system("alanine_dipeptide_implicit")
    options = {"n": 32, "seed": 0, "model": "new", "n_chains": 8, "global_move": "isir", "n_proposals": 3,
               "local_steps": 1, "local_warmup": 5, "adapt_iterations": 2, "train_every": 1, "train_steps": 1,
               "batch_size": 16, "w_reweighted": 1.0, "reweighted_batch_size": 16,
               "flow_options": {"n_layers": 2, "hidden": (8,), "max_linear_std": 0.6}, "progress": False}
    out = bf.sample(system, "adaptive", checkpoint=tmp_path / "ckpt.npz", **options)
    again = bf.sample(system, "adaptive", checkpoint=tmp_path / "ckpt.npz", **options)
    np.testing.assert_array_equal(again.x, out.x)
    assert again.metadata["flow_sha256_production_end"] == out.metadata["flow_sha256_production_end"]
